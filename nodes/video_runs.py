"""A whole video through inversion and editing: plan and memory check first, then chunk by chunk with
sparse-causal attention, cross-faded where chunks overlap."""

from __future__ import annotations

from typing import TYPE_CHECKING

import comfy.model_management
import torch

from ..contextdiff.attention_store import store_bytes_per_frame
from ..contextdiff.chunking import chunk_starts, crossfade
from ..contextdiff.editing import fused_steps
from . import edit_runs
from .attention_patch import attention_footprint, refuse_conflicts
from .prompt_tokens import encode_prompt

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP, VAE

    from .types import LoadedAdapter

VAE_BATCH = 4  # frames per VAE call


def memory_check(
    model: ModelPatcher,
    frames: torch.Tensor,
    ratio: int,
    steps: int,
    fuse_start: float,
    chunk_size: int,
    budget_bytes: float,
) -> None:
    """Refuse, saying how many frames per chunk fit, a job whose attention store would not fit the budget."""
    n = frames.shape[0]
    h, w = frames.shape[1] // ratio, frames.shape[2] // ratio
    fused = len(fused_steps(steps, fuse_start))
    per_frame = store_bytes_per_frame(attention_footprint(model, (h, w)), fused, 2)
    per_frame += (steps + 2) * 4 * h * w * 4 + frames[0].numel() * 4 * 2  # trajectory + frames in and out
    need = per_frame * min(chunk_size, n) + frames[0].numel() * 4 * 2 * n
    if need > budget_bytes:
        fit = max(0, int((budget_bytes - frames[0].numel() * 8 * n) // per_frame))
        raise MemoryError(
            f"editing needs about {need / 1e9:.2f} GB ({per_frame / 1e6:.1f} MB per frame in a chunk "
            f"of {min(chunk_size, n)}), over the {budget_bytes / 1e9:.2f} GB budget; at most {fit} "
            "frames per chunk fit: lower chunk_size, size or steps"
        )


def _vae_batches(fn, x: torch.Tensor) -> torch.Tensor:
    out = []
    for i in range(0, x.shape[0], VAE_BATCH):
        comfy.model_management.throw_exception_if_processing_interrupted()
        out.append(fn(x[i : i + VAE_BATCH]))
    return torch.cat(out)


def edit_video(
    model: ModelPatcher,
    vae: VAE,
    clip: CLIP,
    frames: torch.Tensor,
    *,
    source_prompt: str,
    target_prompt: str,
    blend_words: str = "",
    steps: int = 20,
    cfg: float = 7.5,
    fuse_start: float = 0.5,
    blend_threshold: float = 0.3,
    chunk_size: int = 8,
    overlap: int = 2,
    budget_bytes: float,
    adapter: LoadedAdapter | None = None,
    strength: float = 1.0,
) -> tuple[torch.Tensor, list[str]]:
    """Edited frames ``(F, H, W, 3)`` in [0, 1] and the warnings of the run."""
    n = frames.shape[0]
    plan = edit_runs.plan_edit(
        steps=steps,
        fuse_start=fuse_start,
        fuse=True,
        clip=clip,
        source_prompt=source_prompt,
        target_prompt=target_prompt,
        blend_words=blend_words,
        blend_threshold=blend_threshold,
    )
    refuse_conflicts(model, replaces_self=True, replaces_cross=bool(plan.shared_tokens))
    starts = chunk_starts(n, chunk_size, overlap)
    warnings = list(plan.warnings)
    if n > 1 and min(chunk_size, n) == 1:
        warnings.append(
            "chunk_size 1: every frame is edited alone, without sparse-causal attention between frames; "
            "raise chunk_size for a temporally consistent edit"
        )
    ratio = int(vae.spacial_compression_encode())
    memory_check(model, frames, ratio, steps, fuse_start, chunk_size, budget_bytes)

    positive_src, positive_tgt = encode_prompt(clip, source_prompt), encode_prompt(clip, target_prompt)
    negative = encode_prompt(clip, "")
    latents = _vae_batches(lambda x: vae.encode(x[..., :3]), frames)
    outputs = []
    for start in starts:
        comfy.model_management.throw_exception_if_processing_interrupted()
        end = min(n, start + chunk_size)
        frames_in_chunk = end - start if end - start > 1 else None
        source = edit_runs.invert(
            model,
            {"samples": latents[start:end]},
            positive_src,
            negative=negative,
            steps=steps,
            scheduler="ddim_uniform",
            cfg=1.0,
            adapter=adapter,
            strength=strength,
            fuse_start=fuse_start,
            store_dtype=torch.float16,
            frames=frames_in_chunk,
        )
        result = edit_runs.edit(
            model, source, positive_tgt, plan=plan, negative=negative, cfg=cfg, adapter=adapter, strength=strength
        )
        warnings += [w for w in result.warnings if w not in warnings]
        decoded = _vae_batches(vae.decode, result.samples)
        outputs.append((start, decoded.reshape(-1, *decoded.shape[-3:]).cpu()))
    return crossfade(outputs, n).clamp(0, 1), warnings
