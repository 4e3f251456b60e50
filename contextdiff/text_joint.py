"""The text-conditioned joint model: a pixel-space x0 denoiser, the adapter and a CLIP text encoder.

All three are trained together with Eq. 6 (``python -m trainer.train`` with a text recipe, e.g.
``trainer/configs/shapes.yaml``) and stored in one ``.safetensors``: the denoiser under ``unet.``,
the adapter under ``adapter.``, the text transformer under ``text.``, and in the metadata the
format, the recipe (the world it was trained on) and every configuration needed to rebuild it.
The denoiser is ComfyUI's ``UNetModel`` (:mod:`.joint_model`), the text encoder ComfyUI's CLIP
text model with CLIP's tokenizer (:mod:`.text_encoder`): in the host they are a MODEL and a CLIP
like any SD checkpoint's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .adapter import ContextAdapter
from .adapter_io import AdapterFileError
from .joint_model import (
    JOINT_FORMAT,
    TEXT_JOINT_FORMAT,
    build_joint_model,
    check_version,
    checked_adapter,
    checkpoint_format,
    load_parts,
    model_metadata,
    save_parts,
)
from .text_encoder import build_text_clip, text_transformer

if TYPE_CHECKING:
    import torch
    from comfy.model_base import BaseModel
    from comfy.sd import CLIP

    from .joint_model import PathLike

TEXT_JOINT_VERSION = 1


@dataclass
class TextJointModel:
    """A loaded checkpoint: ComfyUI ``BaseModel``, ``ContextAdapter``, ``comfy.sd.CLIP`` and metadata."""

    model: object
    adapter: ContextAdapter
    clip: object
    meta: dict

    @property
    def recipe(self) -> str:
        return self.meta.get("recipe", "")


def save_text_joint(
    path: PathLike,
    model: BaseModel,
    adapter: ContextAdapter,
    clip: CLIP,
    unet_config: dict,
    text_config: dict,
    recipe: str,
    training: dict | None = None,
    with_bias: bool = True,
) -> Path:
    """Write the three parts and the metadata that :func:`load_text_joint` rebuilds them from."""
    meta = model_metadata(
        (TEXT_JOINT_FORMAT, TEXT_JOINT_VERSION, recipe, "joint-text"),
        unet_config,
        adapter,
        training,
        with_bias,
        text_config=json.dumps(text_config, sort_keys=True),
        tokenizer="CLIP BPE (ComfyUI sd1_tokenizer), 77 tokens",
    )
    parts = {"unet": model.diffusion_model, "adapter": adapter, "text": text_transformer(clip)}
    return save_parts(path, parts, meta)


def load_text_joint(path: PathLike, recipe: str | None = None, device: str | torch.device = "cpu") -> TextJointModel:
    """Rebuild a :func:`save_text_joint` file; ``recipe`` (e.g. ``"shapes"``) refuses other recipes.

    Every refusal names what the file is and what to do instead.
    """
    path = Path(path)
    fmt, meta = checkpoint_format(path)
    if fmt != TEXT_JOINT_FORMAT:
        if fmt == JOINT_FORMAT:
            what = (
                f"a class-conditional joint checkpoint (recipe {meta.get('recipe', 'digits')}), not a "
                "text-conditioned one: load it with Load ContextDiff Joint Model"
            )
        elif fmt == "contextdiff-adapter":
            what = "an adapter for a base model: load it with Load ContextDiff Adapter"
        else:
            what = (
                f"not a ContextDiff text joint checkpoint (format={fmt!r}): train one with "
                "python -m trainer.train --config trainer/configs/shapes.yaml"
            )
        raise AdapterFileError(f"{path.name} is {what}.")
    check_version(path, meta, TEXT_JOINT_VERSION)
    if recipe is not None and meta.get("recipe") != recipe:
        raise AdapterFileError(
            f"{path.name} was trained on recipe {meta.get('recipe')!r}, this loader reads "
            f"{recipe!r} checkpoints: pick a {recipe} checkpoint or retrain with its recipe."
        )
    adapter = checked_adapter(path, meta)
    try:
        unet_config, text_config = json.loads(meta["unet_config"]), json.loads(meta["text_config"])
    except (KeyError, ValueError) as e:
        raise AdapterFileError(f"{path.name} has invalid model metadata ({e}); re-export the checkpoint.") from None
    model = build_joint_model(unet_config, init_seed=None)
    clip = build_text_clip(text_config, init_seed=None)
    load_parts(path, {"unet": model.diffusion_model, "adapter": adapter, "text": text_transformer(clip)}, device)
    meta = dict(meta, unet_config=unet_config, text_config=text_config, training=json.loads(meta.get("training", "{}")))
    text_transformer(clip).eval().requires_grad_(False)
    return TextJointModel(model.eval(), adapter.eval().requires_grad_(False), clip, meta)
