"""The bridge between ComfyUI's KSAMPLER protocol and :mod:`contextdiff.sampling`.

ComfyUI calls ``sampler_function(model_k, noise, sigmas, extra_args, callback, disable, **opts)``
with ``model_k.inner_model`` the guider (CFGGuider or any other), whose processed conditionings
hold the positive text tokens the adapter needs. Nothing here patches the user's model.
"""

from __future__ import annotations

import comfy.model_sampling
import comfy.samplers
import torch

from ..contextdiff import sampling
from ..contextdiff.bias import adapter_bias

METHODS = ("ddim", "ddpm")
INVERT = "invert"


def positive_tokens(guider) -> torch.Tensor:
    """The cross-attention tokens of the guider's positive conditioning (its first entry)."""
    conds = getattr(guider, "conds", None) or getattr(guider, "original_conds", {})
    entries = conds.get("positive") or next(iter(conds.values()), None)
    if not entries:
        raise ValueError("ContextDiff needs a positive conditioning to compute the context bias; connect one to the guider.")
    first = entries[0]
    tokens = first.get("cross_attn")
    if tokens is None and "model_conds" in first and "c_crossattn" in first["model_conds"]:
        tokens = first["model_conds"]["c_crossattn"].cond
    if tokens is None:
        raise ValueError("the positive conditioning carries no text tokens (cross_attn); ContextDiff adapters need "
                         "a text-conditioned model such as SD1.x, SD2.x or SDXL.")
    return tokens


def require_vp(model_sampling) -> None:
    """ContextDiff's equations are written for variance-preserving (DDPM-family) models."""
    if isinstance(model_sampling, comfy.model_sampling.CONST) or not hasattr(model_sampling, "timestep"):
        raise ValueError("ContextDiff samplers need a variance-preserving model (SD1.x, SD2.x, SDXL: eps or "
                         "v-prediction); this model uses flow matching, for which the paper's equations do not hold.")


def contextdiff_sample(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                       adapter=None, method: str = "ddim", eta: float = 0.0, strength: float = 1.0,
                       frames: int | None = None, post_step=None, trajectory=None, refine_steps: int = 0):
    """KSAMPLER function: contextualized DDIM/DDPM with the adapter's bias from the positive prompt.

    ``method="invert"`` runs bias-aware DDIM inversion over ascending sigmas instead;
    ``trajectory(info)`` then sees every inverted level, and ``post_step`` adjusts DDIM steps.
    """
    guider = model.inner_model
    model_sampling = guider.inner_model.model_sampling
    require_vp(model_sampling)
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError("the input latent contains NaN or infinity; a VAE overflowing in fp16 is the usual "
                                 "cause (black images): encode with ComfyUI's --fp32-vae, or check the latent's source")
    bias = None
    if adapter is not None and strength != 0:
        tokens = positive_tokens(guider)
        if not bool(torch.isfinite(tokens).all()):
            raise FloatingPointError("the positive conditioning contains NaN or infinity; re-encode the prompt "
                                     "(a text encoder overflowing in fp16 is the usual cause: try --fp32-text-enc)")
        adapter.check_compatible(tokens.shape[-1], x.shape[1])
        bias = adapter_bias(adapter.on(x.device), tokens, model_sampling.timestep,
                            float(model_sampling.sigma_max), strength, frames=frames)
    if method == "ddim":
        return sampling.sample_contextdiff_ddim(model, x, sigmas, extra_args, callback, disable, eta=eta, bias=bias,
                                                post_step=post_step)
    if method == INVERT:
        def report(info):
            if trajectory is not None:
                trajectory(info)
            if callback is not None:
                callback(info)
        if trajectory is not None:
            trajectory({"x": x, "i": -1, "sigma": sigmas[0], "denoised": x})
        return sampling.invert_ddim(model, x, sigmas, extra_args, report, disable, bias=bias,
                                    refine_steps=refine_steps, final_eval=True)
    if method == "ddpm":
        return sampling.sample_contextdiff_ddpm(model, x, sigmas, extra_args, callback, disable, bias=bias)
    raise ValueError(f"unknown ContextDiff method {method!r}; choose one of {METHODS}")


def contextdiff_ksampler(adapter=None, method: str = "ddim", eta: float = 0.0, strength: float = 1.0,
                         frames: int | None = None, **options) -> comfy.samplers.KSAMPLER:
    """A SAMPLER object for SamplerCustom / SamplerCustomAdvanced / our KSampler node.

    ``options`` pass through to :func:`contextdiff_sample` (editing: post_step, trajectory, ...).
    """
    if method not in METHODS + (INVERT,):
        raise ValueError(f"unknown ContextDiff method {method!r}; choose one of {METHODS}")
    options = dict(options, adapter=adapter, method=method, eta=eta, strength=strength, frames=frames)
    # Same inpainting noise as ComfyUI's own ddim, so masked sampling matches it too.
    return comfy.samplers.KSAMPLER(contextdiff_sample, extra_options=options,
                                   inpaint_options={"random": method == "ddim"})
