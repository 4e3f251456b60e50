"""The base model's noise process as every training mode uses it.

ComfyUI models describe their noise level by ``sigma`` and work on their own latent ("host space"); Eq. 6 is
written in the process ``x_t = a_t x0 + s_t eps + b_t`` of a pair ``(a_t, s_t)``: VP (``x_host = x_t /
sqrt(abar)``) or flow matching (``(1 - sigma, sigma)``, ``x_host = x_t``; docs/design.md §1.1). The pair and the
conversions are :mod:`contextdiff.schedule`'s, chosen by :mod:`contextdiff.families`; this module only applies them
to a ComfyUI ``BaseModel`` (duck-typed: ``model_sampling.sigmas`` and ``apply_model``), so that the training loss
and the previews of each mode share one copy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from contextdiff import families
from contextdiff.adapter import frames_as_batch, frames_as_clips
from contextdiff.bias_variants import BiasVariant, draw_aux, variant_loss
from contextdiff.objective import AbarLevels, PairLevels, TrainingLevels
from contextdiff.schedule import VP, NoiseProcess, abar_from_sigma

from .rope_gradient import register_rope_gradients


def training_schedule(model, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmas, abar)`` of a VP model's training timesteps ``t = 0 .. T-1``: ComfyUI's sigmas, and
    ``abar_t`` in float64 (its last entry is ``abar_T``, where ``k_T = 0``)."""
    sigmas = model.model_sampling.sigmas.detach().clone()
    return sigmas.to(device), abar_from_sigma(sigmas.double()).to(device)


def training_levels(model, device) -> tuple[torch.Tensor, TrainingLevels]:
    """``(sigmas, levels)`` of any model the trainer accepts: the model's own training sigmas (the table ComfyUI's
    ``model_sampling`` holds) and the pair at each, for :func:`recipe_loss`.

    VP: :func:`training_schedule`'s ``abar`` table (:class:`~contextdiff.objective.AbarLevels`). Flow matching:
    ``(1 - sigma, sigma)`` at the model's shifted sigmas (SD3 shift 3 and Wan shift 8 over ``t/1000``, Flux
    ``flux_time_shift(1.15)`` over ``t/10000``), the adapter told ``1000 sigma`` (``families.adapter_timestep``,
    as the samplers tell it). Drawing ``t`` uniformly over this table draws sigma as the family's sampler walks
    it: the shifted uniform.
    """
    ms = model.model_sampling
    process = families.process_of(ms)
    if process is VP:
        sigmas, abar = training_schedule(model, device)
        return sigmas, AbarLevels(abar)
    sigmas = ms.sigmas.detach().clone().double()
    a, s = process.level(sigmas)
    told = families.adapter_timestep(ms)(sigmas)
    return sigmas.float().to(device), PairLevels(a.to(device), s.to(device), told.to(device))


def saved_activations_copied():
    """Autograd keeps a copy of each activation it saves for backward (frozen weights are kept as they are).

    ComfyUI's DiT blocks update activations in place (Flux's double block: ``img += ...`` after a LayerNorm saved
    ``img``), which autograd refuses in backward. A copy taken when the tensor is saved is the value the backward
    needs, whatever the forward does to the tensor afterwards: the exact gradient (the tests compare it with plain
    autograd on SD3 and Wan, equal, and with finite differences on Flux), at the cost of the copies. ``torch.func``'s
    functionalization would avoid them but refuses the ``autograd.Function`` ops of ComfyUI 0.8 (comfy-kitchen's
    rotary embedding), and non-reentrant checkpointing gives wrong gradients here.
    """

    def keep(t: torch.Tensor) -> torch.Tensor:
        return t if isinstance(t, torch.nn.Parameter) else t.clone()

    return torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t)


def x0_predictor(model, sigma: torch.Tensor, context: torch.Tensor | dict) -> Callable:
    """``denoise(x_t, t) -> x0hat`` for process-space ``x_t`` at per-sample ``sigma`` (Eq. 6's ``f_theta``).

    ``x_t`` is handed to the model in its own space (VP: ``x_t / sqrt(abar)``; flow: ``x_t`` itself), and the
    model's ``apply_model`` returns the denoised latent the samplers consume (``calculate_denoised``: VP eps or v,
    flow ``x - sigma v`` with the predicted velocity ``v = eps - x0``). ``context``: the cross-attention tokens,
    or every conditioning keyword of ``apply_model`` (:meth:`trainer.base_model.BaseBundle.conditioning`). On a
    flow model the gradient reaches ``x_t`` with :func:`saved_activations_copied`.
    """
    process = families.process_of(model.model_sampling)
    to_host = process.to_host(sigma)
    cond = context if isinstance(context, dict) else {"c_crossattn": context}

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x_t * to_host.reshape(-1, *([1] * (x_t.dim() - 1)))
        if process is not VP and torch.is_grad_enabled() and x.requires_grad:
            register_rope_gradients()  # ComfyUI 0.8's comfy-kitchen rotary embedding ships without a gradient
            with saved_activations_copied():
                return model.apply_model(x, sigma, **cond)
        return model.apply_model(x, sigma, **cond)

    return denoise


def spaced_sigmas(sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` training sigmas evenly spaced from ``sigma_max`` down to ``sigma_min``, then 0:
    a ComfyUI sigma list for a DDIM preview."""
    idx = torch.linspace(len(sigmas) - 1, 0, steps).round().long()
    return torch.cat([sigmas[idx], sigmas.new_zeros(1)])


def prior_noise(shape, sigma_max: torch.Tensor, seed: int, device, process: NoiseProcess = VP) -> torch.Tensor:
    """``x_T`` in ComfyUI's space: ``N(0, I)`` in process space (``k_T = 0``: no bias) in the model's space (VP:
    over ``sqrt(abar_T)``; flow: itself), drawn on the CPU so that a seed gives the same picture on every device."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    return noise * process.to_host(sigma_max).to(noise.dtype)


def relational(adapter, tokens: torch.Tensor, frames: int | None = None, timestep: Callable | None = None) -> Callable:
    """``r_phi(x_t, t)`` for Eq. 6: the adapter over fixed prompt ``tokens`` (the model's cross-attention input).

    ``timestep``: training index -> the timestep the adapter is told (:meth:`TrainingLevels.adapter_time`; default
    the index itself, a VP model's own timestep). A video latent ``(B, C, F, H, W)`` (Wan's) reaches the adapter as
    each clip's frames in order, as the samplers hand it over (:func:`contextdiff.adapter.frames_as_batch`)."""
    told = timestep or (lambda t: t.float())

    def r(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x_t.dim() == 5:
            images, text, n = frames_as_batch(x_t, tokens)
            return frames_as_clips(adapter(images, text, told(t).repeat_interleave(n), frames=n), n)
        return adapter(x_t, tokens, told(t), frames=frames)

    return r


def bias_variant(cfg) -> BiasVariant:
    """The recipe's :class:`~contextdiff.bias_variants.BiasVariant` (``--objective``, ``--self_bias``,
    ``--lipschitz_weight``, ``--lipschitz_bound``, ``--input_blur``, ``--input_noise``); a config without
    these options trains the paper's Eq. 6."""
    default = BiasVariant()
    return BiasVariant(**{name: getattr(cfg, name, value) for name, value in default.to_dict().items()})


def recipe_loss(
    cfg,
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    levels: torch.Tensor | TrainingLevels,
    denoise,
    relational,
    weighting=None,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """The recipe's objective: Eq. 6 (:func:`contextdiff.objective.contextual_x0_loss`) or the bias variant
    of :func:`bias_variant`, with the recipe's weighting, min-SNR gamma, ``use_bias`` and ``bias_l2``: one
    call for every training mode; ``weighting`` overrides the recipe's. ``levels``: :func:`training_levels`'
    (VP: the ``abar`` table). ``gen``: the step's generator, for the variants that draw more noise (Eq. 6 draws
    none)."""
    variant = bias_variant(cfg)
    if variant.needs_aux() and gen is None:
        raise ValueError(
            f"mode {cfg.mode} does not draw the noise that --self_bias below 1 and --input_noise need; "
            "use them with mode shapes"
        )
    loss, _ = variant_loss(
        x0,
        t,
        eps,
        levels,
        denoise,
        relational,
        variant,
        draw_aux(variant, x0, gen),
        weighting or cfg.loss_weighting,
        cfg.min_snr_gamma,
        cfg.use_bias,
        cfg.bias_l2,
    )
    return loss
