"""A whole video through inversion and editing: plan and memory check first, then chunk by chunk, cross-faded where
chunks overlap: on a UNet with sparse-causal attention; on Wan 2.x as the native video model it is (every chunk one
video latent from the Wan VAE, its attention over all the chunk's tokens: docs/design.md 1.3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import comfy.model_management
import torch

from ..contextdiff.attention_store import store_bytes_per_frame, wan_store_bytes
from ..contextdiff.chunking import chunk_starts, crossfade
from ..contextdiff.edit_plan import EditPlan
from ..contextdiff.editing import VideoSettings
from ..media.video import target_size
from . import edit_runs
from .attention_patch import refuse_conflicts
from .dit_attention import refuse_dit_conflicts
from .prompt_tokens import encode_prompt
from .store_budget import footprint
from .wan_attention import is_wan, wan_footprint

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
    """What :func:`memory_check` allows: frames per VAE call, and on Wan whether the source's attention is
    recomputed beside the target (no store fits) rather than stored."""

    vae_batch: int
    recompute: bool = False


def vae_working_bytes(vae: VAE, height: int, width: int, frames: int = 1) -> float:
    """ComfyUI's own estimate of one ``height`` x ``width`` frame through ``vae``: the larger of encoding it and
    decoding its latent (the estimate ComfyUI sizes its VAE batches by). A video VAE (Wan's, ``latent_dim`` 3)
    takes a whole chunk of ``frames`` at once, ``1 + (frames - 1) / 4`` latent frames."""
    ratio = int(vae.spacial_compression_encode())
    pixels, latent = (1, 3, height, width), (1, vae.latent_channels, height // ratio, width // ratio)
    if getattr(vae, "latent_dim", 2) == 3:
        pixels, latent = (*pixels[:2], frames, *pixels[2:]), (*latent[:2], 1 + (frames - 1) // WAN_FRAMES, *latent[2:])
    encode = vae.memory_used_encode(pixels, vae.vae_dtype)
    decode = vae.memory_used_decode(latent, vae.vae_dtype)
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


WAN_FRAMES = 4  # the Wan VAE keeps the first frame and folds every 4 after it into one latent frame


def wan_chunks(count: int, settings: VideoSettings) -> list[int]:
    """The frames of every chunk a Wan edit runs, refused unless each is ``4 k + 1`` (what the Wan VAE encodes to
    ``k + 1`` latent frames and decodes back to as many)."""
    lengths = [min(settings.chunk_size, count - s) for s in chunk_starts(count, settings.chunk_size, settings.overlap)]
    bad = sorted({n for n in lengths if n % WAN_FRAMES != 1})
    if bad:
        raise ValueError(
            f"the Wan VAE encodes 1 + 4 k frames (1, 5, 9, ... 81) but these chunks would hold {bad} frames: set "
            "chunk_size to such a number and choose max_frames, frame_stride and overlap so that every chunk is full "
            f"(the clip has {count} frames)"
        )
    return lengths


def wan_text_tokens(clip: CLIP, text: str) -> int:
    """The T5 tokens Wan's cross-attention keys hold for ``text`` (umT5 pads to 512 at least)."""
    return sum(len(chunk) for chunk in clip.tokenize(text).get("umt5xxl", [])) or 512


class WanNeed(NamedTuple):
    """What a Wan edit holds for its largest chunk, counted on the model's own blocks and widths (no model call):
    the attention store per fused step (:func:`attention_store.wan_store_bytes`) and the source trajectory."""

    per_step: int
    fused: int
    trajectory: int

    @property
    def total(self) -> int:
        return self.per_step * self.fused + self.trajectory


def wan_need(model: ModelPatcher, frames: FrameShape, ratio: int, settings: VideoSettings, text: int) -> WanNeed:
    """:class:`WanNeed` of an edit of ``frames`` (``ratio``: the VAE's pixels per latent pixel; ``text``: the T5
    tokens of the source prompt)."""
    length = max(wan_chunks(frames.count, settings))
    size = (1 + (length - 1) // WAN_FRAMES, -(-frames.height // ratio), -(-frames.width // ratio))
    footprint = wan_footprint(model.model.diffusion_model, size, text)
    per_step = wan_store_bytes(footprint, 1, settings.inversion.store_dtype.itemsize)
    trajectory = (settings.inversion.steps + 2) * 16 * math.prod(size) * 4
    return WanNeed(per_step, len(settings.inversion.fused_steps), trajectory)


def _wan_store_check(
    model: ModelPatcher, frames: FrameShape, ratio: int, settings: VideoSettings, budget: float, text: tuple[int, int]
) -> bool:
    """Whether a Wan edit must recompute the source's branch (docs/design.md 1.3): no, where its store (one chunk)
    fits the budget beside the frames; yes, where only the trajectory does (and the two prompts' T5 tokens,
    ``text``, are as many: the branch shares the target's batch); refused, saying what fits, where neither does."""
    need = wan_need(model, frames, ratio, settings, text[0])
    held = frames.frame_bytes * 2 * frames.count
    if need.total + held <= budget or not need.fused:
        return False
    if need.trajectory + held > budget:
        raise MemoryError(
            f"editing on Wan needs about {(need.trajectory + held) / 1e9:.2f} GB even without an attention store "
            f"(the source trajectory of a chunk and the frames), over the {budget / 1e9:.2f} GB budget: lower "
            "chunk_size, size, max_frames or steps, or raise memory_limit_gb"
        )
    if text[0] != text[1]:
        raise ValueError(
            f"the attention store ({need.per_step / 1e9:.2f} GB per fused step) does not fit the "
            f"{budget / 1e9:.2f} GB budget, so the source's branch must run in the target's batch, but the source "
            f"prompt encodes to {text[0]} T5 tokens and the target prompt to {text[1]}: make the longer prompt "
            "shorter (512 tokens hold both), or raise fuse_start or memory_limit_gb so that the store fits"
        )
    return True


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
    text_tokens: int | tuple[int, int] = 512,
) -> MemoryPlan:
    """Every stage of the video edit checked before the first frame is decoded: the frames held (decoded, then
    edited), the attention store of a chunk (within ``budget_bytes``), and one frame through the VAE, whose
    working memory (ComfyUI's estimate) must fit beside the frames within memory_limit_gb when it is set, else in
    the free memory where the VAE runs on the CPU (there nothing stops a VAE call that does not fit: it swaps for
    minutes; on a GPU ComfyUI falls back to tiles). Refuses naming the stage and what fits; returns the frames per
    VAE call that fit (at most :data:`VAE_BATCH`). On Wan (``text_tokens``: the source and target prompts' T5
    tokens, or one count for both) the store is counted on its blocks, the source's branch recomputed where it does
    not fit (:attr:`MemoryPlan.recompute`), and the VAE encodes a whole chunk at once."""
    ratio = int(vae.spacial_compression_encode())
    chunk = 1  # frames per VAE call: one image at a time, or Wan's whole chunk
    recompute = False
    if is_wan(model.model.diffusion_model):
        text = (text_tokens, text_tokens) if isinstance(text_tokens, int) else tuple(text_tokens)
        recompute = _wan_store_check(model, frames, ratio, settings, budget_bytes, text)
        chunk = max(wan_chunks(frames.count, settings))
    else:
        _store_check(model, frames, ratio, settings, budget_bytes)
    held_here = settings.memory_limit_gb > 0 or vae.device.type == "cpu"  # the frames share the VAE's memory
    if settings.memory_limit_gb > 0:
        limit, limit_name = settings.memory_limit_gb * 1e9, f"the {settings.memory_limit_gb:g} GB of memory_limit_gb"
    else:
        limit = comfy.model_management.get_free_memory(vae.device)
        limit_name = f"the {limit / 1e9:.2f} GB free on the {vae.device.type}"

    def need(f: FrameShape) -> tuple[float, float]:
        return (f.count * f.frame_bytes * 2 if held_here else 0.0), vae_working_bytes(vae, f.height, f.width, chunk)

    held, working = need(frames)
    if held_here and held + working > limit:
        side = _largest_fitting_side(frames, lambda f: sum(need(f)) <= limit)
        lower = "lower size to" if from_file else "resize the frames upstream to a shorter side of"
        fits = f"{lower} at most {side}" if side else "no frame size fits: lower max_frames"
        more = "raise memory_limit_gb" if settings.memory_limit_gb > 0 else "free memory"
        count, plural = ("one", "") if chunk == 1 else (chunk, "s")
        raise MemoryError(
            f"the VAE (encoding the frames, decoding the edit) needs about {working / 1e9:.2f} GB for {count} "
            f"{frames.width}x{frames.height} frame{plural} (ComfyUI's estimate for this VAE) beside "
            f"{held / 1e9:.2f} GB of frames, over {limit_name}: {fits}, or {more}"
        )
    return MemoryPlan(vae_batch=max(1, min(VAE_BATCH, int((limit - held) // max(working, 1.0)))), recompute=recompute)


def _vae_batches(fn, x: torch.Tensor, batch: int) -> torch.Tensor:
    out = []
    for i in range(0, x.shape[0], batch):
        comfy.model_management.throw_exception_if_processing_interrupted()
        out.append(fn(x[i : i + batch]))
    return torch.cat(out)


def plan_video(model: ModelPatcher, clip: CLIP, settings: VideoSettings) -> EditPlan:
    """The edit plan of a video, checked before any frame is read (the video edit always fuses)."""
    plan = edit_runs.plan_edit(settings.edit, settings.inversion, clip, model=model)
    if is_wan(model.model.diffusion_model):
        refuse_dit_conflicts(model, replaces=True)
    else:
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
    wan = is_wan(model.model.diffusion_model)
    if wan:
        wan_chunks(n, settings)
    elif n > 1 and min(chunk_size, n) == 1:
        warnings.append(
            "chunk_size 1: every frame is edited alone, without sparse-causal attention between frames; "
            "raise chunk_size for a temporally consistent edit"
        )

    edit = settings.edit
    negative = encode_prompt(clip, "")
    source_guide = edit_runs.Guide(model, encode_prompt(clip, edit.source_prompt), negative, adapter)
    target_guide = source_guide._replace(positive=encode_prompt(clip, edit.target_prompt))
    # Wan's VAE encodes a chunk's frames as one video latent (causal in time): chunk by chunk, below.
    latents = None if wan else _vae_batches(lambda x: vae.encode(x[..., :3]), frames, memory.vae_batch)
    outputs = []
    for start in starts:
        comfy.model_management.throw_exception_if_processing_interrupted()
        end = min(n, start + chunk_size)
        if wan:  # a native video model: all the chunk's tokens attend to each other, no sparse-causal rewiring
            chunk = {"samples": vae.encode(frames[start:end, ..., :3])}
            source = edit_runs.invert(
                source_guide, chunk, settings.inversion, None, record=True, recompute=memory.recompute
            )
        else:
            chunk = {"samples": latents[start:end]}
            source = edit_runs.invert(source_guide, chunk, settings.inversion, end - start if end - start > 1 else None)
        result = edit_runs.edit(target_guide, source, plan)
        warnings += [w for w in result.warnings if w not in warnings]
        decoded = _vae_batches(vae.decode, result.samples, memory.vae_batch)
        outputs.append((start, decoded.reshape(-1, *decoded.shape[-3:]).cpu()))
    return crossfade(outputs, n).clamp(0, 1), warnings
