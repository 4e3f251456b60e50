"""The joint recipes' checkpoints: one ``.safetensors`` with the denoiser, the adapter and the conditioning.

Two formats of the registry in ``contextdiff/checkpoint.py``. Class-conditional (``JOINT``,
``python -m trainer.train --mode joint``, e.g. the digits demo): the denoiser under ``unet.``, the adapter
under ``adapter.``, the class tokens under ``classes.``. Text-conditioned (``TEXT_JOINT``, a text recipe,
e.g. ``trainer/configs/shapes.yaml``): the CLIP text transformer under ``text.`` instead. Metadata keys
besides the common ones: ``recipe`` (the world it was trained on), ``unet_config``, ``adapter_config``,
``latent_channels``, ``context_dim``, ``base_model``, ``with_bias``, and ``num_classes``/``class_tokens``
or ``text_config``/``tokenizer``. In the host they are a MODEL (and a CLIP) like any SD checkpoint's.
Loading checks every configuration and the whole tensor table on the meta device before building.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .method import adapter_io, checkpoint, joint_model
from .pixel_unet import UNET_LIMITS, build_joint_model, empty_unet
from .text_encoder import TEXT_LIMITS, build_text_clip, empty_text_transformer, text_transformer

if TYPE_CHECKING:
    from comfy.model_base import BaseModel
    from comfy.sd import CLIP

    from contextdiff.adapter import ContextAdapter
    from contextdiff.checkpoint import Checkpoint, PathLike
    from contextdiff.joint_model import ClassEmbedding

# What a forged configuration can make a builder raise (caught and named, never a traceback).
CONFIG_ERRORS = (TypeError, ValueError, KeyError, IndexError, AssertionError, ZeroDivisionError, RuntimeError)


def model_fields(unet_config: dict, adapter: ContextAdapter, with_bias: bool) -> dict[str, str]:
    """The metadata both joint formats carry about the denoiser and the adapter."""
    return {
        "unet_config": json.dumps(unet_config, sort_keys=True),
        "adapter_config": json.dumps(adapter.cfg.to_dict(), sort_keys=True),
        "latent_channels": str(unet_config["in_channels"]),
        "context_dim": str(unet_config["context_dim"]),
        "with_bias": str(bool(with_bias)).lower(),
    }


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
    meta = checkpoint.metadata(
        checkpoint.JOINT,
        training,
        recipe="digits",
        base_model="joint",
        num_classes=str(classes.num_classes),
        class_tokens=str(classes.tokens),
        **model_fields(unet_config, adapter, with_bias),
    )
    parts = {"unet": model.diffusion_model, "adapter": adapter, "classes": classes}
    return checkpoint.save_modules(path, parts, meta)


def load_joint(
    path: PathLike, device: str | torch.device = "cpu"
) -> tuple[BaseModel, ContextAdapter, ClassEmbedding, dict]:
    """``(comfy BaseModel, ContextAdapter, ClassEmbedding, metadata)`` from :func:`save_joint`'s file."""
    ckpt = checkpoint.open_checkpoint(path, checkpoint.JOINT)
    unet_config = ckpt.json("unet_config")
    unet = declared_module(ckpt, "unet_config", unet_config, UNET_LIMITS, empty_unet)
    num_classes, tokens = ckpt.integer("num_classes", 1, 100_000), ckpt.integer("class_tokens", 1, 77, default=1)
    with torch.device("meta"):  # loaded by assignment: the file's tensors become its parameters
        classes = joint_model.ClassEmbedding(num_classes, unet_config["context_dim"], tokens)
    adapter = checked_adapter(ckpt, unet, {"classes": classes})
    model = build_joint_model(unet_config, init_seed=None)
    ckpt.load_into({"unet": model.diffusion_model, "adapter": adapter, "classes": classes}, device)
    meta = dict(ckpt.meta, unet_config=unet_config, training=ckpt.json("training", "{}"))
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
    meta = checkpoint.metadata(
        checkpoint.TEXT_JOINT,
        training,
        recipe=recipe,
        base_model="joint-text",
        text_config=json.dumps(text_config, sort_keys=True),
        tokenizer="CLIP BPE (ComfyUI sd1_tokenizer), 77 tokens",
        **model_fields(unet_config, adapter, with_bias),
    )
    parts = {"unet": model.diffusion_model, "adapter": adapter, "text": text_transformer(clip)}
    return checkpoint.save_modules(path, parts, meta)


def load_text_joint(path: PathLike, recipe: str | None = None, device: str | torch.device = "cpu") -> TextJointModel:
    """Rebuild a :func:`save_text_joint` file; ``recipe`` (e.g. ``"shapes"``) refuses other recipes.

    Every refusal names what the file is and what to do instead.
    """
    ckpt = checkpoint.open_checkpoint(path, checkpoint.TEXT_JOINT)
    if recipe is not None and ckpt.meta.get("recipe") != recipe:
        raise checkpoint.CheckpointError(
            f"{ckpt.name} was trained on recipe {ckpt.meta.get('recipe')!r}, this loader reads "
            f"{recipe!r} checkpoints: pick a {recipe} checkpoint or retrain with its recipe."
        )
    unet_config, text_config = ckpt.json("unet_config"), ckpt.json("text_config")
    unet = declared_module(ckpt, "unet_config", unet_config, UNET_LIMITS, empty_unet)
    text = declared_module(ckpt, "text_config", text_config, TEXT_LIMITS, empty_text_transformer)
    adapter = checked_adapter(ckpt, unet, {"text": text})
    model, clip = build_joint_model(unet_config, init_seed=None), build_text_clip(text_config, init_seed=None)
    ckpt.load_into({"unet": model.diffusion_model, "adapter": adapter, "text": text_transformer(clip)}, device)
    text_transformer(clip).eval().requires_grad_(False)
    meta = dict(ckpt.meta, unet_config=unet_config, text_config=text_config, training=ckpt.json("training", "{}"))
    return TextJointModel(model.eval(), adapter.eval().requires_grad_(False), clip, meta)


def declared_module(
    ckpt: Checkpoint, key: str, config: object, limits: dict, build: Callable[[dict], torch.nn.Module]
) -> torch.nn.Module:
    """``build(config)`` (a builder on the meta device) once metadata ``key`` is a mapping within ``limits``."""
    if not isinstance(config, dict):
        raise ckpt.error(f"has invalid {key} metadata (not a mapping)")
    checkpoint.check_limits(ckpt.name, key, config, limits)
    try:
        return build(config)
    except CONFIG_ERRORS as e:
        raise ckpt.error(f"has invalid {key} metadata ({type(e).__name__}: {e})") from None


def checked_adapter(ckpt: Checkpoint, unet: torch.nn.Module, conditioning: dict) -> ContextAdapter:
    """The adapter the file declares, once its whole tensor table matches the declared modules (on meta)."""
    adapter = adapter_io.declared_adapter(ckpt, "adapter_config")
    ckpt.check_table(checkpoint.expected_shapes({"unet": unet, "adapter": adapter, **conditioning}))
    return adapter
