"""The joint recipes' denoiser: ComfyUI's ``UNetModel`` in pixel space, predicting x0, as a ComfyUI ``BaseModel``.

The model predicts ``x0`` (paper Eq. 6) and is wrapped with ComfyUI's own discrete VP schedule, so the trainer
and the host sample it through exactly the same code. ``build_joint_model`` imports ``comfy`` when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .method import joint_model

if TYPE_CHECKING:  # annotations only: ComfyUI is imported where a model is built
    from comfy.model_base import BaseModel

# Bounds on a checkpoint's UNet config, checked before anything is built (even on the meta device).
UNET_LIMITS = {
    "in_channels": (1, 64),
    "out_channels": (1, 64),
    "model_channels": (1, 4096),
    "context_dim": (1, 16384),
    "channel_mult": (1, 16),
    "num_res_blocks": (1, 16),
    "transformer_depth": (0, 16),
    "transformer_depth_output": (0, 16),
    "transformer_depth_middle": (0, 16),
    "num_heads": (1, 256),
    "norm_groups": (1, 4096),
    "adm_in_channels": (1, 16384),
}


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
        joint_model.reset_parameters(model.diffusion_model, init_seed)
    return model


def empty_unet(unet_config: dict) -> torch.nn.Module:
    """The ``UNetModel`` of ``build_joint_model(unet_config)`` on the meta device: its shapes, nothing allocated."""
    with torch.device("meta"):
        return build_joint_model(unet_config, init_seed=None).diffusion_model
