"""The contextualized forward process and its DDPM/DDIM reverse steps, in VP space.

Notation (docs/notation.md): ``abar_t`` cumulative, ``a_t = abar_t / abar_{t-1}``, ``beta_t = 1 - a_t``
for the step actually taken, bias ``b_t(x0, c) = k_t r_phi(x0, c, t)``.

A bias argument is the tensor ``b_t`` already evaluated at the ``x0`` (or ``x0hat``) the formula uses
(:class:`contextdiff.bias.ContextBias` gives both ends of a step), or ``None``: no bias, plain DDPM/DDIM.
All functions are pure and work for any tensor shape and float dtype; schedule arguments may be
floats or tensors.
"""

from __future__ import annotations

import torch

from .schedule import Tensorish, _t, step_beta

Bias = torch.Tensor | None
# (mean, variance) of a Gaussian; the variance broadcasts against the mean.
Gaussian = tuple[torch.Tensor, torch.Tensor]


def _bias(b: Bias) -> torch.Tensor | float:
    """``b`` itself, or 0 for no bias (a scalar: no allocation)."""
    return 0.0 if b is None else b


def draw(mean: torch.Tensor, var: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """``mean + sqrt(var) * noise`` for standard normal ``noise``; the mean alone without noise (a last step)."""
    return mean if noise is None else mean + var.sqrt() * noise


def forward_marginal(x0: torch.Tensor, abar_t: Tensorish, b_t: Bias = None) -> Gaussian:
    """Eq. 1: ``q(x_t | x0, c) = N(sqrt(abar_t) x0 + b_t, (1 - abar_t) I)``; returns (mean, var)."""
    abar_t = _t(abar_t, x0)
    return abar_t.sqrt() * x0 + _bias(b_t), 1.0 - abar_t


def forward_sample(x0: torch.Tensor, abar_t: Tensorish, eps: torch.Tensor, b_t: Bias = None) -> torch.Tensor:
    """Eq. 1 by reparameterisation: ``x_t = sqrt(abar_t) x0 + b_t + sqrt(1 - abar_t) eps``.

    Differentiable in ``x0`` and in the bias, so training gradients reach ``r_phi`` (Eq. 6).
    """
    return draw(*forward_marginal(x0, abar_t, b_t), eps)


def forward_kernel(
    x_prev: torch.Tensor, abar_t: Tensorish, abar_prev: Tensorish, b_t: Bias = None, b_prev: Bias = None
) -> Gaussian:
    """Eq. 2: ``q(x_t | x_{t-1}, x0, c)``; mean ``sqrt(a_t) x_{t-1} + b_t - sqrt(a_t) b_{t-1}``, var ``beta_t``."""
    abar_t, abar_prev = _t(abar_t, x_prev), _t(abar_prev, x_prev)
    root_a = (abar_t / abar_prev).sqrt()
    return root_a * x_prev + _bias(b_t) - root_a * _bias(b_prev), step_beta(abar_t, abar_prev)


def posterior(
    x_t: torch.Tensor, x0: torch.Tensor, abar_t: Tensorish, abar_prev: Tensorish, b_t: Bias = None, b_prev: Bias = None
) -> Gaussian:
    """Eq. 3 (and Eq. 7 with ``x0hat`` in place of ``x0``): ``q(x_{t-1} | x_t, x0, c)``; returns (mean, var).

    Notation -> names::

        abar_t, abar_{t-1}     abar_t, abar_prev
        beta_t                 beta            = 1 - abar_t / abar_{t-1}
        b_t(x0), b_{t-1}(x0)   b_t, b_prev
        mu~_t                  mean            = coef_x0 x0 + coef_xt (x_t - b_t) + b_{t-1}
        beta~_t                var             = (1 - abar_{t-1}) beta_t / (1 - abar_t)
    """
    abar_t, abar_prev = _t(abar_t, x0), _t(abar_prev, x0)
    beta = step_beta(abar_t, abar_prev)
    coef_x0 = abar_prev.sqrt() * beta / (1.0 - abar_t)
    coef_xt = (abar_t / abar_prev).sqrt() * (1.0 - abar_prev) / (1.0 - abar_t)
    mean = coef_x0 * x0 + coef_xt * (x_t - _bias(b_t)) + _bias(b_prev)
    var = (1.0 - abar_prev) * beta / (1.0 - abar_t)
    return mean, var


def ddim_sigma(abar_t: Tensorish, abar_prev: Tensorish, eta: float) -> torch.Tensor:
    """DDIM's ``sigma_t(eta) = eta sqrt((1-abar_{t-1})/(1-abar_t)) sqrt(1 - abar_t/abar_{t-1})``.

    ``eta = 1`` gives the DDPM posterior variance, ``eta = 0`` the deterministic sampler. A step
    towards more noise (``abar_{t-1} < abar_t``) has no posterior noise: 0.
    """
    abar_t = _t(abar_t)
    abar_prev = _t(abar_prev, abar_t)
    return eta * ((1.0 - abar_prev) / (1.0 - abar_t) * step_beta(abar_t, abar_prev)).clamp(min=0).sqrt()


def ddim_posterior(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    abar_t: Tensorish,
    abar_prev: Tensorish,
    b_t: Bias = None,
    b_prev: Bias = None,
    eta: float = 0.0,
) -> Gaussian:
    """Eq. 18 (Lemma 2): the contextualized DDIM posterior; returns (mean, var = sigma_t^2).

    Notation -> names::

        abar_t, abar_{t-1}     abar_t, abar_prev
        b_t(x0), b_{t-1}(x0)   b_t, b_prev
        sigma_t(eta)           sigma_t          (ddim_sigma)
        eps (Eq. 11)           eps              = (x_t - sqrt(abar_t) x0 - b_t) / sqrt(1 - abar_t)
        direction to x_t       direction        = sqrt(1 - abar_{t-1} - sigma_t^2) eps
        mean                   sqrt(abar_{t-1}) x0 + direction + b_{t-1}
    """
    abar_t, abar_prev = _t(abar_t, x0), _t(abar_prev, x0)
    sigma_t = ddim_sigma(abar_t, abar_prev, eta).to(abar_t.dtype)
    eps = (x_t - abar_t.sqrt() * x0 - _bias(b_t)) / (1.0 - abar_t).sqrt()
    direction = (1.0 - abar_prev - sigma_t * sigma_t).clamp(min=0).sqrt() * eps
    return abar_prev.sqrt() * x0 + direction + _bias(b_prev), sigma_t * sigma_t


def ddim_step(
    x_t: torch.Tensor,
    x0hat: torch.Tensor,
    abar_t: Tensorish,
    abar_prev: Tensorish,
    b_t: Bias = None,
    b_prev: Bias = None,
    noise: torch.Tensor | None = None,
    *,
    eta: float = 0.0,
) -> torch.Tensor:
    """One contextualized DDIM step (Eq. 11 for ``eta = 0``, Eq. 18 in general) from ``x_t`` to ``x_{t-1}``.

    With ``eta = 0`` the step is deterministic and runs in either direction: towards more noise
    (``abar_{t-1} < abar_t``) it is Eq. 11 solved for the noisier latent, the classic DDIM inversion
    step for a given ``x0hat``. ``noise`` (standard normal) is required when ``sigma_t(eta) > 0``.
    """
    mean, var = ddim_posterior(x_t, x0hat, abar_t, abar_prev, b_t, b_prev, eta)
    if eta == 0:
        return mean
    if noise is None and bool((var > 0).any()):
        raise ValueError("ddim_step with eta > 0 needs a noise tensor")
    return draw(mean, var, noise)


def ddpm_step(
    x_t: torch.Tensor,
    x0hat: torch.Tensor,
    abar_t: Tensorish,
    abar_prev: Tensorish,
    b_t: Bias = None,
    b_prev: Bias = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One contextualized ancestral DDPM step: the Eq. 7 mean plus ``sqrt(beta~_t) * noise``.

    Notation -> names: ``mu_theta`` (Eq. 7) is :func:`posterior` at ``x0hat`` with ``b(x0hat)``; the
    variance ``beta~_t`` is the posterior's. ``noise=None`` gives the mean (the last step, to sigma 0).
    """
    return draw(*posterior(x_t, x0hat, abar_t, abar_prev, b_t, b_prev), noise)
