"""ComfyUI nodes of the pack: thin V3 wrappers over :mod:`contextdiff`."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .adapter_loader import ContextDiffAdapterLoader
from .editing import ContextDiffDDIMInversion, ContextDiffEditSampler
from .joint import (
    ContextDiffClassConditioning,
    ContextDiffJointLoader,
    ContextDiffPixelsToImage,
    ContextDiffShapesLoader,
)
from .paths import register_model_folder
from .samplers import ContextDiffKSampler, ContextDiffSampler
from .video_edit import ContextDiffVideoEdit

NODES = [
    ContextDiffAdapterLoader,
    ContextDiffKSampler,
    ContextDiffSampler,
    ContextDiffDDIMInversion,
    ContextDiffEditSampler,
    ContextDiffVideoEdit,
    ContextDiffJointLoader,
    ContextDiffClassConditioning,
    ContextDiffPixelsToImage,
    ContextDiffShapesLoader,
]


class ContextDiffExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> ContextDiffExtension:
    register_model_folder()
    return ContextDiffExtension()
