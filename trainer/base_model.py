"""The frozen base model for ``adapter`` and ``video`` modes, through ComfyUI's own loaders.

A :class:`BaseBundle` is what the trainer needs from a base model: the ComfyUI ``BaseModel``,
a text encoder giving CONDITIONING tokens, a VAE encoder (pixels -> model latents) and,
optionally, a decoder for previews. ``--checkpoint`` builds it from a ComfyUI checkpoint file
(SD1.x, SD2.x, SDXL); ``--base_factory module:function`` lets research code or tests supply one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

FAMILIES = {"SD15": "sd15", "SD20": "sd2", "SD21UnclipL": "sd2", "SD21UnclipH": "sd2", "SDXL": "sdxl",
            "SDXLRefiner": "sdxl", "SSD1B": "sdxl", "Segmind_Vega": "sdxl", "KOALA_700M": "sdxl",
            "KOALA_1B": "sdxl"}


@dataclass
class BaseBundle:
    model: torch.nn.Module                                   # comfy.model_base.BaseModel
    encode_text: Callable[[str], torch.Tensor]               # caption -> (1, L, context_dim)
    encode_images: Callable[[torch.Tensor], torch.Tensor]    # (B, H, W, 3) in [0, 1] -> model latents
    family: str
    decode_latents: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # latents -> (B, H, W, 3)


def from_checkpoint(path: str, device) -> BaseBundle:
    import comfy.sd

    model_patcher, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        path, output_vae=True, output_clip=True, embedding_directory=None)
    if model_patcher is None or clip is None or vae is None:
        raise SystemExit(f"{path}: ComfyUI could not find a UNet, text encoder and VAE in this checkpoint")
    model = model_patcher.model.to(device)
    family = FAMILIES.get(type(model.model_config).__name__, type(model.model_config).__name__.lower())

    def encode_text(caption: str) -> torch.Tensor:
        return clip.encode_from_tokens(clip.tokenize(caption)).to(device)

    def encode_images(pixels: torch.Tensor) -> torch.Tensor:
        return model.process_latent_in(vae.encode(pixels[..., :3]).to(device))

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(model.process_latent_out(latents))

    return BaseBundle(model, encode_text, encode_images, family, decode)


def from_factory(spec: str, cfg, device) -> BaseBundle:
    module, _, func = spec.partition(":")
    if not func:
        raise SystemExit(f"--base_factory {spec!r}: expected 'module:function'")
    return getattr(importlib.import_module(module), func)(cfg, device)


def load_base(cfg, device) -> BaseBundle:
    bundle = from_factory(cfg.base_factory, cfg, device) if cfg.base_factory else from_checkpoint(cfg.checkpoint, device)
    bundle.model.requires_grad_(False)
    bundle.model.eval()
    return bundle
