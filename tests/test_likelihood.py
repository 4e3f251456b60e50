"""The variational bound (Eq. 4) estimator: exact pieces checked independently."""

import math

import torch

from contextdiff.likelihood import discretized_gaussian_nll, variational_bound


def schedule(T=50):
    betas = torch.linspace(1e-3, 0.2, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def test_discretized_gaussian_is_a_distribution():
    levels = torch.linspace(-1, 1, 17, dtype=torch.float64)
    for mean, std in ((0.1, 0.05), (-0.9, 0.3), (1.5, 0.2)):
        p = torch.exp(-discretized_gaussian_nll(levels, torch.tensor(mean, dtype=torch.float64), std, 2 / 16))
        assert abs(p.sum().item() - 1.0) < 1e-9


def test_perfect_denoiser_leaves_prior_and_decoder():
    """x0hat = x0 (and the same bias): every L_{t-1} is 0; the bound is L_T + L_0, both closed form."""
    abar = schedule()
    x0 = torch.rand(4, 1, 2, 2, dtype=torch.float64) * 2 - 1
    bias = lambda x, idx: 0.3 * torch.tanh(x) * (idx.reshape(-1, 1, 1, 1) % 3)
    out = variational_bound(x0, abar, lambda x_t, idx: x0, bias, bin_width=2 / 16, t_samples=10,
                            generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out["diffusion"], torch.zeros(4, dtype=torch.float64))
    var_T, mean_T = 1 - abar[-1], abar[-1].sqrt() * x0
    prior = (0.5 * (var_T + mean_T ** 2 - 1 - torch.log(var_T))).flatten(1).sum(1)
    torch.testing.assert_close(out["prior"], prior)
    decoder = discretized_gaussian_nll(x0, x0, math.sqrt(1 - abar[0]), 2 / 16).flatten(1).sum(1)
    torch.testing.assert_close(out["decoder"], decoder)
    torch.testing.assert_close(out["bits_per_dim"], (prior + decoder) / (4 * math.log(2)))


def test_stratified_sum_is_exact_with_one_t_per_stratum():
    """With T-1 strata each L_{t-1} is evaluated once: the estimate is the full sum, computed here
    independently as the mean squared error of the posterior means."""
    abar = schedule(20)
    x0 = torch.rand(3, 1, 2, 2, dtype=torch.float64) * 2 - 1
    denoise = lambda x_t, idx: 0.5 * x_t          # a deliberately poor denoiser
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    out = variational_bound(x0, abar, denoise, None, 2 / 16, t_samples=19, generator=g1)
    total = torch.zeros(3, dtype=torch.float64)
    for t in range(1, 20):
        torch.randint(t, t + 1, (1,), generator=g2)                     # the estimator draws t here
        eps = torch.randn(x0.shape, generator=g2, dtype=torch.float32).double()
        x_t = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps
        beta = 1 - abar[t] / abar[t - 1]
        coef = abar[t - 1].sqrt() * beta / (1 - abar[t])                 # posterior weight on x0
        var = (1 - abar[t - 1]) * beta / (1 - abar[t])
        total += ((coef * (x0 - 0.5 * x_t)) ** 2 / (2 * var)).flatten(1).sum(1)
    torch.testing.assert_close(out["diffusion"], total, rtol=1e-5, atol=1e-8)
