"""Inversion and editing runs on ComfyUI models: plan the edit, patch a clone, call the sampler.

``invert`` records the source (its attention and trajectory) during bias-aware DDIM inversion;
``plan_edit`` checks the edit inputs before anything is computed; ``edit`` samples from the
inverted noise with the target prompt while fusing. What is stored: :mod:`contextdiff.attention_store`;
how it is fused: :mod:`contextdiff.attention_fusion`; the blend mask: :mod:`contextdiff.blend_mask`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..contextdiff import edit_plan, families
from ..contextdiff.attention_fusion import AttentionEditor
from ..contextdiff.attention_store import AttentionStore
from ..contextdiff.blend_mask import BlendMask, latent_blend
from ..contextdiff.edit_plan import EditInputError, EditPlan
from ..contextdiff.editing import EditSettings, Inversion, InversionSettings, StepIndex, trajectory_recorder
from .attention_patch import attention_blocks, patched
from .model_identity import edit_identity
from .prompt_tokens import prompt_tokens, token_count
from .sampler_function import contextdiff_ksampler, inversion_ksampler

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP, VAE

    from .types import LoadedAdapter


class EditResult(NamedTuple):
    samples: torch.Tensor
    mask: torch.Tensor | None  # latent size, 1 = edited; None without blend words
    warnings: list[str]


def require_editable(model: ModelPatcher) -> None:
    """Editing fuses UNet attention: refused by name on flow-matching models, before anything runs."""
    families.require_editable(model.get_model_object("model_sampling"))


def schedule(model: ModelPatcher, scheduler: str, steps: int) -> torch.Tensor:
    """The descending sigmas of ``scheduler`` for this model, on the CPU."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def _negative_or_empty(positive: list, negative: list | None) -> list:
    if negative is not None:
        return negative
    # As ComfyUI's ConditioningZeroOut: the pooled output zeroed too, not dropped (SDXL's y is built from it).
    return [
        [
            torch.zeros_like(c),
            {k: torch.zeros_like(v) if k == "pooled_output" and v is not None else v for k, v in d.items()},
        ]
        for c, d in positive
    ]


class Guide(NamedTuple):
    """What an inversion or an edit samples with: the user's model, the prompt's conditionings (no negative: the
    positive zeroed out) and the ContextDiff adapter (none: plain DDIM). ComfyUI's guider, less the guidance scale,
    which the inversion's settings and the edit's plan carry."""

    model: ModelPatcher
    positive: list
    negative: list | None = None
    adapter: LoadedAdapter | None = None


def run_patched(
    guide: Guide,
    cfg: float,
    editor: AttentionEditor,
    sampler: comfy.samplers.KSAMPLER,
    noise: torch.Tensor,
    latent: torch.Tensor,
    sigmas: torch.Tensor,
) -> torch.Tensor:
    """ComfyUI's custom sampling of ``latent`` (``noise`` added at ``sigmas[0]``) with ``editor``'s attention hooks
    on a clone of ``model``, a latent preview and the progress bar: what the inversion and the edit share."""
    model, positive = guide.model, guide.positive
    return comfy.sample.sample_custom(
        patched(model, editor),
        noise,
        cfg,
        sampler,
        sigmas,
        positive,
        _negative_or_empty(positive, guide.negative),
        latent,
        callback=latent_preview.prepare_callback(model, len(sigmas) - 1),
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=0,
    )


def noise_scale(model: ModelPatcher, sigma: torch.Tensor) -> torch.Tensor:
    """The factor ComfyUI's KSAMPLER puts on unit noise at ``sigma`` (see ``KSAMPLER.max_denoise``),
    so that the edit sampler starts from exactly the inverted latent."""
    sigma_max = float(model.get_model_object("model_sampling").sigma_max)
    at_max = math.isclose(sigma_max, float(sigma), rel_tol=1e-05) or float(sigma) > sigma_max
    return (1.0 + sigma**2).sqrt() if at_max else sigma


def invert(guide: Guide, latent: dict, settings: InversionSettings, frames: int | None = None) -> Inversion:
    """Bias-aware DDIM inversion of ``latent`` (``guide``: the source prompt) with the source attention recorded;
    ``frames`` > 1 attend to each other (sparse-causal, a video chunk)."""
    model, adapter = guide.model, guide.adapter
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    identity = edit_identity(model, adapter, settings.strength)
    sigmas = schedule(model, settings.scheduler, settings.steps)
    step_of = StepIndex(sigmas)
    store = AttentionStore(
        settings.fused_steps,
        store_maps=settings.store_maps,
        dtype=settings.store_dtype,
        device=comfy.model_management.intermediate_device(),
    )
    editor = AttentionEditor(store, "record", step_of, frames=frames)
    sampler = inversion_ksampler(
        adapter,
        settings.strength,
        frames,
        refine_steps=settings.refine_steps,
        trajectory=trajectory_recorder(store.latents, step_of),
        on_level=editor.at_level,  # the hooks' step lookup, without reading the device's sigma per call
        on_positive=editor.positive_entries,  # a combined positive: its first entry is recorded
    )
    out = run_patched(guide, settings.cfg, editor, sampler, torch.zeros_like(samples), samples, sigmas.flip(0))
    x_top = model.model.process_latent_in(out)  # undo the guider's process_latent_out: this is noise, not an image
    return Inversion(
        noise=(x_top / noise_scale(model, sigmas[0])).cpu(),
        store=store,
        sigmas=sigmas,
        latent_shape=tuple(samples.shape),
        frames=frames,
        settings=settings,
        identity=identity,
    )


def plan_edit(settings: EditSettings, inversion: InversionSettings, clip: CLIP | None = None) -> EditPlan:
    """What the edit will fuse, checked before any computation (see :func:`contextdiff.edit_plan.plan_edit`)."""
    return edit_plan.plan_edit(
        settings,
        inversion,
        source=prompt_tokens(clip, settings.source_prompt, settings.blend_words),
        target=prompt_tokens(clip, settings.target_prompt, settings.blend_words),
        has_clip=clip is not None,
    )


def check_source_fits(
    model: ModelPatcher, source: Inversion, adapter: LoadedAdapter | None, strength: float
) -> list[str]:
    """Refuse an edit source made by another model, adapter or strength than this edit's, naming the difference;
    the warnings on sampling hooks (FreeU, ...) that only one of the two models has."""
    channels = model.model.latent_format.latent_channels
    if len(source.latent_shape) < 2 or source.latent_shape[1] != channels:
        raise EditInputError(
            f"the edit_source was inverted from {source.latent_shape[1]}-channel latents but this "
            f"model uses {channels}: connect the same model to the inversion and the edit sampler"
        )
    recorded = source.store.layers()
    if recorded and not recorded <= {key for key, _ in attention_blocks(model.model.diffusion_model)}:
        raise EditInputError(
            "the edit_source was recorded on another model (its attention layers do not match this "
            "model's): connect the same model to the inversion and the edit sampler"
        )
    identity = edit_identity(model, adapter, strength)
    source.identity.require_match(identity)
    return source.identity.hook_differences(identity)


def edit(guide: Guide, source: Inversion, plan: EditPlan, target_entry: int | None = None) -> EditResult:
    """Sample from the inverted noise with the target prompt (``guide``), fusing the source attention as ``plan``
    says (with its guidance and adapter strength). ``target_entry``: the entry of a positive of several whose text
    is the typed target prompt (see :class:`AttentionEditor`); ``None`` with one entry."""
    model, adapter = guide.model, guide.adapter
    warnings = [*plan.warnings, *check_source_fits(model, source, adapter, plan.strength)]
    step_of = StepIndex(source.sigmas)
    blend = BlendMask(plan.blend_target, plan.blend_source, plan.blend_threshold) if plan.fuse else None
    editor = AttentionEditor(
        source.store,
        "fuse" if plan.fuse else "plain",
        step_of,
        frames=source.frames,
        shared_tokens=plan.shared_tokens,
        blend=blend,
        target_entry=target_entry,
    )
    post = latent_blend(blend, source.store.latents, step_of) if blend is not None and blend.active else None
    hooks = dict(post_step=post, start_has_bias=True, on_level=editor.at_level, on_positive=editor.positive_entries)
    sampler = contextdiff_ksampler(adapter, "ddim", 0.0, plan.strength, source.frames, **hooks)
    zeros = torch.zeros(source.latent_shape)
    out = run_patched(guide, plan.cfg, editor, sampler, source.noise.clone(), zeros, source.sigmas)
    if plan.fuse:
        warnings += fusion_report(editor, len(guide.positive), target_entry)
    mask = blend.mask(tuple(source.latent_shape[-2:])) if post is not None else None
    if post is not None and mask is None:
        warnings.append("no cross-attention map of the blend words was collected: the edit is not masked")
    return EditResult(out, mask, warnings)


def fusion_report(editor: AttentionEditor, entries: int, target_entry: int | None) -> list[str]:
    """What the edit fused, said exactly where it is not the whole edit: attention calls of the fused steps that
    found no recording of the source, and how a positive of several entries was fused."""
    notes = []
    calls = editor.fused + editor.missing
    if not calls:
        notes.append(
            "no attention layer was fused (the sampling steps did not meet the inversion's schedule): "
            "the result is a plain edit"
        )
    elif editor.missing:
        partly = "the edit is fused only in part" if editor.fused else "nothing was fused: the result is a plain edit"
        notes.append(
            f"{editor.missing} of {calls} fused attention calls found no recording of the source (a positive "
            f"conditioning with another batch than the inversion's): {partly}"
        )
    if entries > 1 and editor.self_fused:
        if editor.cross_skipped:
            words = "into none (no entry's text is target_prompt)"
        elif target_entry is not None and (len(editor.shared_tgt) or editor.blend is not None):
            words = f"into entry {target_entry + 1} alone, the one whose text is target_prompt"
        else:
            words = ""
        words = f"; the shared words' cross-attention and the blend words {words}" if words else ""
        notes.append(
            f"the positive combines {entries} conditionings (ConditioningCombine): the source's self-attention was "
            f"fused into each ({editor.entry_calls} entry chunks in {editor.self_fused} self-attention calls){words}"
        )
    return notes


def concatenation_note(clip: CLIP | None, positive: list, target_prompt: str) -> list[str]:
    """What an edit does with a positive longer than its text makes (ConditioningConcat puts a second
    conditioning's tokens after the first's): the words are aligned in the first part, the typed text's."""
    if clip is None or not target_prompt.strip() or not positive:
        return []
    tokens, own = int(positive[0][0].shape[1]), token_count(clip, target_prompt)
    if tokens <= own:
        return []
    return [
        f"the positive has {tokens} tokens, {tokens - own} more than target_prompt makes (a ConditioningConcat): "
        f"the shared words and the blend words are those of its first {own} tokens, target_prompt's; the "
        "concatenated tokens keep their own cross-attention"
    ]


def mask_image(mask: torch.Tensor | None, samples: torch.Tensor, ratio: int) -> torch.Tensor:
    """A latent-size mask as a ComfyUI MASK at image size (``ratio`` x); all ones when nothing was masked."""
    b, _, h, w = samples.shape
    if mask is None:
        return torch.ones(b, h * ratio, w * ratio)
    up = torch.nn.functional.interpolate(mask.float().cpu(), scale_factor=ratio, mode="nearest")[:, 0]
    return up.expand(b, -1, -1) if up.shape[0] == 1 else up


def pixel_ratio(model: ModelPatcher, vae: VAE | None = None) -> int:
    """Image pixels per latent pixel: the VAE's, else the model's latent format's (newer ComfyUI
    declares ``spacial_downscale_ratio``; 8, its default, for the SD family; 1 for pixel-space models)."""
    if vae is not None:
        return int(vae.spacial_compression_decode())
    return int(getattr(model.model.latent_format, "spacial_downscale_ratio", 8))
