"""A whole video through inversion and editing: plan and memory check first, then chunk by chunk with
sparse-causal attention, cross-faded where chunks overlap."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import comfy.model_management
import torch

from ..contextdiff.attention_store import store_bytes_per_frame
from ..contextdiff.chunking import chunk_starts, crossfade
from ..contextdiff.edit_plan import EditPlan
from ..contextdiff.editing import VideoSettings
from ..media.video import target_size
from . import edit_runs
from .attention_patch import refuse_conflicts
from .prompt_tokens import encode_prompt
from .store_budget import footprint

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP, VAE

    from .types import LoadedAdapter

VAE_BATCH = 4  # frames per VAE call at most (fewer where one call's working memory would not fit)


class FrameShape(NamedTuple):
    """The frames an edit will hold, known before any is decoded: how many and their size in pixels."""

    count: int
    height: int
    width: int

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3 * 4  # float32 RGB, as ComfyUI's IMAGE


class MemoryPlan(NamedTuple):
    """What :func:`memory_check` allows: frames per VAE call."""

    vae_batch: int


def vae_working_bytes(vae: VAE, height: int, width: int) -> float:
    """ComfyUI's own estimate of one ``height`` x ``width`` frame through ``vae``: the larger of encoding it and
    decoding its latent (the estimate ComfyUI sizes its VAE batches by)."""
    ratio = int(vae.spacial_compression_encode())
    encode = vae.memory_used_encode((1, 3, height, width), vae.vae_dtype)
    decode = vae.memory_used_decode((1, vae.latent_channels, height // ratio, width // ratio), vae.vae_dtype)
    return float(max(encode, decode))


def _store_check(model: ModelPatcher, frames: FrameShape, ratio: int, settings: VideoSettings, budget: float) -> None:
    """Refuse, saying how many frames per chunk fit, a job whose attention store would not fit the budget."""
    n, chunk_size, steps = frames.count, settings.chunk_size, settings.inversion.steps
    h, w = frames.height // ratio, frames.width // ratio
    fused = len(settings.inversion.fused_steps)
    # A probe of at most 32x32 latent pixels: a full-size probe would itself be the long, uncancellable model call
    # this estimate is there to refuse.
    per_frame = store_bytes_per_frame(footprint(model, h, w), fused, 2)
    per_frame += (steps + 2) * 4 * h * w * 4 + frames.frame_bytes * 2  # trajectory + frames in and out
    need = per_frame * min(chunk_size, n) + frames.frame_bytes * 2 * n
    if need > budget:
        fit = max(0, int((budget - frames.frame_bytes * 2 * n) // per_frame))
        raise MemoryError(
            f"editing needs about {need / 1e9:.2f} GB ({per_frame / 1e6:.1f} MB per frame in a chunk "
            f"of {min(chunk_size, n)}), over the {budget / 1e9:.2f} GB budget; at most {fit} "
            "frames per chunk fit: lower chunk_size, size or steps"
        )


def _largest_fitting_side(frames: FrameShape, fits: Callable[[FrameShape], bool]) -> int | None:
    """The largest shorter side (a multiple of 8) at which ``fits`` holds for frames of the same aspect."""
    short = min(frames.height, frames.width)
    for side in range(short // 8 * 8, 7, -8):
        width, height = target_size(frames.width, frames.height, side)
        if fits(frames._replace(height=height, width=width)):
            return side
    return None


def memory_check(
    model: ModelPatcher,
    vae: VAE,
    frames: FrameShape,
    settings: VideoSettings,
    *,
    budget_bytes: float,
    from_file: bool,
) -> MemoryPlan:
    """Every stage of the video edit checked before the first frame is decoded: the frames held (decoded, then
    edited), the attention store of a chunk (within ``budget_bytes``), and one frame through the VAE, whose
    working memory (ComfyUI's estimate) must fit beside the frames within memory_limit_gb when it is set, else in
    the free memory where the VAE runs on the CPU (there nothing stops a VAE call that does not fit: it swaps for
    minutes; on a GPU ComfyUI falls back to tiles). Refuses naming the stage and what fits; returns the frames per
    VAE call that fit (at most :data:`VAE_BATCH`)."""
    ratio = int(vae.spacial_compression_encode())
    _store_check(model, frames, ratio, settings, budget_bytes)
    held_here = settings.memory_limit_gb > 0 or vae.device.type == "cpu"  # the frames share the VAE's memory
    if settings.memory_limit_gb > 0:
        limit, limit_name = settings.memory_limit_gb * 1e9, f"the {settings.memory_limit_gb:g} GB of memory_limit_gb"
    else:
        limit = comfy.model_management.get_free_memory(vae.device)
        limit_name = f"the {limit / 1e9:.2f} GB free on the {vae.device.type}"

    def need(f: FrameShape) -> tuple[float, float]:
        return (f.count * f.frame_bytes * 2 if held_here else 0.0), vae_working_bytes(vae, f.height, f.width)

    held, working = need(frames)
    if held_here and held + working > limit:
        side = _largest_fitting_side(frames, lambda f: sum(need(f)) <= limit)
        lower = "lower size to" if from_file else "resize the frames upstream to a shorter side of"
        fits = f"{lower} at most {side}" if side else "no frame size fits: lower max_frames"
        more = "raise memory_limit_gb" if settings.memory_limit_gb > 0 else "free memory"
        raise MemoryError(
            f"the VAE (encoding the frames, decoding the edit) needs about {working / 1e9:.2f} GB for one "
            f"{frames.width}x{frames.height} frame (ComfyUI's estimate for this VAE) beside {held / 1e9:.2f} GB of "
            f"frames, over {limit_name}: {fits}, or {more}"
        )
    return MemoryPlan(vae_batch=max(1, min(VAE_BATCH, int((limit - held) // max(working, 1.0)))))


def _vae_batches(fn, x: torch.Tensor, batch: int) -> torch.Tensor:
    out = []
    for i in range(0, x.shape[0], batch):
        comfy.model_management.throw_exception_if_processing_interrupted()
        out.append(fn(x[i : i + batch]))
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
    memory: MemoryPlan,
    adapter: LoadedAdapter | None = None,
    plan: EditPlan | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Edited frames ``(F, H, W, 3)`` in [0, 1] and the warnings of the run (``plan``: :func:`plan_video`'s;
    ``memory``: :func:`memory_check`'s, made before the frames were read)."""
    n, chunk_size = frames.shape[0], settings.chunk_size
    plan = plan_video(model, clip, settings) if plan is None else plan
    starts = chunk_starts(n, chunk_size, settings.overlap)
    warnings = list(plan.warnings)
    if n > 1 and min(chunk_size, n) == 1:
        warnings.append(
            "chunk_size 1: every frame is edited alone, without sparse-causal attention between frames; "
            "raise chunk_size for a temporally consistent edit"
        )

    edit = settings.edit
    negative = encode_prompt(clip, "")
    source_guide = edit_runs.Guide(model, encode_prompt(clip, edit.source_prompt), negative, adapter)
    target_guide = source_guide._replace(positive=encode_prompt(clip, edit.target_prompt))
    latents = _vae_batches(lambda x: vae.encode(x[..., :3]), frames, memory.vae_batch)
    outputs = []
    for start in starts:
        comfy.model_management.throw_exception_if_processing_interrupted()
        end = min(n, start + chunk_size)
        chunk = {"samples": latents[start:end]}
        source = edit_runs.invert(source_guide, chunk, settings.inversion, end - start if end - start > 1 else None)
        result = edit_runs.edit(target_guide, source, plan)
        warnings += [w for w in result.warnings if w not in warnings]
        decoded = _vae_batches(vae.decode, result.samples, memory.vae_batch)
        outputs.append((start, decoded.reshape(-1, *decoded.shape[-3:]).cpu()))
    return crossfade(outputs, n).clamp(0, 1), warnings
