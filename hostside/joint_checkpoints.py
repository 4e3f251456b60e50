"""The joint recipes' checkpoints: one ``.safetensors`` with the denoiser, the adapter and the conditioning.

Class-conditional (``python -m trainer.train --mode joint``, e.g. the digits demo): the denoiser under
``unet.``, the adapter under ``adapter.``, the class tokens under ``classes.``. Text-conditioned (a text
recipe, e.g. ``trainer/configs/shapes.yaml``): the text transformer under ``text.`` instead. The metadata
holds the format, the recipe (the world it was trained on) and every configuration needed to rebuild it.
In the host they are a MODEL (and a CLIP) like any SD checkpoint's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .method import adapter_io, joint_model
from .pixel_unet import build_joint_model
from .text_encoder import build_text_clip, text_transformer

if TYPE_CHECKING:
    import torch
    from comfy.model_base import BaseModel
    from comfy.sd import CLIP

    from contextdiff.adapter import ContextAdapter
    from contextdiff.joint_model import ClassEmbedding, PathLike

TEXT_JOINT_VERSION = 1


def save_joint(
    path: PathLike,
    model: BaseModel,
    adapter: ContextAdapter,
    classes: ClassEmbedding,
    unet_config: dict,
    training: dict | None = None,
    with_bias: bool = True,
) -> Path:
    """One ``.safetensors`` with the denoiser (``unet.``), adapter (``adapter.``) and classes."""
    meta = joint_model.model_metadata(
        (joint_model.JOINT_FORMAT, joint_model.JOINT_VERSION, "digits", "joint"),
        unet_config,
        adapter,
        training,
        with_bias,
        num_classes=str(classes.num_classes),
        class_tokens=str(classes.tokens),
    )
    return joint_model.save_parts(path, {"unet": model.diffusion_model, "adapter": adapter, "classes": classes}, meta)


def load_joint(
    path: PathLike, device: str | torch.device = "cpu"
) -> tuple[BaseModel, ContextAdapter, ClassEmbedding, dict]:
    """``(comfy BaseModel, ContextAdapter, ClassEmbedding, metadata)`` from :func:`save_joint`'s file."""
    path = Path(path)
    fmt, meta = joint_model.checkpoint_format(path)
    if fmt != joint_model.JOINT_FORMAT:
        hint = (
            "it is a text-conditioned joint model: load it with Load ContextDiff Shapes Model"
            if fmt == joint_model.TEXT_JOINT_FORMAT
            else "train one with python -m trainer.train --mode joint"
        )
        raise adapter_io.AdapterFileError(
            f"{path.name} is not a ContextDiff class-conditional joint checkpoint (format={fmt!r}); {hint}."
        )
    joint_model.check_version(path, meta, joint_model.JOINT_VERSION)
    adapter = joint_model.checked_adapter(path, meta)
    unet_config = json.loads(meta["unet_config"])
    model = build_joint_model(unet_config, init_seed=None)
    classes = joint_model.ClassEmbedding(
        int(meta["num_classes"]), unet_config["context_dim"], int(meta.get("class_tokens", 1))
    )
    joint_model.load_parts(path, {"unet": model.diffusion_model, "adapter": adapter, "classes": classes}, device)
    meta["unet_config"], meta["training"] = unet_config, json.loads(meta.get("training", "{}"))
    return model.eval(), adapter.eval().requires_grad_(False), classes.eval().requires_grad_(False), meta


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
    meta = joint_model.model_metadata(
        (joint_model.TEXT_JOINT_FORMAT, TEXT_JOINT_VERSION, recipe, "joint-text"),
        unet_config,
        adapter,
        training,
        with_bias,
        text_config=json.dumps(text_config, sort_keys=True),
        tokenizer="CLIP BPE (ComfyUI sd1_tokenizer), 77 tokens",
    )
    parts = {"unet": model.diffusion_model, "adapter": adapter, "text": text_transformer(clip)}
    return joint_model.save_parts(path, parts, meta)


def load_text_joint(path: PathLike, recipe: str | None = None, device: str | torch.device = "cpu") -> TextJointModel:
    """Rebuild a :func:`save_text_joint` file; ``recipe`` (e.g. ``"shapes"``) refuses other recipes.

    Every refusal names what the file is and what to do instead.
    """
    path = Path(path)
    fmt, meta = joint_model.checkpoint_format(path)
    if fmt != joint_model.TEXT_JOINT_FORMAT:
        if fmt == joint_model.JOINT_FORMAT:
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
        raise adapter_io.AdapterFileError(f"{path.name} is {what}.")
    joint_model.check_version(path, meta, TEXT_JOINT_VERSION)
    if recipe is not None and meta.get("recipe") != recipe:
        raise adapter_io.AdapterFileError(
            f"{path.name} was trained on recipe {meta.get('recipe')!r}, this loader reads "
            f"{recipe!r} checkpoints: pick a {recipe} checkpoint or retrain with its recipe."
        )
    adapter = joint_model.checked_adapter(path, meta)
    try:
        unet_config, text_config = json.loads(meta["unet_config"]), json.loads(meta["text_config"])
    except (KeyError, ValueError) as e:
        raise adapter_io.AdapterFileError(
            f"{path.name} has invalid model metadata ({e}); re-export the checkpoint."
        ) from None
    model = build_joint_model(unet_config, init_seed=None)
    clip = build_text_clip(text_config, init_seed=None)
    parts = {"unet": model.diffusion_model, "adapter": adapter, "text": text_transformer(clip)}
    joint_model.load_parts(path, parts, device)
    meta = dict(meta, unet_config=unet_config, text_config=text_config, training=json.loads(meta.get("training", "{}")))
    text_transformer(clip).eval().requires_grad_(False)
    return TextJointModel(model.eval(), adapter.eval().requires_grad_(False), clip, meta)
