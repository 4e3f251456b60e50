"""Inversion and editing runs on ComfyUI models: plan the edit, patch a clone, call the sampler.

``invert`` records the source (its attention and trajectory) during bias-aware DDIM inversion;
``plan_edit`` checks the edit inputs before anything is computed; ``edit`` samples from the
inverted noise with the target prompt while fusing. What is stored: :mod:`contextdiff.attention_store`;
how it is fused: :mod:`contextdiff.attention_fusion`; the blend mask: :mod:`contextdiff.blend_mask`.
"""

from __future__ import annotations

import functools
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
from .attention_patch import attention_blocks, editor_layers, patched  # noqa: F401 (attention_blocks: used through this module)
from .dit_attention import dit_family
from .model_identity import edit_identity
from .prompt_tokens import joint_prompt_tokens, prompt_tokens, token_count
from .sampler_function import contextdiff_ksampler, inversion_ksampler
from .source_branch import with_source_branch
from .wan_attention import is_wan

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP, VAE

    from .types import LoadedAdapter


class EditResult(NamedTuple):
    samples: torch.Tensor
    mask: torch.Tensor | None  # latent size, 1 = edited; None without blend words
    warnings: list[str]


def require_editable(model: ModelPatcher, settings: EditSettings | None = None) -> None:
    """What the edit nodes cannot do on ``model`` refused by name, before anything runs: every model inverts and
    samples its inverted noise; attention fusion and blend words (``settings``) where :func:`fuses_attention`."""
    fuse, words = (settings.fuse, settings.blend_words) if settings is not None else (False, "")
    families.require_editable(model.get_model_object("model_sampling"), fuse, words, fuses_attention(model))


def require_video_edit(model: ModelPatcher) -> None:
    """The Video Edit always fuses attention: refused by name where it does not fuse the model's: it runs on UNet
    models (sparse-causal frames) and on Wan 2.x t2v, a native video model (docs/design.md 1.3), not on the image
    DiTs (SD3, Flux), whose frames it would have to rewire."""
    families.require_fusion(
        families.fuses_attention(model.get_model_object("model_sampling")) or is_wan(model.model.diffusion_model),
        "the Video Edit (it fuses attention in every chunk) needs",
        "invert the video latent with ContextDiff DDIM Inversion and sample its noise with the ContextDiff Edit "
        "Sampler (fuse_attention off), or generate with the ContextDiff KSampler",
    )


def fuses_attention(model: ModelPatcher) -> bool:
    """Whether the Edit Sampler fuses ``model``'s attention, so that an inversion on it records it: UNet models, the
    DiT families whose joint attention the editor covers (SD3, Flux: :func:`nodes.dit_attention.dit_family`) and Wan
    2.x t2v's self- and cross-attention over a video latent (docs/design.md 1.3)."""
    diffusion_model = model.model.diffusion_model
    return (
        families.fuses_attention(model.get_model_object("model_sampling"))
        or dit_family(diffusion_model) is not None
        or is_wan(diffusion_model)
    )


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
        patched(model, editor, tuple(latent.shape[2:])),
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
    """The factor ComfyUI's KSAMPLER puts on unit noise at ``sigma`` over an empty latent (its model_sampling's own
    ``noise_scaling``, with ``KSAMPLER.max_denoise``'s rule), so that the edit sampler starts from exactly the
    inverted latent: VP ``sqrt(1 + sigma^2)`` at sigma_max, else ``sigma``; flow matching ``sigma`` (1 at the top)."""
    ms = model.get_model_object("model_sampling")
    sigma_max = float(ms.sigma_max)
    at_max = math.isclose(sigma_max, float(sigma), rel_tol=1e-05) or float(sigma) > sigma_max
    unit = torch.ones(1, dtype=torch.float64)
    return ms.noise_scaling(sigma.reshape(1).double(), unit, torch.zeros_like(unit), at_max).reshape(())


def invert(
    guide: Guide,
    latent: dict,
    settings: InversionSettings,
    frames: int | None = None,
    record: bool | None = None,
    recompute: bool = False,
) -> Inversion:
    """Bias-aware DDIM inversion of ``latent`` (``guide``: the source prompt) to the top of the schedule, with the
    source attention recorded where the model's attention is fused (``record``; ``None``: :func:`fuses_attention`,
    on a flow model the store stays empty; the Video Edit records Wan's); ``frames`` > 1 attend to each other
    (sparse-causal, a UNet's video chunk). ``recompute``: record nothing but the trajectory and the source prompt,
    from which the edit recomputes the source's attention in its own batch (:mod:`nodes.source_branch`)."""
    model, adapter = guide.model, guide.adapter
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    identity = edit_identity(model, adapter, settings.strength)
    sigmas = schedule(model, settings.scheduler, settings.steps)
    step_of = StepIndex(sigmas)
    store = AttentionStore(
        settings.fused_steps if (fuses_attention(model) if record is None else record) else frozenset(),
        store_maps=settings.store_maps,
        dtype=settings.store_dtype,
        device=comfy.model_management.intermediate_device(),
        source=guide.positive if recompute else None,
    )
    editor = AttentionEditor(store, "plain" if recompute else "record", step_of, frames=frames)
    sampler = inversion_ksampler(
        adapter,
        settings.strength,
        frames,
        refine_steps=settings.refine_steps,
        trajectory=trajectory_recorder(store.latents, step_of),
        on_level=editor.at_level,  # the hooks' step lookup, without reading the device's sigma per call
        on_positive=editor.positive_entries,  # a combined positive: its first entry is recorded
        final_eval=not recompute,  # the top level's source attention is recomputed in the edit's first step
    )
    # InversionKSampler returns x at the top level as the loop leaves it (no division by 1 - sigma on flow models).
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


def plan_edit(
    settings: EditSettings, inversion: InversionSettings, clip: CLIP | None = None, model: ModelPatcher | None = None
) -> EditPlan:
    """What the edit will fuse, checked before any computation (see :func:`contextdiff.edit_plan.plan_edit`). The
    words are aligned in the tokens the model's attention sees: a UNet's first CLIP chunk, or a DiT's joint text
    tokens (``model``: Flux's T5 tokens, SD3's CLIP-L/G then T5 tokens)."""
    diffusion_model = model.model.diffusion_model if model is not None else None
    family = None if model is None else dit_family(diffusion_model) or ("wan" if is_wan(diffusion_model) else None)
    tokens = prompt_tokens if family is None else functools.partial(joint_prompt_tokens, family=family)
    return edit_plan.plan_edit(
        settings,
        inversion,
        source=tokens(clip, settings.source_prompt, settings.blend_words),
        target=tokens(clip, settings.target_prompt, settings.blend_words),
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
    if recorded and not recorded <= editor_layers(model):
        raise EditInputError(
            "the edit_source was recorded on another model (its attention layers do not match this "
            "model's): connect the same model to the inversion and the edit sampler"
        )
    identity = edit_identity(model, adapter, strength)
    source.identity.require_match(identity)
    return source.identity.hook_differences(identity)


def check_branch_fits(source: Inversion, positive: list) -> None:
    """Refuse, before any model call, a target prompt whose text tokens the source's branch cannot run beside: the
    branch shares the target's batch (docs/design.md 1.3), so the two conditionings must be as long."""
    theirs, ours = source.store.source[0][0].shape, positive[0][0].shape
    if theirs[1:] != ours[1:]:
        raise EditInputError(
            f"the edit_source recomputes the source's attention beside the target's (no store fitted), which needs "
            f"the two prompts' conditionings as long, but the source's is {tuple(theirs[1:])} and the target's "
            f"{tuple(ours[1:])}: shorten the longer prompt, or invert with more memory free so that the store fits"
        )


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
    branch = None
    if plan.fuse and source.store.recompute:  # no store: the source's rows run beside the target's
        check_branch_fits(source, guide.positive)
        model, branch = with_source_branch(model, editor)
        guide = guide._replace(model=model)
    zeros = torch.zeros(source.latent_shape)
    out = run_patched(guide, plan.cfg, editor, sampler, source.noise.clone(), zeros, source.sigmas)
    if branch is not None and branch.rows:
        warnings.append(
            f"no attention store fits: the source's branch was recomputed beside the target's in each fused step "
            f"({branch.rows} source rows in all, about one more batch row per fused model call)"
        )
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
    b, (h, w) = samples.shape[0], samples.shape[-2:]  # a video latent (Wan's) has frames before height and width
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
