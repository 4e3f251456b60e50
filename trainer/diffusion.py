"""The base model's noise schedule as every training mode uses it.

ComfyUI models describe their schedule by ``sigma`` and take ``x_k = x_vp / sqrt(abar)``; Eq. 6
works in VP space with ``abar_t``. The conversions are :mod:`contextdiff.schedule`'s; this module
only applies them to a ComfyUI ``BaseModel`` (duck-typed: ``model_sampling.sigmas`` and
``apply_model``), so that the training loss and the previews of each mode share one copy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from contextdiff.bias_variants import BiasVariant, draw_aux, variant_loss
from contextdiff.schedule import abar_from_sigma


def training_schedule(model, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmas, abar)`` of the model's training timesteps ``t = 0 .. T-1``: ComfyUI's sigmas, and
    ``abar_t`` in float64 (its last entry is ``abar_T``, where ``k_T = 0``)."""
    sigmas = model.model_sampling.sigmas.detach().clone()
    return sigmas.to(device), abar_from_sigma(sigmas.double()).to(device)


def vp_x0_predictor(model, sigma: torch.Tensor, context: torch.Tensor | dict) -> Callable:
    """``denoise(x_t, t) -> x0hat`` for VP-space ``x_t`` at per-sample ``sigma`` (Eq. 6's ``f_theta``).

    ``context``: the cross-attention tokens, or every conditioning keyword of ``apply_model`` (SDXL needs
    ``y`` too: :meth:`trainer.base_model.BaseBundle.conditioning` builds it).
    """
    to_k = abar_from_sigma(sigma).rsqrt()  # x_k = x_vp / sqrt(abar)
    cond = context if isinstance(context, dict) else {"c_crossattn": context}

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = to_k.reshape(-1, *([1] * (x_t.dim() - 1)))
        return model.apply_model(x_t * scale, sigma, **cond)

    return denoise


def spaced_sigmas(sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` training sigmas evenly spaced from ``sigma_max`` down to ``sigma_min``, then 0:
    a ComfyUI sigma list for a DDIM preview."""
    idx = torch.linspace(len(sigmas) - 1, 0, steps).round().long()
    return torch.cat([sigmas[idx], sigmas.new_zeros(1)])


def prior_noise(shape, sigma_max: torch.Tensor, seed: int, device) -> torch.Tensor:
    """``x_T`` in ComfyUI's space: ``N(0, I)`` in VP space (``k_T = 0``: no bias) over ``sqrt(abar_T)``,
    drawn on the CPU so that a seed gives the same picture on every device."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    return noise * abar_from_sigma(sigma_max).rsqrt().to(noise.dtype)


def relational(adapter, tokens: torch.Tensor, frames: int | None = None) -> Callable:
    """``r_phi(x_t, t)`` for Eq. 6: the adapter over fixed prompt ``tokens`` (the UNet's cross-attention input)."""

    def r(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return adapter(x_t, tokens, t.float(), frames=frames)

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
    abar: torch.Tensor,
    denoise,
    relational,
    weighting=None,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """The recipe's objective: Eq. 6 (:func:`contextdiff.objective.contextual_x0_loss`) or the bias variant
    of :func:`bias_variant`, with the recipe's weighting, min-SNR gamma, ``use_bias`` and ``bias_l2``: one
    call for every training mode; ``weighting`` overrides the recipe's. ``gen``: the step's generator, for
    the variants that draw more noise (Eq. 6 draws none)."""
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
        abar,
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
