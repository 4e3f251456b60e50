"""The variational bound (Eq. 4) estimator, each piece checked against an independent computation:
torch.distributions for the prior KL, numerical quadrature of the Gaussian density for the decoder,
the posterior means written out here for the diffusion terms. The bias vanishes at T (k_T = 0)."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from contextdiff.likelihood import discretized_gaussian_nll, variational_bound
from contextdiff.schedule import k_coefficient

BIN = 2 / 16


def schedule(T=50):
    betas = torch.linspace(1e-3, 0.2, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def k_scaled_bias(abar):
    """``b_t = k_t r(x0, t)`` with a nonlinear ``r``; ``k_T = 0`` at the schedule's last step."""

    def bias(x, idx):
        k = k_coefficient(abar[idx], abar[-1]).reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return k * (0.8 * torch.tanh(2 * x) + 0.1 * (idx.reshape(-1, *([1] * (x.dim() - 1))) % 3))

    return bias


def quadrature_nll(x0: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """``-log`` of the Gaussian density integrated over each value's bin by the trapezoid rule (edge bins
    reach 12 standard deviations past the data range, where the density is below 1e-30)."""
    lo = torch.where(x0 <= -1 + 1e-6, torch.full_like(x0, -1.0) - 12 * std, x0 - BIN / 2)
    hi = torch.where(x0 >= 1 - 1e-6, torch.full_like(x0, 1.0) + 12 * std, x0 + BIN / 2)
    u = torch.linspace(0, 1, 20001, dtype=torch.float64)
    grid = lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * u
    density = Normal(mean.unsqueeze(-1), std).log_prob(grid).exp()
    return -torch.log(torch.trapezoid(density, grid, dim=-1))


def test_discretized_gaussian_is_a_distribution():
    levels = torch.linspace(-1, 1, 17, dtype=torch.float64)
    for mean, std in ((0.1, 0.05), (-0.9, 0.3), (1.5, 0.2)):
        p = torch.exp(-discretized_gaussian_nll(levels, torch.tensor(mean, dtype=torch.float64), std, BIN))
        assert abs(p.sum().item() - 1.0) < 1e-9


def test_discretized_gaussian_matches_quadrature():
    levels = torch.linspace(-1, 1, 17, dtype=torch.float64)
    for mean, std in ((0.1, 0.05), (-0.9, 0.3), (0.97, 0.02)):
        mean_t = torch.full_like(levels, mean)
        got = discretized_gaussian_nll(levels, mean_t, std, BIN)
        want = quadrature_nll(levels, mean_t, std)
        # Bins with a probability above 1e-9; further out the estimator clamps at 1e-12 on purpose.
        held = want < 20
        assert held.sum() >= 2
        torch.testing.assert_close(got[held], want[held], rtol=1e-6, atol=1e-8)


def test_perfect_denoiser_leaves_prior_and_decoder():
    """x0hat = x0 (and the same bias): every L_{t-1} is 0; the bound is L_T + L_0, computed independently."""
    abar = schedule()
    levels = torch.linspace(-1, 1, 17, dtype=torch.float64)
    x0 = levels[torch.randint(0, 17, (4, 1, 2, 2), generator=torch.Generator().manual_seed(3))]
    out = variational_bound(
        x0,
        abar,
        lambda x_t, idx: x0,
        k_scaled_bias(abar),
        bin_width=BIN,
        t_samples=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert out["diffusion"].abs().max() < 1e-12
    q_T = Normal(abar[-1].sqrt() * x0, (1 - abar[-1]).sqrt())
    prior = kl_divergence(q_T, Normal(torch.zeros_like(x0), torch.ones_like(x0))).flatten(1).sum(1)
    torch.testing.assert_close(out["prior"], prior, rtol=1e-10, atol=1e-12)
    decoder = quadrature_nll(x0, x0, math.sqrt(1 - abar[0])).flatten(1).sum(1)
    torch.testing.assert_close(out["decoder"], decoder, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(out["bits_per_dim"], (prior + decoder) / (4 * math.log(2)), rtol=1e-6, atol=1e-8)


def test_bias_not_zero_at_T_is_refused():
    """The prior term assumes k_T = 0; a bias that does not vanish there is a bad input, named as such."""
    abar = schedule()
    x0 = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="must vanish at T"):
        variational_bound(x0, abar, lambda x_t, idx: x0, lambda x, idx: 0.1 + 0 * x, BIN, t_samples=5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_stratified_sum_is_exact_with_one_t_per_stratum(with_bias):
    """With T-1 strata each L_{t-1} is evaluated once: the estimate is the full sum, computed here
    from Eq. 3's posterior means written out, for x0 and b(x0) against x0hat and b(x0hat)."""
    T = 20
    abar = schedule(T)
    x0 = torch.rand(3, 1, 2, 2, dtype=torch.float64) * 2 - 1
    bias = k_scaled_bias(abar) if with_bias else None
    denoise = lambda x_t, idx: 0.5 * x_t  # noqa: E731  (a deliberately poor denoiser)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    out = variational_bound(x0, abar, denoise, bias, BIN, t_samples=T - 1, generator=g1)

    def b(x, t):
        return bias(x, torch.full((3,), t)) if with_bias else torch.zeros_like(x)

    total = torch.zeros(3, dtype=torch.float64)
    for t in range(1, T):
        torch.randint(t, t + 1, (1,), generator=g2)  # the estimator draws t here
        eps = torch.randn(x0.shape, generator=g2, dtype=torch.float32).double()
        x_t = abar[t].sqrt() * x0 + b(x0, t) + (1 - abar[t]).sqrt() * eps
        x0hat = 0.5 * x_t
        beta = 1 - abar[t] / abar[t - 1]
        c_x0 = abar[t - 1].sqrt() * beta / (1 - abar[t])
        c_xt = (1 - beta).sqrt() * (1 - abar[t - 1]) / (1 - abar[t])
        mu_q = c_x0 * x0 + c_xt * (x_t - b(x0, t)) + b(x0, t - 1)
        mu_p = c_x0 * x0hat + c_xt * (x_t - b(x0hat, t)) + b(x0hat, t - 1)
        var = (1 - abar[t - 1]) * beta / (1 - abar[t])
        total += ((mu_q - mu_p) ** 2 / (2 * var)).flatten(1).sum(1)
    torch.testing.assert_close(out["diffusion"], total, rtol=1e-10, atol=1e-12)
