"""A whole video through inversion and editing: plan and memory check first, then chunk by chunk with
sparse-causal attention, cross-faded where chunks overlap."""

from __future__ import annotations

from typing import TYPE_CHECKING

import comfy.model_management
import torch

from ..contextdiff.attention_store import store_bytes_per_frame
from ..contextdiff.chunking import chunk_starts, crossfade
from ..contextdiff.edit_plan import EditPlan
from ..contextdiff.editing import VideoSettings
from . import edit_runs
from .attention_patch import attention_footprint, refuse_conflicts
from .prompt_tokens import encode_prompt

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP, VAE

    from .types import LoadedAdapter

VAE_BATCH = 4  # frames per VAE call


def memory_check(
    model: ModelPatcher, frames: torch.Tensor, ratio: int, settings: VideoSettings, budget_bytes: float
) -> None:
    """Refuse, saying how many frames per chunk fit, a job whose attention store would not fit the budget."""
    n, chunk_size, steps = frames.shape[0], settings.chunk_size, settings.inversion.steps
    h, w = frames.shape[1] // ratio, frames.shape[2] // ratio
    fused = len(settings.inversion.fused_steps)
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


def plan_video(model: ModelPatcher, clip: CLIP, settings: VideoSettings) -> EditPlan:
    """The edit plan of a video, checked before any frame is read (the video edit always fuses)."""
    plan = edit_runs.plan_edit(settings.edit, settings.inversion, clip)
    refuse_conflicts(model, replaces_self=True, replaces_cross=bool(plan.shared_tokens))
    return plan


def edit_video(
    model: ModelPatcher,
    vae: VAE,
    clip: CLIP,
    frames: torch.Tensor,
    settings: VideoSettings,
    *,
    budget_bytes: float,
    adapter: LoadedAdapter | None = None,
    plan: EditPlan | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Edited frames ``(F, H, W, 3)`` in [0, 1] and the warnings of the run (``plan``: :func:`plan_video`'s)."""
    n, chunk_size = frames.shape[0], settings.chunk_size
    plan = plan_video(model, clip, settings) if plan is None else plan
    starts = chunk_starts(n, chunk_size, settings.overlap)
    warnings = list(plan.warnings)
    if n > 1 and min(chunk_size, n) == 1:
        warnings.append(
            "chunk_size 1: every frame is edited alone, without sparse-causal attention between frames; "
            "raise chunk_size for a temporally consistent edit"
        )
    ratio = int(vae.spacial_compression_encode())
    memory_check(model, frames, ratio, settings, budget_bytes)

    edit = settings.edit
    negative = encode_prompt(clip, "")
    source_guide = edit_runs.Guide(model, encode_prompt(clip, edit.source_prompt), negative, adapter)
    target_guide = source_guide._replace(positive=encode_prompt(clip, edit.target_prompt))
    latents = _vae_batches(lambda x: vae.encode(x[..., :3]), frames)
    outputs = []
    for start in starts:
        comfy.model_management.throw_exception_if_processing_interrupted()
        end = min(n, start + chunk_size)
        chunk = {"samples": latents[start:end]}
        source = edit_runs.invert(source_guide, chunk, settings.inversion, end - start if end - start > 1 else None)
        result = edit_runs.edit(target_guide, source, plan)
        warnings += [w for w in result.warnings if w not in warnings]
        decoded = _vae_batches(vae.decode, result.samples)
        outputs.append((start, decoded.reshape(-1, *decoded.shape[-3:]).cpu()))
    return crossfade(outputs, n).clamp(0, 1), warnings
