"""The contextualized forward process and its DDPM/DDIM reverse steps, for any pair ``(a_t, s_t)``.

The process is ``x_t = a_t x0 + s_t eps + b_t`` (Eq. 1 with the pair; docs/design.md §1): VP is
``a = sqrt(abar)``, ``s = sqrt(1 - abar)``; flow matching is ``a = 1 - sigma``, ``s = sigma``
(:class:`contextdiff.schedule.NoiseProcess`). Bias ``b_t(x0, c) = k_t r_phi(x0, c, t)`` with
``k_t = a_t (1 - a_t)``.

A schedule argument is a :class:`~contextdiff.schedule.Level` ``(a, s)``, or a float/tensor ``abar``: the
paper's VP notation, shorthand for the level ``(sqrt(abar), sqrt(1 - abar))``. A bias argument is the tensor
``b_t`` already evaluated at the ``x0`` (or ``x0hat``) the formula uses (:class:`contextdiff.bias.ContextBias`
gives both ends of a step), or ``None``: no bias, plain DDPM/DDIM. All functions are pure and work for any
tensor shape and float dtype.
"""

from __future__ import annotations

import torch

from .schedule import Level, Tensorish, _t

Bias = torch.Tensor | None
# (mean, variance) of a Gaussian; the variance broadcasts against the mean.
Gaussian = tuple[torch.Tensor, torch.Tensor]
# A noise level: (a, s), or VP's abar.
LevelLike = Level | Tensorish


def _bias(b: Bias) -> torch.Tensor | float:
    """``b`` itself, or 0 for no bias (a scalar: no allocation)."""
    return 0.0 if b is None else b


def as_level(level: LevelLike, like: torch.Tensor | None = None) -> Level:
    """``level`` itself, or the VP level ``(sqrt(abar), sqrt(1 - abar))`` of an ``abar``."""
    if isinstance(level, Level):
        return level
    abar = _t(level, like)
    return Level(abar.sqrt(), (1.0 - abar).sqrt())


def kernel_scale(level_t: Level, level_prev: Level) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha, beta)`` of the Markov step ``x_t = alpha x_{t-1} + sqrt(beta) z`` between two levels.

    ``alpha = a_t / a_{t-1}`` and ``beta = s_t^2 - alpha^2 s_{t-1}^2``, so that chained steps keep the marginal;
    VP: ``alpha = abar_t / abar_{t-1}`` under the root and ``beta = 1 - abar_t / abar_{t-1}``, the paper's
    ``beta_t`` for the step actually taken. ``beta < 0`` for a step towards less noise.
    """
    alpha = level_t.a / level_prev.a
    return alpha, level_t.s * level_t.s - alpha * alpha * level_prev.s * level_prev.s


def draw(mean: torch.Tensor, var: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """``mean + sqrt(var) * noise`` for standard normal ``noise``; the mean alone without noise (a last step)."""
    return mean if noise is None else mean + var.sqrt() * noise


def forward_marginal(x0: torch.Tensor, level_t: LevelLike, b_t: Bias = None) -> Gaussian:
    """Eq. 1: ``q(x_t | x0, c) = N(a_t x0 + b_t, s_t^2 I)``; returns (mean, var)."""
    a, s = as_level(level_t, x0)
    return a * x0 + _bias(b_t), s * s


def forward_sample(x0: torch.Tensor, level_t: LevelLike, eps: torch.Tensor, b_t: Bias = None) -> torch.Tensor:
    """Eq. 1 by reparameterisation: ``x_t = a_t x0 + b_t + s_t eps``.

    Differentiable in ``x0`` and in the bias, so training gradients reach ``r_phi`` (Eq. 6).
    """
    a, s = as_level(level_t, x0)
    return a * x0 + _bias(b_t) + s * eps


def forward_kernel(
    x_prev: torch.Tensor, level_t: LevelLike, level_prev: LevelLike, b_t: Bias = None, b_prev: Bias = None
) -> Gaussian:
    """Eq. 2: ``q(x_t | x_{t-1}, x0, c)``; mean ``alpha x_{t-1} + b_t - alpha b_{t-1}``, var ``beta``
    (:func:`kernel_scale`; VP: ``sqrt(a_t) x_{t-1} + b_t - sqrt(a_t) b_{t-1}``, ``beta_t``)."""
    alpha, beta = kernel_scale(as_level(level_t, x_prev), as_level(level_prev, x_prev))
    return alpha * x_prev + _bias(b_t) - alpha * _bias(b_prev), beta


def posterior(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    level_t: LevelLike,
    level_prev: LevelLike,
    b_t: Bias = None,
    b_prev: Bias = None,
) -> Gaussian:
    """Eq. 3 (and Eq. 7 with ``x0hat`` in place of ``x0``): ``q(x_{t-1} | x_t, x0, c)``; returns (mean, var).

    Notation -> names (VP in brackets)::

        a_t, s_t; a_{t-1}, s_{t-1}   level_t, level_prev     (sqrt(abar), sqrt(1 - abar))
        alpha, beta                   kernel_scale            (sqrt(abar_t / abar_{t-1}), beta_t)
        b_t(x0), b_{t-1}(x0)          b_t, b_prev
        mu~_t                         mean = coef_x0 x0 + coef_xt (x_t - b_t) + b_{t-1}
                                      coef_x0 = a_{t-1} beta / s_t^2,  coef_xt = alpha s_{t-1}^2 / s_t^2
        beta~_t                       var  = s_{t-1}^2 beta / s_t^2   ((1 - abar_{t-1}) beta_t / (1 - abar_t))
    """
    lt, lp = as_level(level_t, x0), as_level(level_prev, x0)
    alpha, beta = kernel_scale(lt, lp)
    st2, sp2 = lt.s * lt.s, lp.s * lp.s
    mean = lp.a * beta / st2 * x0 + alpha * sp2 / st2 * (x_t - _bias(b_t)) + _bias(b_prev)
    return mean, sp2 * beta / st2


def ddim_sigma(level_t: LevelLike, level_prev: LevelLike, eta: float) -> torch.Tensor:
    """DDIM's ``sigma_t(eta) = eta sqrt(s_{t-1}^2 beta / s_t^2)``: ``eta`` times the posterior's standard deviation
    (VP: ``eta sqrt((1-abar_{t-1})/(1-abar_t)) sqrt(1 - abar_t/abar_{t-1})``).

    ``eta = 1`` gives the DDPM posterior variance, ``eta = 0`` the deterministic sampler. A step
    towards more noise (``beta < 0``) has no posterior noise: 0.
    """
    lt = as_level(level_t)
    lp = as_level(level_prev, lt.a)
    _, beta = kernel_scale(lt, lp)
    return eta * (lp.s * lp.s / (lt.s * lt.s) * beta).clamp(min=0).sqrt()


def ddim_posterior(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    level_t: LevelLike,
    level_prev: LevelLike,
    b_t: Bias = None,
    b_prev: Bias = None,
    eta: float = 0.0,
) -> Gaussian:
    """Eq. 18 (Lemma 2): the contextualized DDIM posterior; returns (mean, var = sigma_t^2).

    Notation -> names::

        a_t, s_t; a_{t-1}, s_{t-1}   level_t, level_prev (VP: sqrt(abar), sqrt(1 - abar))
        b_t(x0), b_{t-1}(x0)          b_t, b_prev
        sigma_t(eta)                  sigma_t          (ddim_sigma)
        eps (Eq. 11)                  eps              = (x_t - a_t x0 - b_t) / s_t
        direction to x_t              direction        = sqrt(s_{t-1}^2 - sigma_t^2) eps
        mean                          a_{t-1} x0 + direction + b_{t-1}
    """
    lt, lp = as_level(level_t, x0), as_level(level_prev, x0)
    sigma_t = ddim_sigma(lt, lp, eta).to(lt.a.dtype)
    eps = (x_t - lt.a * x0 - _bias(b_t)) / lt.s
    direction = (lp.s * lp.s - sigma_t * sigma_t).clamp(min=0).sqrt() * eps
    return lp.a * x0 + direction + _bias(b_prev), sigma_t * sigma_t


def ddim_step(
    x_t: torch.Tensor,
    x0hat: torch.Tensor,
    level_t: LevelLike,
    level_prev: LevelLike,
    b_t: Bias = None,
    b_prev: Bias = None,
    noise: torch.Tensor | None = None,
    *,
    eta: float = 0.0,
) -> torch.Tensor:
    """One contextualized DDIM step (Eq. 11 for ``eta = 0``, Eq. 18 in general) from ``x_t`` to ``x_{t-1}``.

    With ``eta = 0`` the step is deterministic and runs in either direction: towards more noise it is
    Eq. 11 solved for the noisier latent, the classic DDIM inversion step for a given ``x0hat``. On flow
    matching at zero bias it is ComfyUI's ``euler`` (docs/design.md §1). ``noise`` (standard normal) is
    required when ``sigma_t(eta) > 0``.
    """
    mean, var = ddim_posterior(x_t, x0hat, level_t, level_prev, b_t, b_prev, eta)
    if eta == 0:
        return mean
    if noise is None and bool((var > 0).any()):
        raise ValueError("ddim_step with eta > 0 needs a noise tensor")
    return draw(mean, var, noise)


def ddpm_step(
    x_t: torch.Tensor,
    x0hat: torch.Tensor,
    level_t: LevelLike,
    level_prev: LevelLike,
    b_t: Bias = None,
    b_prev: Bias = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One contextualized ancestral DDPM step: the Eq. 7 mean plus ``sqrt(beta~_t) * noise``.

    Notation -> names: ``mu_theta`` (Eq. 7) is :func:`posterior` at ``x0hat`` with ``b(x0hat)``; the
    variance ``beta~_t`` is the posterior's. ``noise=None`` gives the mean (the last step, to sigma 0).
    """
    return draw(*posterior(x_t, x0hat, level_t, level_prev, b_t, b_prev), noise)
