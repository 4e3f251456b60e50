"""The contextualized diffusion equations, checked numerically against independent computations.

Everything runs in float64 on a skipped-step schedule (every 50th of SD's 1000 training steps),
so each identity is exercised exactly as a ComfyUI scheduler would use it.
"""

import math

import pytest
import torch

from contextdiff import process, sampling, schedule

D = 6


@pytest.fixture(autouse=True)
def float64_default():
    """float64 throughout this module, restored afterwards so other test modules are unaffected."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
  # data dimension


def sd_abar() -> torch.Tensor:
    """SD1.x's scaled-linear training schedule, cumulative product (float64)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


ABAR = sd_abar()
ABAR_T = ABAR[-1]
STEPS = list(range(999, -1, -50))[::-1]  # 19, 69, ..., 999: 20 skipped steps, ascending


def make_r(seed=0):
    """A nonlinear relational network r(x0, c, t) with a fixed context c."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, D, generator=g) / math.sqrt(D)
    c = torch.randn(D, generator=g)

    def r(x0, abar):
        return torch.tanh(x0 @ W.T + c) * (1.0 + torch.sin(3.0 * abar)) + 0.3 * x0 ** 2

    return r


def bias_fn(seed=0):
    return process.scaled_bias(make_r(seed), ABAR_T)


def test_k_coefficient():
    k = schedule.k_coefficient(ABAR, ABAR_T)
    root = ABAR.sqrt()
    assert k[-1] == 0, "k_T must vanish at the last training timestep"
    torch.testing.assert_close(k[:-1], root[:-1] * (1 - root[:-1]), rtol=1e-15, atol=0)
    assert (k[:-1] > 0).all()
    assert schedule.k_coefficient(torch.tensor(1.0)) == 0  # sigma 0: clean data carries no bias
    # Sigma round trip and k from sigma agree with k from abar.
    sig = schedule.sigma_from_abar(ABAR)
    torch.testing.assert_close(schedule.abar_from_sigma(sig), ABAR, rtol=1e-14, atol=0)
    torch.testing.assert_close(schedule.k_from_sigma(sig, sig[-1]), k, rtol=1e-12, atol=0)


def test_chained_kernels_reproduce_marginal():
    """Lemma 1: x_0 -> Eq. 2 transitions over skipped steps gives the Eq. 1 marginal at every t."""
    n = 200_000
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(D, generator=g)
    b = bias_fn()
    x = x0.expand(n, D).clone()
    abar_prev = torch.tensor(1.0)
    for t in STEPS:
        abar_t = ABAR[t]
        mean, var = process.forward_kernel(x, x0, abar_t, abar_prev, b, b)
        x = mean + var.sqrt() * torch.randn(n, D, generator=g)
        want_mean, want_var = process.forward_marginal(x0, abar_t, b)
        # Tolerances from the sample count: 6 standard errors for the mean and the variance.
        se_mean = (want_var / n).sqrt()
        se_var = want_var * math.sqrt(2.0 / (n - 1))
        assert ((x.mean(0) - want_mean).abs() < 6 * se_mean).all(), t
        assert ((x.var(0) - want_var).abs() < 6 * se_var).all(), t
        abar_prev = abar_t
    # The bias is not trivially small: it moves the mean by many standard errors at mid-schedule.
    mid = ABAR[STEPS[len(STEPS) // 2]]
    assert (b(x0, mid).abs().max() / (1 - mid).sqrt() * math.sqrt(n)) > 50


def gaussian_condition(mu, cov, idx_given, value):
    """Mean and covariance of a Gaussian's remaining coordinates given ``idx_given = value``."""
    keep = [i for i in range(len(mu)) if i not in idx_given]
    S11 = cov[keep][:, keep]
    S12 = cov[keep][:, idx_given]
    S22 = cov[idx_given][:, idx_given]
    gain = S12 @ torch.linalg.inv(S22)
    return mu[keep] + gain @ (value - mu[idx_given]), S11 - gain @ S12.T


@pytest.mark.parametrize("t_index", [1, 5, 12, 19])
def test_posterior_is_bayes_rule(t_index):
    """Eq. 3 equals the conditional of the joint (x_{t-1}, x_t | x0) built from Eq. 1 and Eq. 2."""
    g = torch.Generator().manual_seed(t_index)
    x0 = torch.randn(D, generator=g)
    b = bias_fn(3)
    abar_t, abar_p = ABAR[STEPS[t_index]], ABAR[STEPS[t_index - 1]]
    bt, bp = b(x0, abar_t), b(x0, abar_p)
    a = abar_t / abar_p
    x_t = torch.randn(D, generator=g)
    mean, var = process.posterior(x_t, x0, abar_t, abar_p, b, b)
    for d in range(D):  # coordinates are independent; condition each 2x2 joint separately
        m1 = abar_p.sqrt() * x0[d] + bp[d]
        v1 = 1 - abar_p
        shift = bt[d] - a.sqrt() * bp[d]
        mu = torch.stack([m1, a.sqrt() * m1 + shift])
        cov = torch.stack([torch.stack([v1, a.sqrt() * v1]), torch.stack([a.sqrt() * v1, a * v1 + (1 - a)])])
        cm, cv = gaussian_condition(mu, cov, [1], x_t[d:d + 1])
        torch.testing.assert_close(mean[d], cm[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var, cv[0, 0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ddim_posterior_keeps_marginal(eta):
    """Lemma 2: x_t ~ Eq. 1, one Eq. 18 step with the true x0 gives the Eq. 1 marginal at t-1."""
    n = 200_000
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(D, generator=g)
    b = bias_fn(5)
    for j in range(len(STEPS) - 1, 0, -1):
        abar_t, abar_p = ABAR[STEPS[j]], ABAR[STEPS[j - 1]]
        x_t = process.forward_sample(x0.expand(n, D), abar_t, torch.randn(n, D, generator=g), b)
        x_p = process.ddim_step(x_t, x0.expand(n, D), abar_t, abar_p, b, b, eta, torch.randn(n, D, generator=g))
        want_mean, want_var = process.forward_marginal(x0, abar_p, b)
        se_mean = (want_var / n).sqrt()
        se_var = want_var * math.sqrt(2.0 / (n - 1))
        assert ((x_p.mean(0) - want_mean).abs() < 6 * se_mean).all(), (eta, j)
        assert ((x_p.var(0) - want_var).abs() < 6 * se_var).all(), (eta, j)
        # Exactly, too: the step is affine in x_t, so push the Eq. 1 mean and variance through it.
        mean_t, var_t = process.forward_marginal(x0, abar_t, b)
        m_at_mean, s2 = process.ddim_posterior(mean_t, x0, abar_t, abar_p, b, b, eta)
        slope = process.ddim_posterior(mean_t + 1.0, x0, abar_t, abar_p, b, b, eta)[0] - m_at_mean
        torch.testing.assert_close(m_at_mean, want_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(slope ** 2 * var_t + s2, want_var.expand(D), rtol=1e-12, atol=1e-12)


def test_eta_one_is_ddpm_variance():
    for j in range(1, len(STEPS)):
        abar_t, abar_p = ABAR[STEPS[j]], ABAR[STEPS[j - 1]]
        _, var = process.posterior(torch.zeros(D), torch.zeros(D), abar_t, abar_p)
        torch.testing.assert_close(process.ddim_sigma(abar_t, abar_p, 1.0) ** 2, var, rtol=1e-12, atol=0)


def test_zero_bias_is_plain_ddpm_and_ddim():
    """With r = 0 (or no bias) every formula is the textbook eps-form DDPM/DDIM."""
    g = torch.Generator().manual_seed(11)
    x0, x_t, z = (torch.randn(D, generator=g) for _ in range(3))
    zero_r = process.scaled_bias(lambda x, abar: torch.zeros_like(x), ABAR_T)
    for j in range(1, len(STEPS)):
        abar_t, abar_p = ABAR[STEPS[j]], ABAR[STEPS[j - 1]]
        alpha = abar_t / abar_p
        eps = (x_t - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
        # DDPM (Ho et al. 2020, Eq. 11 of that paper): mean from eps, variance beta-tilde.
        ddpm_mean = (x_t - (1 - alpha) / (1 - abar_t).sqrt() * eps) / alpha.sqrt()
        ddpm_var = (1 - abar_p) / (1 - abar_t) * (1 - alpha)
        for bias in (None, zero_r):
            mean, var = process.posterior(x_t, x0, abar_t, abar_p, bias, bias)
            torch.testing.assert_close(mean, ddpm_mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(var, ddpm_var, rtol=1e-12, atol=0)
            for eta in (0.0, 0.5):
                s = eta * ((1 - abar_p) / (1 - abar_t) * (1 - alpha)).sqrt()
                ddim = abar_p.sqrt() * x0 + (1 - abar_p - s ** 2).sqrt() * eps + s * z
                got = process.ddim_step(x_t, x0, abar_t, abar_p, bias, bias, eta, z)
                torch.testing.assert_close(got, ddim, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(process.forward_sample(x0, abar_t, z, bias),
                                       abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * z, rtol=1e-14, atol=1e-14)


def test_inverse_step_inverts_ddim_step():
    g = torch.Generator().manual_seed(13)
    b = bias_fn(2)
    x0hat, x_t = torch.randn(D, generator=g), torch.randn(D, generator=g)
    for j in range(1, len(STEPS)):
        abar_t, abar_p = ABAR[STEPS[j]], ABAR[STEPS[j - 1]]
        x_p = process.ddim_step(x_t, x0hat, abar_t, abar_p, b, b)
        back = process.ddim_inverse_step(x_p, x0hat, abar_p, abar_t, b, b)
        torch.testing.assert_close(back, x_t, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="sigma > 0"):
        process.ddim_inverse_step(x_t, x0hat, torch.tensor(1.0), ABAR[10])


class GaussianDenoiser:
    """The exact E[x0 | x_k] for data x0 ~ N(mu, s^2 I) under x_k = x0 + sigma eps (k-space)."""

    def __init__(self, mu, s):
        self.mu, self.s2 = mu, s * s
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        sig2 = sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2
        return self.mu + self.s2 / (self.s2 + sig2) * (x - self.mu)


def test_inversion_then_sampling_returns_input():
    """Bias-aware inversion (refined to its fixed point) then contextual DDIM gives back x0."""
    g = torch.Generator().manual_seed(17)
    mu, s = torch.randn(D, generator=g), 0.8
    denoiser = GaussianDenoiser(mu, s)
    r = make_r(9)
    sigma_T = schedule.sigma_from_abar(ABAR_T)
    bias = sampling.ContextBias(lambda x0, sig: (r(x0, schedule.abar_from_sigma(sig[0])),
                                                 r(x0, schedule.abar_from_sigma(sig[1]))), sigma_T)
    sig_desc = torch.cat([schedule.sigma_from_abar(ABAR[STEPS[::-1]]), torch.zeros(1)])
    x0 = mu + s * torch.randn(3, D, generator=g)
    noise = sampling.invert_ddim(denoiser, x0, sig_desc.flip(0), bias=bias, refine_steps=200, disable=True)
    back = sampling.sample_contextdiff_ddim(denoiser, noise, sig_desc, bias=bias, disable=True)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-11)
    # Without the bias at sampling time the round trip breaks: the bias really is in the loop.
    plain = sampling.sample_contextdiff_ddim(denoiser, noise, sig_desc, disable=True)
    assert (plain - x0).abs().max() > 1e-3
    # Unrefined inversion is the familiar approximate DDIM inversion, close but not exact.
    rough = sampling.invert_ddim(denoiser, x0, sig_desc.flip(0), bias=bias, disable=True)
    err = (sampling.sample_contextdiff_ddim(denoiser, rough, sig_desc, bias=bias, disable=True) - x0).abs().max()
    assert 1e-11 < err < 0.5


def test_context_bias_prior_and_strength():
    """k_T = 0 at sigma_max (the prior is untouched), strength scales b linearly, 0 switches it off."""
    calls = []

    def r(x0, sig):
        calls.append(sig)
        return torch.ones_like(x0), 2 * torch.ones_like(x0)

    sigma_T = schedule.sigma_from_abar(ABAR_T)
    sig_lo = schedule.sigma_from_abar(ABAR[500])
    x = torch.zeros(D)
    b_T, b_lo = sampling.ContextBias(r, sigma_T, 1.0)(x, sigma_T, sig_lo)
    assert (b_T == 0).all()
    torch.testing.assert_close(b_lo, 2 * schedule.k_coefficient(ABAR[500]).expand(D))
    _, b_half = sampling.ContextBias(r, sigma_T, 0.5)(x, sigma_T, sig_lo)
    torch.testing.assert_close(b_half, 0.5 * b_lo)
    n = len(calls)
    b0, b1 = sampling.ContextBias(r, sigma_T, 0.0)(x, sigma_T, sig_lo)
    assert len(calls) == n and (b0 == 0).all() and (b1 == 0).all()
