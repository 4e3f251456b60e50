"""The training objective of Eq. 6 with the contextualized forward process of Eq. 1.

``x_t = sqrt(abar_t) x0 + k_t r_phi(x0, c, t) + sqrt(1 - abar_t) eps`` is drawn by
reparameterisation, so the gradient of ``||f_theta(x_t, c, t) - x0||^2`` reaches ``r_phi``
through ``x_t`` (paper §3.2). With ``use_bias=False`` the identical model trains without the
bias: the fair baseline. Because ``r_phi`` sees ``x0``, the bias can carry the image into ``x_t``,
which the sampler's ``r_phi(x0hat)`` cannot give back; :mod:`contextdiff.bias_variants` holds the
variants that close this gap (Eq. 5, Lemma 4's Lipschitz bound, a self-consistent bias, a bottleneck).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import process
from .schedule import k_coefficient

WEIGHTINGS = ("uniform", "snr", "min_snr", "truncated_snr")


def loss_weight(abar: torch.Tensor, kind: str = "uniform", gamma: float = 5.0) -> torch.Tensor:
    """``lambda_t`` of Eq. 6 per sample.

    uniform: 1 (the plain x0 loss); snr: ``abar/(1-abar)``, the weighting under which the x0 loss
    equals the usual eps loss; min_snr: ``min(snr, gamma)`` (Hang et al. 2023);
    truncated_snr: ``max(snr, 1)`` (Salimans & Ho 2022).
    """
    snr = abar / (1.0 - abar)
    if kind == "uniform":
        return torch.ones_like(abar)
    if kind == "snr":
        return snr
    if kind == "min_snr":
        return snr.clamp(max=gamma)
    if kind == "truncated_snr":
        return snr.clamp(min=1.0)
    raise ValueError(f"unknown loss weighting {kind!r}; choose one of {WEIGHTINGS}")


def contextual_x0_loss(
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    abar_table: torch.Tensor,
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    relational: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    weighting: str = "uniform",
    gamma: float = 5.0,
    use_bias: bool = True,
    bias_l2: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 for one batch; returns ``(loss, per-sample loss)``.

    ``bias_l2 > 0`` adds ``bias_l2 * mean(b_t^2)``, not in the paper: ``r_phi`` sees ``x0`` itself, so
    the adapter can encode ``x0`` into ``x_t`` with a large bias that makes Eq. 6 easy at training
    time but leaves sampling and inversion to chase a stiff ``x0hat -> b_t`` feedback loop.

    ``t``: integer training timesteps ``(B,)``; ``abar_table``: the model's cumulative schedule,
    whose last entry is ``T`` (``k_T = 0``); ``denoise(x_t, t) -> x0hat`` in VP space;
    ``relational(x0, t) -> r_phi(x0, c, t)``.
    """
    shape = (-1,) + (1,) * (x0.dim() - 1)
    abar = abar_table.to(x0.device)[t].to(torch.float32)
    bias = None
    if use_bias and relational is not None:
        k = k_coefficient(abar.double(), abar_table[-1].double()).to(x0.dtype)
        bias = k.reshape(shape) * relational(x0, t)
    x_t = process.forward_sample(x0, abar.reshape(shape).to(x0.dtype), eps, bias)
    x0hat = denoise(x_t, t)
    per_sample = (x0hat.float() - x0.float()).pow(2).flatten(1).mean(1)
    weighted = loss_weight(abar, weighting, gamma) * per_sample
    loss = weighted.mean()
    if bias is not None and bias_l2 > 0:
        loss = loss + bias_l2 * bias.float().pow(2).mean()
    return loss, per_sample
