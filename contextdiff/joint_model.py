"""The joint model: a pixel-space x0-prediction denoiser (ComfyUI's UNetModel), its class tokens and checkpoint.

Importable without ComfyUI; the functions import ``comfy`` when called. The joint model is a
ComfyUI ``UNetModel`` that predicts ``x0`` (paper Eq. 6) in pixel space, wrapped as a ComfyUI
``BaseModel`` with ComfyUI's own discrete VP schedule, so the trainer and the host sample it
through exactly the same code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

from . import __version__
from .adapter import AdapterConfig, ContextAdapter
from .adapter_io import AdapterFileError, atomic_save_file, check_tensor_table, expected_shapes, read_header

if TYPE_CHECKING:  # annotations only: ComfyUI is imported where a model is built
    from comfy.model_base import BaseModel

PathLike = str | os.PathLike

JOINT_FORMAT = "contextdiff-joint"
TEXT_JOINT_FORMAT = "contextdiff-text-joint"  # contextdiff/text_joint.py
JOINT_VERSION = 1


def joint_unet_config(
    channels: int = 1,
    model_channels: int = 64,
    context_dim: int = 64,
    channel_mult: Sequence[int] = (1, 2),
    num_res_blocks: int = 2,
    heads: int = 4,
    attention_from_level: int = 0,
    norm_groups: int = 32,
    pooled_dim: int = 0,
) -> dict:
    """A small SD-style UNet config (pixel space, cross-attention to class/text tokens).

    Levels below ``attention_from_level`` (the high resolutions) get no transformer blocks: attention
    costs grow with the square of the pixel count, and small models learn layout at low resolution.
    ``norm_groups`` replaces the 32 groups of ComfyUI's GroupNorms (not a ``UNetModel`` argument: applied by
    :func:`build_joint_model`): with 32 channels, 32 groups normalise each channel alone, which erases
    every feature's mean over the image, so a small model can hardly carry global brightness or colour.
    ``pooled_dim > 0`` also conditions every residual block on a pooled text embedding of that width (ComfyUI's
    ``adm`` input, as SDXL's UNet takes CLIP's pooled output): a direct global path from the caption, which a
    small model trained from scratch learns far sooner than attention over 77 mostly-padding tokens.
    """
    levels = len(channel_mult)
    if not 0 <= attention_from_level < levels:
        raise ValueError(f"attention_from_level={attention_from_level} must name one of the {levels} UNet levels")
    depth = [int(level >= attention_from_level) for level in range(levels)]
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": channels,
        "out_channels": channels,
        "model_channels": model_channels,
        "num_res_blocks": [num_res_blocks] * levels,
        "channel_mult": list(channel_mult),
        "transformer_depth": [d for d in depth for _ in range(num_res_blocks)],
        "transformer_depth_output": [d for d in depth for _ in range(num_res_blocks + 1)],
        "transformer_depth_middle": 1,
        "use_spatial_transformer": True,
        "use_linear_in_transformer": True,
        "legacy": False,
        "context_dim": context_dim,
        "num_heads": heads,
        "num_head_channels": -1,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        **({} if norm_groups == 32 else {"norm_groups": norm_groups}),
        **({"num_classes": "sequential", "adm_in_channels": pooled_dim} if pooled_dim else {}),
    }


def build_joint_model(unet_config: dict, init_seed: int | None = 0) -> BaseModel:
    """A ComfyUI ``BaseModel`` around a fresh ``UNetModel`` that outputs x0 (ComfyUI's ``X0``).

    ComfyUI's inference layers skip weight initialisation (weights come from files); for training
    from scratch each layer gets torch's default initialisation, seeded.
    """
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_sampling
    import comfy.supported_models_base

    unet_config = dict(unet_config)
    groups = unet_config.pop("norm_groups", 32)
    channels = unet_config["in_channels"]

    class PixelLatent(comfy.latent_formats.LatentFormat):
        scale_factor = 1.0
        latent_channels = channels
        spacial_downscale_ratio = 1  # pixel space (newer ComfyUI's attribute; the edit sampler's mask reads it)

    class JointConfig(comfy.supported_models_base.BASE):
        unet_extra_config = {}
        latent_format = PixelLatent
        supported_inference_dtypes = [torch.float32]
        memory_usage_factor = 1.0

        def get_model(self, state_dict, prefix="", device=None):
            base = PooledTextModel if self.unet_config.get("adm_in_channels") else comfy.model_base.BaseModel
            model = base(self, model_type=comfy.model_base.ModelType.EPS, device=device)

            class X0Sampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.X0):
                pass

            model.model_sampling = X0Sampling(self)
            return model

    class PooledTextModel(comfy.model_base.BaseModel):
        def encode_adm(self, **kwargs):
            # CLIPTextEncode's pooled_output; conditioning without one (e.g. zeroed) gets a zero embedding.
            pooled = kwargs.get("pooled_output")
            if pooled is None:
                return torch.zeros((1, self.adm_channels), device=kwargs["device"])
            return pooled

    config = JointConfig(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    for m in model.diffusion_model.modules():
        if isinstance(m, torch.nn.GroupNorm):
            if m.num_channels % groups:
                raise ValueError(f"norm_groups={groups} does not divide a {m.num_channels}-channel feature map")
            m.num_groups = groups
    if init_seed is not None:
        reset_parameters(model.diffusion_model, init_seed)
    return model


def reset_parameters(module: torch.nn.Module, seed: int) -> None:
    """torch's default initialisation for every layer, including ComfyUI's init-skipping ones."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in module.modules():
            for cls in type(m).__mro__:
                if cls.__module__.startswith("torch.nn") and "reset_parameters" in cls.__dict__:
                    cls.reset_parameters(m)
                    break
    finally:
        torch.random.set_rng_state(gen_state)


class ClassEmbedding(torch.nn.Module):
    """Class labels as conditioning tokens; index ``num_classes`` is the null (unconditional) class."""

    def __init__(self, num_classes: int, context_dim: int, tokens: int = 1):
        super().__init__()
        self.num_classes, self.tokens = num_classes, tokens
        self.embed = torch.nn.Embedding(num_classes + 1, context_dim * tokens)
        torch.nn.init.normal_(self.embed.weight, std=1.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embed(labels).reshape(labels.shape[0], self.tokens, -1)


def save_parts(path: PathLike, parts: dict[str, torch.nn.Module], meta: dict) -> Path:
    """One ``.safetensors`` with each module's state under its prefix (``unet.``, ``adapter.``, ...)."""
    tensors = {f"{prefix}.{k}": v for prefix, module in parts.items() for k, v in module.state_dict().items()}
    return atomic_save_file(tensors, path, meta)


def load_parts(path: Path, parts: dict[str, torch.nn.Module], device: str | torch.device = "cpu") -> None:
    """Fill each module from its prefix in a :func:`save_parts` file, strictly (every key, every shape)."""
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        keys = list(f.keys())
        for prefix, module in parts.items():
            state = {k[len(prefix) + 1 :]: f.get_tensor(k) for k in keys if k.startswith(prefix + ".")}
            try:
                module.load_state_dict(state)
            except RuntimeError as e:
                raise AdapterFileError(
                    f"{path.name}: the {prefix} weights do not match the stored "
                    f"configuration ({str(e).splitlines()[0]}); re-export the checkpoint."
                ) from None


def checkpoint_format(path: PathLike) -> tuple[str | None, dict]:
    """``(format, metadata)`` of a safetensors file's header (``format`` is ``None`` when absent)."""
    meta = read_header(Path(path)).get("__metadata__") or {}
    return meta.get("format"), meta


def check_version(path: Path, meta: dict, version: int) -> None:
    if meta.get("format_version") != str(version):
        raise AdapterFileError(
            f"{path.name} has {meta.get('format')} format version {meta.get('format_version')}, "
            f"this pack reads {version}; update the pack or retrain."
        )


def checked_adapter(path: Path, meta: dict) -> ContextAdapter:
    """The (empty) adapter a checkpoint declares, its tensor table checked against that architecture before
    anything is built: a forged header fails here, naming the file."""
    try:
        adapter_cfg = AdapterConfig.from_dict(json.loads(meta["adapter_config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise AdapterFileError(f"{path.name} has invalid adapter metadata ({e}); re-export the checkpoint.") from None
    check_tensor_table(path, read_header(path), expected_shapes(adapter_cfg), prefix="adapter.")
    return ContextAdapter(adapter_cfg, source=f"ContextDiff adapter in '{path.name}'")


def model_metadata(
    kind: tuple[str, int, str, str],
    unet_config: dict,
    adapter: ContextAdapter,
    training: dict | None,
    with_bias: bool,
    **extra: str,
) -> dict[str, str]:
    """The safetensors metadata every joint file carries; ``kind``: (format, version, recipe, base_model)."""
    fmt, version, recipe, base_model = kind
    return {
        "format": fmt,
        "format_version": str(version),
        "recipe": recipe,
        "unet_config": json.dumps(unet_config, sort_keys=True),
        "adapter_config": json.dumps(adapter.cfg.to_dict(), sort_keys=True),
        "latent_channels": str(unet_config["in_channels"]),
        "context_dim": str(unet_config["context_dim"]),
        "base_model": base_model,
        "with_bias": str(bool(with_bias)).lower(),
        "training": json.dumps(training or {}, sort_keys=True, default=str),
        "producer": f"contextdiff-comfyui {__version__}",
        **extra,
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
    meta = model_metadata(
        (JOINT_FORMAT, JOINT_VERSION, "digits", "joint"),
        unet_config,
        adapter,
        training,
        with_bias,
        num_classes=str(classes.num_classes),
        class_tokens=str(classes.tokens),
    )
    return save_parts(path, {"unet": model.diffusion_model, "adapter": adapter, "classes": classes}, meta)


def is_joint_file(path: PathLike) -> bool:
    try:
        return checkpoint_format(path)[0] == JOINT_FORMAT
    except AdapterFileError:
        return False


def load_joint(
    path: PathLike, device: str | torch.device = "cpu"
) -> tuple[BaseModel, ContextAdapter, ClassEmbedding, dict]:
    """``(comfy BaseModel, ContextAdapter, ClassEmbedding, metadata)`` from :func:`save_joint`'s file."""
    path = Path(path)
    fmt, meta = checkpoint_format(path)
    if fmt != JOINT_FORMAT:
        hint = (
            "it is a text-conditioned joint model: load it with Load ContextDiff Shapes Model"
            if fmt == TEXT_JOINT_FORMAT
            else "train one with python -m trainer.train --mode joint"
        )
        raise AdapterFileError(
            f"{path.name} is not a ContextDiff class-conditional joint checkpoint (format={fmt!r}); {hint}."
        )
    check_version(path, meta, JOINT_VERSION)
    adapter = checked_adapter(path, meta)
    unet_config = json.loads(meta["unet_config"])
    model = build_joint_model(unet_config, init_seed=None)
    classes = ClassEmbedding(int(meta["num_classes"]), unet_config["context_dim"], int(meta.get("class_tokens", 1)))
    load_parts(path, {"unet": model.diffusion_model, "adapter": adapter, "classes": classes}, device)
    meta["unet_config"], meta["training"] = unet_config, json.loads(meta.get("training", "{}"))
    return model.eval(), adapter.eval().requires_grad_(False), classes.eval().requires_grad_(False), meta
