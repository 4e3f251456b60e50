"""ContextDiffDDIMInversion and ContextDiffEditSampler: invert an image, then edit it with a new prompt."""

from __future__ import annotations

import comfy.samplers
import torch
from comfy_api.latest import io

from . import edit_runtime
from .types import Adapter, EditSource

CFG_INVERSION_TIP = ("Guidance during inversion. Keep 1.0: DDIM inversion follows the conditional ODE, and "
                     "guidance > 1 amplifies the inversion error at every step, so the reconstruction drifts.")
FUSE_TIP = ("Fraction of the schedule, from the noisy end, whose attention is fused: t in [fuse_start*T, T] "
            "(paper: 0.5). Lower keeps more of the source's structure.")


class ContextDiffDDIMInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextDiffDDIMInversion",
            display_name="ContextDiff DDIM Inversion",
            category="sampling/contextdiff/editing",
            description="Bias-aware DDIM inversion: runs the contextualized DDIM step (Eq. 11) backwards so that "
                        "sampling with the same adapter returns the input, and records the source attention "
                        "for editing (queries and keys of the fused steps, not full maps).",
            inputs=[
                io.Model.Input("model"),
                io.Latent.Input("latent", tooltip="The encoded image (or a batch of video frames)."),
                io.Conditioning.Input("positive", tooltip="The source prompt: what the image shows."),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="DDIM steps (paper: 20)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="ddim_uniform"),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01, tooltip=CFG_INVERSION_TIP),
                io.Float.Input("fuse_start", default=0.5, min=0.0, max=1.0, step=0.05, tooltip=FUSE_TIP),
                io.Int.Input("refine_steps", default=0, min=0, max=50,
                             tooltip="Fixed-point refinements per step: each one more model call, making "
                                     "inversion the exact inverse of sampling (0 = classic DDIM inversion)."),
                io.Combo.Input("store_precision", options=["fp16", "fp32"], default="fp16",
                               tooltip="Precision of the stored queries/keys (kept on the CPU)."),
                io.Float.Input("adapter_strength", default=1.0, min=-10.0, max=10.0, step=0.05),
                Adapter.Input("adapter", optional=True),
                io.Conditioning.Input("negative", optional=True, tooltip="Only used when cfg != 1."),
            ],
            outputs=[io.Latent.Output(display_name="noise"), EditSource.Output(display_name="edit_source")],
        )

    @classmethod
    def execute(cls, model, latent, positive, steps, scheduler, cfg, fuse_start, refine_steps, store_precision,
                adapter_strength, adapter=None, negative=None) -> io.NodeOutput:
        source = edit_runtime.invert(model, latent, positive, negative, steps, scheduler, cfg, adapter,
                                     adapter_strength, refine_steps, fuse_start,
                                     torch.float16 if store_precision == "fp16" else torch.float32)
        return io.NodeOutput({"samples": source.noise}, source)


class ContextDiffEditSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextDiffEditSampler",
            display_name="ContextDiff Edit Sampler",
            category="sampling/contextdiff/editing",
            description="Samples from an inversion with the target prompt while fusing the source attention "
                        "(FateZero, as the paper uses it): source self-attention, source cross-attention for the "
                        "words both prompts share, and a blend mask from the edited words that keeps the rest "
                        "of the image on the source trajectory. Target = source reproduces the reconstruction.",
            inputs=[
                io.Model.Input("model"),
                EditSource.Input("edit_source"),
                io.Conditioning.Input("positive", tooltip="The target prompt's conditioning."),
                io.Conditioning.Input("negative"),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1, round=0.01),
                io.String.Input("source_prompt", multiline=True, default=""),
                io.String.Input("target_prompt", multiline=True, default=""),
                io.String.Input("blend_words", default="", tooltip="Words whose cross-attention marks the edited "
                                "region (e.g. 'cat, dog'); empty = no local blend."),
                io.Float.Input("blend_threshold", default=0.3, min=0.0, max=1.0, step=0.01),
                io.Boolean.Input("fuse_attention", default=True,
                                 tooltip="Off: plain contextualized DDIM from the inverted noise (a reconstruction "
                                         "check when the prompts are equal)."),
                io.Float.Input("adapter_strength", default=1.0, min=-10.0, max=10.0, step=0.05),
                Adapter.Input("adapter", optional=True),
                io.Clip.Input("clip", optional=True, tooltip="Tokenises the two prompts to align their shared words "
                              "and find the blend words; without it only self-attention is fused."),
            ],
            outputs=[io.Latent.Output(), io.Mask.Output(display_name="blend_mask",
                                                         tooltip="Where the edit was allowed (image size).")],
        )

    @classmethod
    def execute(cls, model, edit_source, positive, negative, cfg, source_prompt, target_prompt, blend_words,
                blend_threshold, fuse_attention, adapter_strength, adapter=None, clip=None) -> io.NodeOutput:
        samples, mask = edit_runtime.edit(model, edit_source, positive, negative, cfg, adapter, adapter_strength, clip,
                                          source_prompt, target_prompt, blend_words, blend_threshold, fuse_attention)
        return io.NodeOutput({"samples": samples}, edit_runtime.mask_image(mask, samples))
