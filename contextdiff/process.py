"""The contextualized forward process and its DDPM/DDIM reverse steps, in VP space.

Notation (DESIGN.md section 1): ``abar_t`` cumulative, ``a_t = abar_t / abar_{t-1}``,
``beta_t = 1 - a_t`` for the step actually taken, bias ``b_t(x0, c) = k_t r_phi(x0, c, t)``.

A bias argument is either a tensor (``b_t`` already evaluated), ``None`` (no bias: plain
DDPM/DDIM), or a callable ``b(x0, abar) -> tensor``, evaluated at the ``x0`` (or ``x0hat``) the
formula uses. :func:`scaled_bias` turns a relational network ``r(x0, abar)`` into such a callable.
All functions are pure and work for any tensor shape and float dtype.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .schedule import Tensorish, _t, k_coefficient, step_beta

BiasFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Bias = Optional[Union[torch.Tensor, BiasFn]]


def scaled_bias(r: BiasFn, abar_T: Tensorish | None = None, strength: float = 1.0) -> BiasFn:
    """``b(x0, abar) = strength * k(abar) * r(x0, abar)``, with ``k_T = 0`` at ``abar_T``."""

    def b(x0: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        k = k_coefficient(_t(abar, x0), abar_T).to(x0.dtype)
        return (strength * k) * r(x0, abar)

    return b


def evaluate_bias(bias: Bias, x0: torch.Tensor, abar: Tensorish) -> torch.Tensor:
    """The bias tensor at ``(x0, abar)``: zeros for ``None``, the tensor itself, or the call."""
    if bias is None:
        return torch.zeros_like(x0)
    if callable(bias):
        return bias(x0, _t(abar, x0))
    return bias


def forward_marginal(x0: torch.Tensor, abar_t: Tensorish, b_t: Bias = None):
    """Eq. 1: ``q(x_t | x0, c) = N(sqrt(abar_t) x0 + b_t, (1 - abar_t) I)``; returns (mean, var)."""
    abar_t = _t(abar_t, x0)
    return abar_t.sqrt() * x0 + evaluate_bias(b_t, x0, abar_t), 1.0 - abar_t


def forward_sample(x0: torch.Tensor, abar_t: Tensorish, eps: torch.Tensor, b_t: Bias = None):
    """Eq. 1 by reparameterisation: ``x_t = sqrt(abar_t) x0 + b_t + sqrt(1 - abar_t) eps``.

    Differentiable in ``x0`` and in the bias, so training gradients reach ``r_phi`` (Eq. 6).
    """
    mean, var = forward_marginal(x0, abar_t, b_t)
    return mean + var.sqrt() * eps


def forward_kernel(x_prev, x0, abar_t: Tensorish, abar_prev: Tensorish, b_t: Bias = None, b_prev: Bias = None):
    """Eq. 2: ``q(x_t | x_{t-1}, x0, c)``; mean ``sqrt(a_t) x_{t-1} + b_t - sqrt(a_t) b_{t-1}``, var ``beta_t``."""
    abar_t, abar_prev = _t(abar_t, x0), _t(abar_prev, x0)
    root_a = (abar_t / abar_prev).sqrt()
    bt = evaluate_bias(b_t, x0, abar_t)
    bp = evaluate_bias(b_prev, x0, abar_prev)
    return root_a * x_prev + bt - root_a * bp, step_beta(abar_t, abar_prev)


def posterior(x_t, x0, abar_t: Tensorish, abar_prev: Tensorish, b_t: Bias = None, b_prev: Bias = None):
    """Eq. 3 (and Eq. 7 with ``x0hat`` in place of ``x0``): ``q(x_{t-1} | x_t, x0, c)``.

    mean ``sqrt(abar_{t-1}) beta_t/(1-abar_t) x0 + sqrt(a_t)(1-abar_{t-1})/(1-abar_t) (x_t - b_t)
    + b_{t-1}``, variance ``(1-abar_{t-1}) beta_t / (1-abar_t)``; returns (mean, var).
    """
    abar_t, abar_prev = _t(abar_t, x0), _t(abar_prev, x0)
    beta = step_beta(abar_t, abar_prev)
    bt = evaluate_bias(b_t, x0, abar_t)
    bp = evaluate_bias(b_prev, x0, abar_prev)
    c0 = abar_prev.sqrt() * beta / (1.0 - abar_t)
    ct = (abar_t / abar_prev).sqrt() * (1.0 - abar_prev) / (1.0 - abar_t)
    return c0 * x0 + ct * (x_t - bt) + bp, (1.0 - abar_prev) * beta / (1.0 - abar_t)


def ddim_sigma(abar_t: Tensorish, abar_prev: Tensorish, eta: float) -> torch.Tensor:
    """DDIM's ``sigma_t(eta) = eta sqrt((1-abar_{t-1})/(1-abar_t)) sqrt(1 - abar_t/abar_{t-1})``.

    ``eta = 1`` gives the DDPM posterior variance, ``eta = 0`` the deterministic sampler.
    """
    abar_t, abar_prev = _t(abar_t), _t(abar_prev, abar_t)
    return eta * ((1.0 - abar_prev) / (1.0 - abar_t) * step_beta(abar_t, abar_prev)).clamp(min=0).sqrt()


def ddim_posterior(x_t, x0, abar_t: Tensorish, abar_prev: Tensorish, b_t: Bias = None, b_prev: Bias = None, eta: float = 0.0):
    """Eq. 18 (Lemma 2): the contextualized DDIM posterior; returns (mean, var = sigma_t^2).

    mean ``sqrt(abar_{t-1}) x0 + c (x_t - sqrt(abar_t) x0) - c b_t + b_{t-1}``, with
    ``c = sqrt(1 - abar_{t-1} - sigma_t^2) / sqrt(1 - abar_t)``.
    """
    abar_t, abar_prev = _t(abar_t, x0), _t(abar_prev, x0)
    s = ddim_sigma(abar_t, abar_prev, eta).to(x0.dtype)
    c = (1.0 - abar_prev - s * s).clamp(min=0).sqrt() / (1.0 - abar_t).sqrt()
    bt = evaluate_bias(b_t, x0, abar_t)
    bp = evaluate_bias(b_prev, x0, abar_prev)
    return abar_prev.sqrt() * x0 + c * (x_t - abar_t.sqrt() * x0 - bt) + bp, s * s


def ddim_step(x_t, x0hat, abar_t: Tensorish, abar_prev: Tensorish, b_t: Bias = None, b_prev: Bias = None,
              eta: float = 0.0, noise: torch.Tensor | None = None):
    """One contextualized DDIM step (Eq. 11 for ``eta = 0``, Eq. 18 in general) to ``x_{t-1}``.

    ``noise`` (standard normal, shape of ``x_t``) is required when ``eta > 0``.
    """
    mean, var = ddim_posterior(x_t, x0hat, abar_t, abar_prev, b_t, b_prev, eta)
    if eta == 0:
        return mean
    if noise is None:
        raise ValueError("ddim_step with eta > 0 needs a noise tensor")
    return mean + var.sqrt() * noise


def ddpm_step(x_t, x0hat, abar_t: Tensorish, abar_prev: Tensorish, b_t: Bias = None, b_prev: Bias = None,
              noise: torch.Tensor | None = None):
    """One contextualized ancestral DDPM step: Eq. 7 mean plus ``sqrt(var) * noise``."""
    mean, var = posterior(x_t, x0hat, abar_t, abar_prev, b_t, b_prev)
    if noise is None:
        return mean
    return mean + var.sqrt() * noise


def ddim_inverse_step(x_prev, x0hat, abar_prev: Tensorish, abar_t: Tensorish, b_prev: Bias = None, b_t: Bias = None):
    """Eq. 11 solved for ``x_t``: the exact inverse of :func:`ddim_step` (eta 0) for a given ``x0hat``.

    ``x_t = sqrt(abar_t) x0hat + b_t + sqrt(1-abar_t) (x_{t-1} - sqrt(abar_{t-1}) x0hat - b_{t-1})
    / sqrt(1-abar_{t-1})``. Needs ``abar_{t-1} < 1``: from clean data the noise direction is
    undefined (see :func:`contextdiff.sampling.invert_ddim`, which handles that first step).
    """
    abar_prev, abar_t = _t(abar_prev, x0hat), _t(abar_t, x0hat)
    if bool((abar_prev >= 1).any()):
        raise ValueError("ddim_inverse_step needs abar_prev < 1 (sigma > 0); the step from sigma 0 is implicit")
    bt = evaluate_bias(b_t, x0hat, abar_t)
    bp = evaluate_bias(b_prev, x0hat, abar_prev)
    eps = (x_prev - abar_prev.sqrt() * x0hat - bp) / (1.0 - abar_prev).sqrt()
    return abar_t.sqrt() * x0hat + bt + (1.0 - abar_t).sqrt() * eps
