"""ContextDiffKSampler (all-in-one) and ContextDiffSampler (a SAMPLER for SamplerCustom)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from . import inputs
from .pack_node import PackNode
from .sampler_function import METHODS, contextdiff_ksampler

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

    from .types import LoadedAdapter

METHOD_TIP = (
    "ddim: deterministic contextualized DDIM (paper Eq. 11; Eq. 18 with eta > 0); on increasing sigmas "
    "(FlipSigmas) it unsamples, like core ddim. On a flow-matching model (SD3, Flux, Wan) it is ComfyUI's euler "
    "plus the bias, eta 0 only. ddpm: ancestral sampling with the contextualized posterior (Eq. 7; VP models only)."
)


ETA_TIP = "DDIM stochasticity (ddim only): 0 deterministic, 1 the DDPM posterior variance."
SEED_TIP = "Seed of the initial noise (and of DDPM's per-step noise)."
STEPS_TIP = "Sampling steps: one denoiser evaluation each."
CFG_TIP = "Classifier-free guidance scale."
SCHEDULER_TIP = "Any ComfyUI scheduler: the equations are exact for skipped-step schedules."
DENOISE_TIP = (
    "Below 1 starts from the input latent part-way (img2img); the bias of the starting step is carried like any other."
)


def _method_inputs():
    return [
        io.Combo.Input("method", options=list(METHODS), default="ddim", tooltip=METHOD_TIP),
        io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01, round=False, tooltip=ETA_TIP),
        inputs.adapter_strength(),
    ]


class ContextDiffKSampler(PackNode, display="ContextDiff KSampler", category="sampling/contextdiff"):
    """Samples with ContextDiff: DDIM or DDPM whose trajectory is shifted by the cross-modal context bias of an
    adapter, computed from the positive prompt at every step. Works with LoRA-patched models and ControlNet
    conditioning like the core KSampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="SD1.x, SD2.x, SDXL (eps or v) or a flow-matching model: SD3/SD3.5, Flux, Wan 2.x "
                    "(ddim, eta 0).",
                ),
                io.Conditioning.Input("positive", tooltip="What to generate; also the text the adapter reads."),
                io.Conditioning.Input("negative", tooltip="What to avoid (classifier-free guidance)."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (empty latent for text-to-image)."),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=SEED_TIP
                ),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip=STEPS_TIP),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=CFG_TIP),
                io.Combo.Input(
                    "scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="normal", tooltip=SCHEDULER_TIP
                ),
                *_method_inputs(),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=DENOISE_TIP),
                inputs.adapter(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(
        cls,
        model: ModelPatcher,
        positive: list,
        negative: list,
        latent_image: dict,
        seed: int,
        steps: int,
        cfg: float,
        scheduler: str,
        method: str,
        eta: float,
        adapter_strength: float,
        denoise: float,
        adapter: LoadedAdapter | None = None,
    ) -> io.NodeOutput:
        latent = latent_image["samples"]
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        # ComfyUI's own KSampler computes the sigmas (denoise included), so both agree step for step.
        sigmas = comfy.samplers.KSampler(
            model,
            steps=steps,
            device=model.load_device,
            sampler="ddim",
            scheduler=scheduler,
            denoise=denoise,
            model_options=model.model_options,
        ).sigmas
        sampler = contextdiff_ksampler(adapter, method, eta, adapter_strength)
        callback = latent_preview.prepare_callback(model, steps)
        samples = comfy.sample.sample_custom(
            model,
            noise,
            cfg,
            sampler,
            sigmas,
            positive,
            negative,
            latent,
            noise_mask=latent_image.get("noise_mask"),
            callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            seed=seed,
        )
        out = latent_image.copy()
        out["samples"] = samples
        return io.NodeOutput(out)


class ContextDiffSampler(PackNode, display="ContextDiff Sampler", category="sampling/custom_sampling/samplers"):
    """A SAMPLER for SamplerCustom / SamplerCustomAdvanced: contextualized DDIM/DDPM with any sigmas and any guider.
    The bias uses the guider's positive conditioning. The starting latent is taken as ComfyUI noised it (no bias in
    it); to sample an inversion back, use the ContextDiff Edit Sampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            inputs=[*_method_inputs(), inputs.adapter()],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(
        cls, method: str, eta: float, adapter_strength: float, adapter: LoadedAdapter | None = None
    ) -> io.NodeOutput:
        return io.NodeOutput(contextdiff_ksampler(adapter, method, eta, adapter_strength))
