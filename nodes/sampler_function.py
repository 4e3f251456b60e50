"""The bridge between ComfyUI's KSAMPLER protocol and :mod:`contextdiff.sampling` / :mod:`contextdiff.inversion`.

ComfyUI calls ``sampler_function(model_k, noise, sigmas, extra_args, callback, disable, **opts)``
with ``model_k.inner_model`` the guider (CFGGuider or any other), whose processed conditionings
hold the positive text tokens the adapter needs. Two factories: :func:`contextdiff_ksampler`
(DDIM/DDPM sampling, unsampling on increasing sigmas with DDIM) and :func:`inversion_ksampler`
(the exact bias-aware inversion of the editing nodes). Nothing here patches the user's model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import comfy.k_diffusion.sampling
import comfy.samplers
import torch

from ..contextdiff import families, inversion, sampling
from ..contextdiff.bias import ContextBias, adapter_bias, finite_strength
from ..contextdiff.sampling import Callback, LevelHook, PostStep
from ..contextdiff.schedule import FLOW, NoiseProcess
from ..hostside.families import identify
from . import interrupt

if TYPE_CHECKING:
    from comfy.model_base import BaseModel

    from .types import LoadedAdapter

# ComfyUI's KSAMPLER calls ``sampler_function(model_k, ...)`` with ``model_k`` its KSamplerX0Inpaint wrapper, whose
# ``inner_model`` is the guider (CFGGuider or another).
WrappedModel = Any

METHODS = ("ddim", "ddpm")


def positive_entries(guider: comfy.samplers.CFGGuider) -> list[dict]:
    """The entries of the guider's positive conditioning as it samples them (several after ConditioningCombine)."""
    conds = getattr(guider, "conds", None) or getattr(guider, "original_conds", {})
    return conds.get("positive") or next(iter(conds.values()), None) or []


def positive_tokens(guider: comfy.samplers.CFGGuider) -> torch.Tensor:
    """The cross-attention tokens of the guider's positive conditioning (its first entry)."""
    entries = positive_entries(guider)
    if not entries:
        raise ValueError(
            "ContextDiff needs a positive conditioning to compute the context bias; connect one to the guider."
        )
    first = entries[0]
    tokens = first.get("cross_attn")
    if tokens is None and "model_conds" in first and "c_crossattn" in first["model_conds"]:
        tokens = first["model_conds"]["c_crossattn"].cond
    if tokens is None:
        raise ValueError(
            "the positive conditioning carries no text tokens (cross_attn); ContextDiff adapters need "
            "a text-conditioned model such as SD1.x, SD2.x, SDXL, SD3, Flux or Wan."
        )
    return tokens


def nan_cause(base_model: BaseModel) -> str:
    """What a NaN prediction most likely means for a model computing in its dtype."""
    dtype = getattr(base_model, "manual_cast_dtype", None) or base_model.get_dtype()
    if dtype == torch.float16:
        return sampling.MODEL_CAUSE
    return (
        f"the model computes in {str(dtype).removeprefix('torch.')}, so this is no fp16 overflow: its weights, a "
        "patch on it (LoRA, ControlNet, another pack's) or its conditioning produce NaN; remove them one by one "
        "to find which"
    )


class Prepared(NamedTuple):
    """What :func:`prepare` found: the bias (None without an adapter), the NaN cause, the model's process."""

    bias: ContextBias | None
    cause: str
    process: NoiseProcess


def prepare(
    model: WrappedModel,
    x: torch.Tensor,
    adapter: LoadedAdapter | None,
    strength: float,
    frames: int | None,
    method: str = "ddim",
    eta: float = 0.0,
) -> Prepared:
    """Checks shared by sampling and inversion, then the bias and the model's process; before any model call.

    :mod:`contextdiff.families` decides the process (VP for eps/v models, flow matching for CONST) and refuses what
    has no counterpart on it (the DDPM posterior on flow models)."""
    guider = model.inner_model
    base_model = guider.inner_model
    ms = base_model.model_sampling
    process = families.require_method(ms, method, eta)
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(
            "the input latent contains NaN or infinity; a VAE overflowing in fp16 is the usual "
            "cause (black images): encode with ComfyUI's --fp32-vae, or check the latent's source"
        )
    if adapter is None or strength == 0:
        return Prepared(None, nan_cause(base_model), process)
    tokens = positive_tokens(guider)
    if not bool(torch.isfinite(tokens).all()):
        raise FloatingPointError(
            "the positive conditioning contains NaN or infinity; re-encode the prompt "
            "(a text encoder overflowing in fp16 is the usual cause: try --fp32-text-enc)"
        )
    family = identify(base_model).family
    adapter.check_compatible(tokens.shape[-1], x.shape[1], family)
    timestep = families.adapter_timestep(ms)
    bias = adapter_bias(
        adapter.on(x.device), tokens, timestep, float(ms.sigma_max), strength, frames=frames, process=process
    )
    return Prepared(bias, nan_cause(base_model), process)


def biased_run(
    model: WrappedModel,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    *,
    loop: Callable[..., torch.Tensor],
    adapter: LoadedAdapter | None = None,
    strength: float = 1.0,
    frames: int | None = None,
    method: str = "ddim",
    eta: float = 0.0,
    host_divides: bool = True,
    **options: Any,
) -> torch.Tensor:
    """KSAMPLER function: the checks and the adapter's bias that sampling and inversion share, then ``loop`` (a
    sampler of :mod:`contextdiff.sampling` or :func:`contextdiff.inversion.invert_ddim`) with ``bias``, ``cause``,
    the model's ``process`` and ``options``; ``method`` and ``eta`` are checked against the model, and a stochastic
    one draws its noise from the host's own noise sampler. ``host_divides``: the SAMPLER ends as ComfyUI's KSAMPLER
    does (``inverse_noise_scaling``, on a flow model a division by ``1 - sigma``), so a run rising to sigma 1 is
    refused; :class:`InversionKSampler` hands the result over as it is (``False``)."""
    ready = prepare(model, x, adapter, strength, frames, method, eta)
    if host_divides and ready.process is FLOW and len(sigmas) > 1 and float(sigmas[-1]) >= 1.0 > float(sigmas[0]):
        # KSAMPLER then applies CONST.inverse_noise_scaling: the result over 1 - sigma = 0.
        raise ValueError(
            "these sigmas rise to 1 on a flow-matching model, where ComfyUI's sampler divides the result by "
            "1 - sigma = 0: end the flipped sigmas below 1 (SplitSigmas at the last step; a sampler with add_noise "
            "off continues from that latent), or invert to sigma 1 with ContextDiff DDIM Inversion and sample its "
            "noise with the ContextDiff Edit Sampler (fuse_attention off)"
        )
    if method == "ddpm" or eta > 0:  # a stochastic loop draws the host's own noise
        options["noise_sampler"] = host_noise_sampler(x, (extra_args or {}).get("seed"))
    on_positive = options.pop("on_positive", None)
    if on_positive is not None:  # the editor tells a combined positive's entries apart by these
        on_positive([entry.get("uuid") for entry in positive_entries(model.inner_model)])
    extra_args = interrupt.checked_extra_args(extra_args)  # Cancel stops the run within one attention call
    with interrupt.checked_adapter(adapter.on(x.device) if ready.bias is not None else None):
        return loop(
            model,
            x,
            sigmas,
            extra_args,
            callback,
            disable,
            bias=ready.bias,
            cause=ready.cause,
            process=ready.process,
            **options,
        )


def host_noise_sampler(x: torch.Tensor, seed: int | None) -> sampling.NoiseSampler:
    """The noise ComfyUI's own ancestral samplers draw for this seed: its ``default_noise_sampler``, whose seeding
    changes between versions (0.8 seeds the CPU generator with ``seed + 1``), so that at strength 0 our DDPM draws
    exactly what core ``ddpm`` draws on every host."""
    return comfy.k_diffusion.sampling.default_noise_sampler(x, seed=seed)


def check_options(strength: float, eta: float = 0.0, method: str = "ddim") -> None:
    """Refuse options no run survives, naming them, when the SAMPLER is built (before any computation)."""
    finite_strength(strength)
    if method not in METHODS:
        raise ValueError(f"unknown ContextDiff method {method!r}; choose one of {METHODS}")
    if not math.isfinite(eta) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta is {eta}; it must be a number in [0, 1] (0 deterministic DDIM, 1 the DDPM variance)")


def contextdiff_ksampler(
    adapter: LoadedAdapter | None = None,
    method: str = "ddim",
    eta: float = 0.0,
    strength: float = 1.0,
    frames: int | None = None,
    post_step: PostStep | None = None,
    start_has_bias: bool = False,
    on_level: LevelHook | None = None,
    on_positive: Callable[[list], None] | None = None,
) -> comfy.samplers.KSAMPLER:
    """A SAMPLER object for SamplerCustom / SamplerCustomAdvanced / our KSampler node.

    ComfyUI noises the start itself (``sigma_0 * noise``, image + noise): it carries no ``b_t``, so the first
    step takes ``b_t = 0`` (``start_has_bias=False``). Sampling from an inversion passes ``True``.
    ``on_positive(uuids)`` is told the uuids ComfyUI gave the positive's entries, before the first model call.
    """
    check_options(strength, eta, method)
    # On increasing sigmas (FlipSigmas) DDIM at eta 0 unsamples, like core ``ddim``; ``post_step`` adjusts DDIM steps
    # (editing's latent blend).
    if method == "ddim":
        loop = functools.partial(sampling.sample_contextdiff_ddim, eta=eta, post_step=post_step)
    else:
        loop = sampling.sample_contextdiff_ddpm
    options = dict(
        loop=loop,
        adapter=adapter,
        strength=strength,
        frames=frames,
        start_has_bias=start_has_bias,
        on_level=on_level,
        method=method,
        eta=eta,
    )
    if on_positive is not None:
        options["on_positive"] = on_positive
    # Same inpainting noise as ComfyUI's own ddim, so masked sampling matches it too.
    return comfy.samplers.KSAMPLER(biased_run, extra_options=options, inpaint_options={"random": method == "ddim"})


class InversionKSampler(comfy.samplers.KSAMPLER):
    """ComfyUI's KSAMPLER for an inversion: it starts from the clean latent as KSAMPLER does, and returns the inverted
    latent as the loop leaves it. KSAMPLER's last step, ``inverse_noise_scaling``, turns a partly noised result back
    into a latent that a later sampler re-noises; on a flow model (CONST) that is a division by ``1 - sigma``, 0 at
    the top of every flow schedule, and the inverted ``x_T`` is no such latent: it enters the edit as the sampler's
    noise (``noise_scaling`` at sigma 1 is the noise itself). On VP models ``inverse_noise_scaling`` is the identity,
    so nothing changes there."""

    def sample(
        self,
        model_wrap: comfy.samplers.CFGGuider,
        sigmas: torch.Tensor,
        extra_args: dict,
        callback: Callable | None,
        noise: torch.Tensor,
        latent_image: torch.Tensor | None = None,
        denoise_mask: torch.Tensor | None = None,
        disable_pbar: bool = False,
    ) -> torch.Tensor:
        if denoise_mask is not None:
            raise ValueError(
                "inversion inverts the whole latent: remove its noise mask (SetLatentNoiseMask) before the inversion"
            )
        extra_args["denoise_mask"] = None
        model_k = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image, model_k.noise = latent_image, noise
        start = model_wrap.inner_model.model_sampling.noise_scaling(
            sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas)
        )
        steps = len(sigmas) - 1
        k_callback = None if callback is None else lambda x: callback(x["i"], x["denoised"], x["x"], steps)
        return self.sampler_function(
            model_k,
            start,
            sigmas,
            extra_args=extra_args,
            callback=k_callback,
            disable=disable_pbar,
            **self.extra_options,
        )


def inversion_ksampler(
    adapter: LoadedAdapter | None = None,
    strength: float = 1.0,
    frames: int | None = None,
    refine_steps: int = 0,
    trajectory: Callable[[dict], None] | None = None,
    on_level: LevelHook | None = None,
    on_positive: Callable[[list], None] | None = None,
    final_eval: bool = True,
) -> comfy.samplers.KSAMPLER:
    """A SAMPLER that inverts: give it ascending sigmas (a schedule flipped, to sigma 1 on a flow model too) and the
    clean latent; it returns the inverted latent in the sampler's space (:class:`InversionKSampler`). ``final_eval``:
    one more model call at the top, so that attention hooks see every level (off where nothing is recorded).

    ``trajectory(info)`` sees the input and every inverted level, before the preview callback; ``on_positive``
    (as for :func:`contextdiff_ksampler`) the uuids of the positive's entries before the first model call.
    """
    check_options(strength)
    if refine_steps < 0:
        raise ValueError(f"refine_steps is {refine_steps}; it must be 0 (classic inversion) or more")
    options = dict(
        loop=inversion.invert_ddim,
        adapter=adapter,
        strength=strength,
        frames=frames,
        refine_steps=refine_steps,
        trajectory=trajectory,
        on_level=on_level,
        final_eval=final_eval,  # the editing store records the attention at the top level too
        host_divides=False,
    )
    if on_positive is not None:
        options["on_positive"] = on_positive
    return InversionKSampler(biased_run, extra_options=options)
