"""The frozen base model for ``adapter`` and ``video`` modes, through ComfyUI's own loaders.

A :class:`BaseBundle` is what the trainer needs from a base model: the ComfyUI ``BaseModel``,
a text encoder giving CONDITIONING tokens and the pooled embedding, a VAE encoder (pixels -> model
latents) and, optionally, a decoder for previews. ``--checkpoint`` builds it from a ComfyUI
checkpoint file; ``--base_factory module:function`` lets research code or tests supply one. Either
way the family is checked by :mod:`contextdiff.families` (SD1.x, SD2.x, SDXL and its variants, eps or
v-prediction, zero terminal SNR included; SD3/SD3.5, Flux and Wan 2.x, flow matching) and the model's conditioning
is built the way ComfyUI's samplers build it (SDXL: ``y`` from the pooled text and the size embeddings; SD3 and
Flux: the pooled text; Flux: the guidance value).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from contextdiff import families
from hostside import families as host_families

# caption -> tokens (1, L, context_dim), or (tokens, pooled (1, P)) where the family reads the pooled text
TextEncoder = Callable[[str], torch.Tensor | tuple]


@dataclass
class BaseBundle:
    model: torch.nn.Module  # comfy.model_base.BaseModel
    encode_text: TextEncoder
    encode_images: Callable[[torch.Tensor], torch.Tensor]  # (B, H, W, 3) in [0, 1] -> model latents
    family: str  # the adapter file's base_model metadata
    decode_latents: Callable[[torch.Tensor], torch.Tensor] | None = None  # latents -> (B, H, W, 3)

    def encode(self, caption: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens (1, L, C), pooled (1, P) or None)`` of one caption."""
        out = self.encode_text(caption)
        return (out, None) if isinstance(out, torch.Tensor) else (out[0], out[1])

    def conditioning(self, tokens: torch.Tensor, pooled: torch.Tensor | None, latent_shape) -> dict:
        """``apply_model`` keyword arguments for a batch of latents of ``latent_shape`` (see
        :func:`hostside.families.unet_conditioning`)."""
        return host_families.unet_conditioning(self.model, tokens, pooled, tuple(latent_shape))


def load_checkpoint(path: str):
    """``(model_patcher, clip, vae)`` from a single-file checkpoint, by ComfyUI's own detection."""
    import comfy.sd

    model_patcher, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        path, output_vae=True, output_clip=True, embedding_directory=None
    )
    return model_patcher, clip, vae


def from_comfy(model_patcher, clip, vae, device, source: str = "the base model") -> BaseBundle:
    """A bundle from ComfyUI objects (what CheckpointLoaderSimple outputs)."""
    if model_patcher is None or clip is None or vae is None:
        raise SystemExit(f"{source}: ComfyUI could not find a UNet, text encoder and VAE in this checkpoint")
    model = model_patcher.model.to(device)

    def encode_text(caption: str):
        tokens, pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
        return tokens.to(device), None if pooled is None else pooled.to(device)  # Wan's umT5 has no pooled output

    def encode_images(pixels: torch.Tensor) -> torch.Tensor:
        return model.process_latent_in(vae.encode(pixels[..., :3]).to(device))

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(model.process_latent_out(latents))

    return BaseBundle(model, encode_text, encode_images, _family_key(model, source), decode)


def from_checkpoint(path: str, device) -> BaseBundle:
    return from_comfy(*load_checkpoint(path), device, source=path)


def from_factory(spec: str, cfg, device) -> BaseBundle:
    module, _, func = spec.partition(":")
    if not func:
        raise SystemExit(f"--base_factory {spec!r}: expected 'module:function'")
    return getattr(importlib.import_module(module), func)(cfg, device)


def _family_key(model, source: str) -> str:
    try:
        return families.require_trainable(host_families.identify(model)).key
    except ValueError as e:
        raise SystemExit(f"{source}: {e}") from None


def load_base(cfg, device) -> BaseBundle:
    if cfg.base_factory:
        bundle = from_factory(cfg.base_factory, cfg, device)
    else:
        bundle = from_checkpoint(cfg.checkpoint, device)
    bundle.family = _family_key(bundle.model, cfg.base_factory or cfg.checkpoint)
    bundle.model.requires_grad_(False)
    bundle.model.eval()
    return bundle
