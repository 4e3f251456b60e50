"""ContextDiffDDIMInversion and ContextDiffEditSampler: invert an image, then edit it with a new prompt."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import comfy.samplers
from comfy_api.latest import io, ui

from ..contextdiff.editing import EditSettings, Inversion, InversionSettings
from . import edit_graph, edit_runs, inputs, store_budget
from .pack_node import PackNode
from .types import EditSource

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP, VAE

    from .types import LoadedAdapter

CFG_INVERSION_TIP = (
    "Guidance during inversion. Keep 1.0: DDIM inversion follows the conditional ODE, and "
    "guidance > 1 amplifies the inversion error at every step, so the reconstruction drifts."
)
STEPS_TIP = "DDIM steps (paper: 20). The edit sampler runs the same schedule."
SCHEDULER_TIP = "Sigma schedule of the inversion and of the edit (ddim_uniform: DDIM's evenly spaced timesteps)."
REFINE_STEPS_TIP = (
    "Refinements per step, each one more model call at most: each step is solved so that "
    "sampling takes it back exactly (stops early at float precision; 0 = classic DDIM inversion). "
    "Exact to 1e-4 for a Gaussian model on every scheduler at 10-50 steps with 3-14 refinements "
    "(up to ~50 where a schedule jumps from sigma 0 to sigma > 1, e.g. linear_quadratic at 10 "
    "steps); with a real model, where the model is smooth enough."
)
STORE_PRECISION_TIP = "Precision of the stored queries/keys (kept on the CPU)."
EDIT_SOURCE_TIP = "From ContextDiff DDIM Inversion: the inverted noise, the recorded source attention and trajectory."
SOURCE_PROMPT_TIP = (
    "The source prompt's text, as typed in its CLIP encoder: aligns the words "
    "both prompts share and finds the blend words."
)
TARGET_PROMPT_TIP = "The target prompt's text, as typed in its CLIP encoder."
FUSE_ATTENTION_TIP = (
    "Off: plain contextualized DDIM from the inverted noise (a reconstruction check when the prompts are equal). "
    "Fuses UNet attention, SD3's and Flux's joint attention, and Wan's self- and cross-attention over a video latent."
)
CLIP_TIP = (
    "Tokenises the two prompts to align their shared words "
    "and find the blend words; without it only self-attention is fused."
)
VAE_TIP = (
    "The VAE of the image: sizes the blend_mask output "
    "(without it, the model's latent format says how many pixels a latent pixel covers)."
)


def flow_note(top: float) -> str:
    """What an inversion on a model whose attention the Edit Sampler does not fuse (a flow model other than SD3, Flux
    and Wan 2.x t2v) hands over (its top sigma: 1 on every scheduler but ddim_uniform)."""
    return (
        f"a model whose attention the Edit Sampler does not fuse: inverted to sigma {top:.4g}, no attention "
        "recorded; sample the noise with the ContextDiff Edit Sampler, fuse_attention off and no blend_words"
    )


def report(node: str, warnings: list[str], notes: list[str] = ()) -> ui.PreviewText | None:
    """Notes and warnings as the node's UI text (and the log); ``None`` when there are none."""
    for w in warnings:
        logging.warning("%s: %s", node, w)
    lines = [f"note: {n}" for n in notes] + [f"warning: {w}" for w in warnings]
    return ui.PreviewText("\n".join(lines)) if lines else None


class ContextDiffDDIMInversion(PackNode, display="ContextDiff DDIM Inversion", category="sampling/contextdiff/editing"):
    """Bias-aware DDIM inversion: runs the contextualized DDIM step (Eq. 11) backwards so that sampling with the same
    adapter returns the input, and records the source attention for editing (queries and keys of the fused steps,
    not full maps). On flow-matching models (SD3, Flux, Wan) it inverts to sigma 1, the pure-noise end; it records
    SD3's and Flux's joint attention and Wan's video attention (where Wan's store would not fit, only the trajectory:
    the Edit Sampler then recomputes the source's branch)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            inputs=[
                inputs.edit_model(),
                io.Latent.Input("latent", tooltip="The encoded image (or a batch of video frames)."),
                io.Conditioning.Input("positive", tooltip="The source prompt: what the image shows."),
                inputs.edit_steps(1000, STEPS_TIP),
                io.Combo.Input(
                    "scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="ddim_uniform", tooltip=SCHEDULER_TIP
                ),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01, tooltip=CFG_INVERSION_TIP),
                inputs.fuse_start(),
                io.Int.Input("refine_steps", default=0, min=0, max=50, tooltip=REFINE_STEPS_TIP),
                io.Combo.Input(
                    "store_precision", options=["fp16", "fp32"], default="fp16", tooltip=STORE_PRECISION_TIP
                ),
                inputs.adapter_strength(),
                inputs.adapter(),
                io.Conditioning.Input("negative", optional=True, tooltip="Only used when cfg != 1."),
            ],
            outputs=[io.Latent.Output(display_name="noise"), EditSource.Output(display_name="edit_source")],
            # The graph says what the Edit Samplers fed by this node will do: checked before inverting.
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls,
        model: ModelPatcher,
        latent: dict,
        positive: list,
        adapter: LoadedAdapter | None = None,
        negative: list | None = None,
        **widgets: object,
    ) -> io.NodeOutput:
        edit_runs.require_editable(model)
        settings = InversionSettings.from_inputs(widgets)
        edit_graph.check_before_inverting(cls.hidden.prompt, cls.hidden.unique_id, settings, model)
        records = edit_runs.fuses_attention(model)
        recompute = records and store_budget.check_inversion_fits(
            model, tuple(latent["samples"].shape), settings, text_tokens=int(positive[0][0].shape[1])
        )
        warnings = []
        if recompute and len(positive) > 1:
            raise ValueError(
                f"the attention store of this inversion would not fit in half the free memory, so the Edit Sampler "
                f"will recompute the source's branch from the source prompt, but the positive combines {len(positive)} "
                "conditionings: invert with one (or free memory so that the store fits)"
            )
        if recompute:
            warnings.append(
                "the attention store of this inversion would not fit in half the free memory: nothing is recorded but "
                "the trajectory, and the Edit Sampler recomputes the source's branch beside the target's in each "
                "fused step (about one more batch row per fused model call)"
            )
        if negative is not None and settings.cfg == 1.0:
            warnings.append("the negative is not used at cfg 1 (inversion follows the positive alone)")
        if len(positive) > 1:
            warnings.append(
                f"the positive combines {len(positive)} conditionings (ConditioningCombine): the inversion follows "
                "their average, and the source attention is recorded from the first (type its text as the Edit "
                "Sampler's source_prompt)"
            )
        guide = edit_runs.Guide(model, positive, negative, adapter)
        source = edit_runs.invert(guide, latent, settings, recompute=recompute)
        notes = [] if records else [flow_note(float(source.sigmas[0]))]
        return io.NodeOutput(
            {"samples": source.noise}, source, ui=report("ContextDiff DDIM Inversion", warnings, notes)
        )


class ContextDiffEditSampler(PackNode, display="ContextDiff Edit Sampler", category="sampling/contextdiff/editing"):
    """Samples from an inversion with the target prompt while fusing the source attention (FateZero, as the paper uses
    it): source self-attention, source cross-attention for the words both prompts share, and a blend mask from the
    edited words that keeps the rest of the image on the source trajectory. Target = source reproduces the
    reconstruction. Inputs that switch part of this off are reported in the node's text."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            inputs=[
                inputs.edit_model(),
                EditSource.Input("edit_source", tooltip=EDIT_SOURCE_TIP),
                io.Conditioning.Input("positive", tooltip="The target prompt's conditioning."),
                io.Conditioning.Input("negative", tooltip="The negative prompt's conditioning (for cfg)."),
                inputs.edit_cfg(),
                io.String.Input("source_prompt", multiline=True, default="", tooltip=SOURCE_PROMPT_TIP),
                io.String.Input("target_prompt", multiline=True, default="", tooltip=TARGET_PROMPT_TIP),
                inputs.blend_words(),
                inputs.blend_threshold(),
                io.Boolean.Input("fuse_attention", default=True, tooltip=FUSE_ATTENTION_TIP),
                inputs.adapter_strength(),
                inputs.adapter(),
                inputs.clip(CLIP_TIP, optional=True),
                inputs.vae(VAE_TIP, optional=True),
            ],
            outputs=[
                io.Latent.Output(tooltip="The edited latent."),
                io.Mask.Output(display_name="blend_mask", tooltip="Where the edit was allowed (image size)."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],  # to compare the typed prompts with the encoded ones
        )

    @classmethod
    def execute(
        cls,
        model: ModelPatcher,
        edit_source: Inversion,
        positive: list,
        negative: list,
        adapter: LoadedAdapter | None = None,
        clip: CLIP | None = None,
        vae: VAE | None = None,
        **widgets: object,
    ) -> io.NodeOutput:
        settings = EditSettings.from_inputs(widgets)
        edit_runs.require_editable(model, settings)
        prompt = cls.hidden.prompt
        texts = edit_graph.check_edit_texts(prompt, edit_graph.node_inputs(prompt, cls.hidden.unique_id), settings)
        plan = edit_runs.plan_edit(settings, edit_source.settings, clip, model=model)
        # The graph's entries are the conditioning's when it counts as many (else which one is the target's is open).
        target = texts.target_entry if texts.entries == len(positive) else None
        result = edit_runs.edit(edit_runs.Guide(model, positive, negative, adapter), edit_source, plan, target)
        mask = edit_runs.mask_image(result.mask, result.samples, edit_runs.pixel_ratio(model, vae))
        warnings = texts.notes + edit_runs.concatenation_note(clip, positive, settings.target_prompt) + result.warnings
        return io.NodeOutput({"samples": result.samples}, mask, ui=report("ContextDiff Edit Sampler", warnings))
