"""The variational bound of Eq. 4 for the contextualized DDPM, in bits per dimension.

``L = L_T + sum_{t=2}^{T} L_{t-1} + L_0`` with, for the x0-predicting reverse process of Eq. 7:

- ``L_T = KL(q(x_T | x0, c) || N(0, I))``: Eq. 1 at ``T``, where ``k_T = 0``;
- ``L_{t-1} = E_{x_t ~ Eq. 1} ||mu_q - mu_p||^2 / (2 sigma_t^2)``: the Eq. 3 posterior with ``x0`` and
  ``b(x0)`` against the Eq. 7 mean with ``x0hat`` and ``b(x0hat)``; both share the posterior variance;
- ``L_0 = -log p(x0 | x1)``: a discretised Gaussian decoder around ``x0hat(x_1)`` with variance ``beta_1``
  over the data's quantisation bins (as in Ho et al. 2020).

The sum over ``t`` is estimated by stratified sampling of ``t``; with ``r = 0`` it is the DDPM bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import process


def _normal_cdf(x):
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_nll(
    x0: torch.Tensor, mean: torch.Tensor, std: float, bin_width: float, lo: float = -1.0, hi: float = 1.0
) -> torch.Tensor:
    """``-log P(x0)`` per element for a Gaussian integrated over the data's bins (edge bins open)."""
    upper = torch.where(x0 >= hi - 1e-6, torch.ones_like(x0), _normal_cdf((x0 + bin_width / 2 - mean) / std))
    lower = torch.where(x0 <= lo + 1e-6, torch.zeros_like(x0), _normal_cdf((x0 - bin_width / 2 - mean) / std))
    return -torch.log((upper - lower).clamp(min=1e-12))


@torch.no_grad()
def variational_bound(
    x0: torch.Tensor,
    abar: torch.Tensor,
    denoise: Callable,
    bias: Callable | None,
    bin_width: float,
    t_samples: int = 50,
    generator: torch.Generator | None = None,
) -> dict:
    """Per-sample bound in nats and bits/dim.

    ``abar``: the cumulative schedule of the T training steps (index 0 is t = 1); ``denoise(x_t, t_index)``
    returns ``x0hat`` (VP space); ``bias(x0, t_index) -> b_t`` (None for the plain model).
    """
    T = len(abar)
    n, dims = x0.shape[0], x0[0].numel()
    abar = abar.to(x0.device, torch.float64)

    def b(x, idx):
        return None if bias is None else bias(x, idx)

    if bias is not None:
        b_T = bias(x0, torch.full((n,), T - 1, dtype=torch.long, device=x0.device))
        if bool((b_T != 0).any()):
            raise ValueError(
                "the bias must vanish at T (k_T = 0): L_T takes q(x_T | x0) = N(sqrt(abar_T) x0, "
                "1 - abar_T); scale r_phi by schedule.k_coefficient(abar, abar[-1])"
            )

    def sample_xt(idx):
        a = abar[idx].reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        return process.forward_sample(x0, a, eps, b(x0, idx))

    # L_T: k_T = 0, so q(x_T | x0) = N(sqrt(abar_T) x0, 1 - abar_T).
    var_T = 1.0 - abar[-1]
    mean_T = abar[-1].sqrt() * x0.double()
    l_T = 0.5 * (var_T + mean_T**2 - 1.0 - torch.log(var_T)).flatten(1).sum(1)
    # sum_{t=2}^{T} L_{t-1}: stratified t over indices 1..T-1 (t = 2..T).
    edges = torch.linspace(1, T, min(t_samples, T - 1) + 1).round().long().tolist()
    l_mid = torch.zeros(n, dtype=torch.float64, device=x0.device)
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        t = int(torch.randint(lo, hi, (1,), generator=generator))
        idx = torch.full((n,), t, dtype=torch.long, device=x0.device)
        x_t = sample_xt(idx)
        x0hat = denoise(x_t, idx)
        a_t, a_p = abar[t].to(x0.dtype), abar[t - 1].to(x0.dtype)
        prev = torch.full_like(idx, t - 1)
        mu_q, var = process.posterior(x_t, x0, a_t, a_p, b(x0, idx), b(x0, prev))
        mu_p, _ = process.posterior(x_t, x0hat, a_t, a_p, b(x0hat, idx), b(x0hat, prev))
        kl = ((mu_q - mu_p).double() ** 2 / (2.0 * var.double())).flatten(1).sum(1)
        l_mid += kl * (hi - lo)  # this stratum's width times its sampled term
    # L_0: decoder at t = 1 (index 0).
    idx0 = torch.zeros(n, dtype=torch.long, device=x0.device)
    x1 = sample_xt(idx0)
    x0hat = denoise(x1, idx0)
    std = math.sqrt(1.0 - float(abar[0]))
    l_0 = discretized_gaussian_nll(x0.double(), x0hat.double(), std, bin_width).flatten(1).sum(1)
    total = l_T + l_mid + l_0
    bpd = total / (dims * math.log(2.0))
    return {"nats": total, "bits_per_dim": bpd, "prior": l_T, "diffusion": l_mid, "decoder": l_0}
