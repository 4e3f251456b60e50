"""Family probes of a ComfyUI ``BaseModel``: which family and parameterisation it is, and its UNet conditioning.

The family table and the rules are :mod:`contextdiff.families`; this reads the ComfyUI objects.
``identify`` takes a ComfyUI ``BaseModel`` (and, optionally, the ``model_sampling`` a node patched in,
e.g. ComfyUI's ModelSamplingDiscrete node).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .method import families

if TYPE_CHECKING:  # for the annotations only: the probes call the model they are given
    from comfy.model_base import BaseModel

    from contextdiff.families import ModelInfo, ModelSampling


def identify(base_model: BaseModel, model_sampling: ModelSampling | None = None) -> ModelInfo:
    """Family and parameterisation of a ComfyUI ``BaseModel``; ``model_sampling`` overrides the model's own."""
    config_name = type(base_model.model_config).__name__
    sampling = model_sampling if model_sampling is not None else base_model.model_sampling
    family = families.family_of_config(config_name)
    config = base_model.model_config.unet_config
    # The text width: the UNet's context_dim, Flux's context_in_dim, SD3's context embedder; Wan's is fixed (4096).
    embedder = (config.get("context_embedder_config") or {}).get("params", {})
    context_dim = config.get("context_dim") or config.get("context_in_dim") or embedder.get("in_features")
    if context_dim is None and family is not None:
        context_dim = family.context_dim
    return families.ModelInfo(
        family,
        config_name,
        families.prediction_of(sampling),
        bool(getattr(sampling, "zsnr", False)),
        context_dim,
    )


def unet_conditioning(
    base_model: BaseModel, tokens: torch.Tensor, pooled: torch.Tensor | None, latent_shape: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """The keyword arguments of ``base_model.apply_model`` for text ``tokens`` (and ``pooled``), built by
    the model's own ``extra_conds`` as ComfyUI's samplers build them for CLIPTextEncode's output.

    SDXL's ``y`` = pooled CLIP-G embedding + embeddings of (height, width) = latent size x 8, crop (0, 0)
    and target size = the same: ComfyUI's defaults. Batches repeat to ``latent_shape[0]``.
    """
    info = identify(base_model)
    if info.family is not None and info.family.pooled and pooled is None:
        raise ValueError(
            f"{info.family.name} conditioning needs the pooled text embedding (SDXL's y): encode the "
            "prompt with the model's own CLIP (encode_from_tokens(..., return_pooled=True))"
        )
    batch, height, width = latent_shape[0], latent_shape[-2] * 8, latent_shape[-1] * 8
    kwargs = {
        "cross_attn": tokens,
        "device": tokens.device,
        "noise": torch.zeros(latent_shape, device=tokens.device),
        "width": width,
        "height": height,
        "crop_w": 0,
        "crop_h": 0,
        "target_width": width,
        "target_height": height,
    }
    if pooled is not None:
        kwargs["pooled_output"] = pooled
    conds = base_model.extra_conds(**kwargs)
    out = {}
    for name, cond in conds.items():
        out[name] = cond.process_cond(batch_size=batch, device=tokens.device, area=None).cond.to(tokens.device)
    return out


def probe_conditioning(
    base_model: BaseModel, latent_shape: tuple[int, ...], tokens: int = 77
) -> dict[str, torch.Tensor]:
    """Zero text (and pooled) conditioning of the family's widths, for probe passes that only need shapes."""
    info = identify(base_model)
    device = next(base_model.diffusion_model.parameters()).device
    text = torch.zeros(latent_shape[0], tokens, info.context_dim, device=device)
    pooled = (
        torch.zeros(latent_shape[0], info.family.pooled_dim, device=device)
        if info.family is not None and info.family.pooled
        else None
    )
    return unet_conditioning(base_model, text, pooled, latent_shape)
