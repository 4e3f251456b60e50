"""The image inversion's attention store, estimated before the first model call: an inversion whose recording
would not fit in half the free memory (the video edit's default budget) is refused, saying what fits.

The store keeps q and k of every attention block for each fused step (:func:`store_bytes_per_frame`); its size
grows with the steps, the image size and the batch. A bound taken from the UNet's layers alone (every block at
the latent's full token count) settles the usual case without a model call; only when that bound is over the
budget does one probe pass (:func:`footprint`, at most 32x32 latent pixels, as the video edit's estimate also does)
measure the blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import comfy.model_management
import torch

from ..contextdiff.attention_store import joint_store_bytes, store_bytes_per_frame, wan_store_bytes
from .attention_patch import attention_blocks, attention_footprint
from .dit_attention import dit_blocks, joint_footprint
from .wan_attention import is_wan, wan_footprint

PROBE = 32  # latent pixels per side of the probe pass: ~80 MB on a CPU for an 8-head UNet (64: ~1 GB)

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

    from ..contextdiff.editing import InversionSettings


def _upper_bound_footprint(model: ModelPatcher, tokens: int) -> list[tuple[int, int]]:
    # A UNet only downsamples: no block sees more tokens than the latent has pixels.
    return [
        (tokens, max(block.attn1.to_q.in_features, block.attn1.to_q.out_features))
        for _, block in attention_blocks(model.model.diffusion_model)
    ]


def footprint(model: ModelPatcher, h: int, w: int) -> list[tuple[int, int]]:
    """``(tokens, channels)`` of every attention block at an ``h`` x ``w`` latent, probed at most PROBE x PROBE
    latent pixels (a full-size probe of a huge image would itself be the run the estimate should refuse, with
    no progress and no Cancel): every block's token count is a fixed fraction of the latent's area."""
    ph, pw = min(h, PROBE), min(w, PROBE)
    return [(round(n * h * w / (ph * pw)), c) for n, c in attention_footprint(model, (ph, pw))]


def check_inversion_fits(
    model: ModelPatcher,
    latent_shape: tuple[int, ...],
    settings: InversionSettings,
    budget_bytes: float | None = None,
    text_tokens: int = 0,
) -> bool:
    """Raise ``MemoryError`` naming the fused steps that fit when the store of this inversion would not fit
    ``budget_bytes`` (default: half the free memory where the store is kept). ``text_tokens``: the positive's
    tokens, which a DiT's joint attention records keys of (Flux, SD3; counted from its blocks, no probe pass).
    On a DiT (SD3, Flux, Wan) a store that does not fit is not refused: the result is True, and the edit recomputes
    the source's branch instead (docs/design.md 1.3); else False. A UNet's store that does not fit is refused."""
    fused = len(settings.fused_steps)
    diffusion_model = model.model.diffusion_model
    if fused and is_wan(diffusion_model) and len(latent_shape) == 5:
        if budget_bytes is None:
            budget_bytes = 0.5 * comfy.model_management.get_free_memory(comfy.model_management.intermediate_device())
        itemsize = torch.empty((), dtype=settings.store_dtype).element_size()
        blocks = wan_footprint(diffusion_model, tuple(int(n) for n in latent_shape[2:]), text_tokens)
        return wan_store_bytes(blocks, fused, itemsize) * int(latent_shape[0]) > budget_bytes
    if not fused or len(latent_shape) != 4:  # image latents (batch, channels, height, width)
        return False
    if budget_bytes is None:
        device = comfy.model_management.intermediate_device()
        budget_bytes = 0.5 * comfy.model_management.get_free_memory(device)
    latents, h, w = int(latent_shape[0]), int(latent_shape[2]), int(latent_shape[3])
    itemsize = torch.empty((), dtype=settings.store_dtype).element_size()
    if dit_blocks(diffusion_model):
        per_step = joint_store_bytes(joint_footprint(model.model.diffusion_model, (h, w), text_tokens), 1, itemsize)
        return per_step * latents * fused > budget_bytes  # no room: the source's branch is recomputed
    if store_bytes_per_frame(_upper_bound_footprint(model, h * w), fused, itemsize) * latents <= budget_bytes:
        return False
    per_step = store_bytes_per_frame(footprint(model, h, w), 1, itemsize) * latents
    if per_step * fused <= budget_bytes:
        return False
    raise MemoryError(
        f"this inversion would record about {per_step * fused / 1e9:.1f} GB of attention ({fused} fused steps of "
        f"{latents} latent{'s' if latents > 1 else ''} of {w}x{h}), over the {budget_bytes / 1e9:.1f} GB budget "
        f"(half the free memory): at most {int(budget_bytes // per_step)} fused steps fit; lower steps, raise "
        "fuse_start or invert a smaller image"
    )
