"""ContextDiffAdapterLoader: pick an adapter file from ``models/contextdiff/``."""

from __future__ import annotations

from comfy_api.latest import io

from ..contextdiff.adapter_io import load_adapter
from ..contextdiff.checkpoint import ADAPTER
from .loading import LOADERS, file_fingerprint, file_input, file_path
from .pack_node import PackNode
from .types import Adapter, LoadedAdapter


class ContextDiffAdapterLoader(PackNode, display=ADAPTER.loader, category=LOADERS):
    """Loads a context-aware adapter (the paper's relational network r_phi) from models/contextdiff/. Only .safetensors
    adapters written by this pack's trainer load; pickles are refused because they can run code."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            [
                file_input(
                    "adapter_name", "An adapter file in models/contextdiff/ (train one with python -m trainer.train)."
                )
            ],
            [Adapter.Output(display_name="adapter", tooltip="Connect to ContextDiff KSampler or ContextDiff Sampler.")],
        )

    @classmethod
    def fingerprint_inputs(cls, adapter_name: str) -> str:
        return file_fingerprint(adapter_name)

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        module, meta = load_adapter(file_path(adapter_name, ADAPTER))
        return io.NodeOutput(LoadedAdapter(module=module, meta=meta, name=adapter_name))
