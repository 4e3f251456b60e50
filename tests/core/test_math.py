"""The contextualized diffusion equations, checked numerically against independent computations.

Everything runs in float64 on a skipped-step schedule (every 50th of SD's 1000 training steps),
so each identity is exercised exactly as a ComfyUI scheduler would use it. The bias is the one the
samplers use, :class:`contextdiff.bias.ContextBias`, around a nonlinear relational network.
"""

import math

import pytest
import torch

from contextdiff import inversion, process, sampling, schedule
from contextdiff.bias import ContextBias

D = 6  # data dimension


@pytest.fixture(autouse=True)
def float64_default():
    """float64 throughout this module, restored afterwards so other test modules are unaffected."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def sd_abar() -> torch.Tensor:
    """SD1.x's scaled-linear training schedule, cumulative product (float64)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


ABAR = sd_abar()
ABAR_T = ABAR[-1]
SIGMA_T = schedule.sigma_from_abar(ABAR_T)
STEPS = list(range(999, -1, -50))[::-1]  # 19, 69, ..., 999: 20 skipped steps, ascending


def make_r(seed=0):
    """A nonlinear relational network r(x0, c, t) with a fixed context c."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, D, generator=g) / math.sqrt(D)
    c = torch.randn(D, generator=g)

    def r(x0, abar):
        return torch.tanh(x0 @ W.T + c) * (1.0 + torch.sin(3.0 * abar)) + 0.3 * x0**2

    return r


def context_bias(seed=0, strength=1.0) -> ContextBias:
    """The samplers' bias around :func:`make_r`: ``(b_t, b_{t-1})`` for one ``x0`` and a pair of sigmas."""
    r = make_r(seed)
    return ContextBias(
        lambda x0, sig: (r(x0, schedule.abar_from_sigma(sig[0])), r(x0, schedule.abar_from_sigma(sig[1]))),
        SIGMA_T,
        strength,
    )


def b_pair(bias: ContextBias, x0, abar_t, abar_p):
    """``(b_t(x0), b_{t-1}(x0))`` at two cumulative-schedule values."""
    return bias(x0, schedule.sigma_from_abar(abar_t), schedule.sigma_from_abar(abar_p))


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
    bias = context_bias()
    x = x0.expand(n, D).clone()
    abar_prev = torch.tensor(1.0)
    for t in STEPS:
        abar_t = ABAR[t]
        b_t, b_prev = b_pair(bias, x0, abar_t, abar_prev)
        mean, var = process.forward_kernel(x, abar_t, abar_prev, b_t, b_prev)
        x = mean + var.sqrt() * torch.randn(n, D, generator=g)
        want_mean, want_var = process.forward_marginal(x0, abar_t, b_t)
        # Tolerances from the sample count: 6 standard errors for the mean and the variance.
        se_mean = (want_var / n).sqrt()
        se_var = want_var * math.sqrt(2.0 / (n - 1))
        assert ((x.mean(0) - want_mean).abs() < 6 * se_mean).all(), t
        assert ((x.var(0) - want_var).abs() < 6 * se_var).all(), t
        abar_prev = abar_t
    # The bias is not trivially small: it moves the mean by many standard errors at mid-schedule.
    mid = ABAR[STEPS[len(STEPS) // 2]]
    assert (b_pair(bias, x0, mid, mid)[0].abs().max() / (1 - mid).sqrt() * math.sqrt(n)) > 50


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
    abar_t, abar_p = ABAR[STEPS[t_index]], ABAR[STEPS[t_index - 1]]
    bt, bp = b_pair(context_bias(3), x0, abar_t, abar_p)
    a = abar_t / abar_p
    x_t = torch.randn(D, generator=g)
    mean, var = process.posterior(x_t, x0, abar_t, abar_p, bt, bp)
    for d in range(D):  # coordinates are independent; condition each 2x2 joint separately
        m1 = abar_p.sqrt() * x0[d] + bp[d]
        v1 = 1 - abar_p
        shift = bt[d] - a.sqrt() * bp[d]
        mu = torch.stack([m1, a.sqrt() * m1 + shift])
        cov = torch.stack([torch.stack([v1, a.sqrt() * v1]), torch.stack([a.sqrt() * v1, a * v1 + (1 - a)])])
        cm, cv = gaussian_condition(mu, cov, [1], x_t[d : d + 1])
        torch.testing.assert_close(mean[d], cm[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var, cv[0, 0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ddim_posterior_keeps_marginal(eta):
    """Lemma 2: x_t ~ Eq. 1, one Eq. 18 step with the true x0 gives the Eq. 1 marginal at t-1."""
    n = 200_000
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(D, generator=g)
    bias = context_bias(5)
    for j in range(len(STEPS) - 1, 0, -1):
        abar_t, abar_p = ABAR[STEPS[j]], ABAR[STEPS[j - 1]]
        b_t, b_p = b_pair(bias, x0, abar_t, abar_p)
        x_t = process.forward_sample(x0.expand(n, D), abar_t, torch.randn(n, D, generator=g), b_t)
        x_p = process.ddim_step(x_t, x0.expand(n, D), abar_t, abar_p, b_t, b_p, torch.randn(n, D, generator=g), eta=eta)
        want_mean, want_var = process.forward_marginal(x0, abar_p, b_p)
        se_mean = (want_var / n).sqrt()
        se_var = want_var * math.sqrt(2.0 / (n - 1))
        assert ((x_p.mean(0) - want_mean).abs() < 6 * se_mean).all(), (eta, j)
        assert ((x_p.var(0) - want_var).abs() < 6 * se_var).all(), (eta, j)
        # Exactly, too: the step is affine in x_t, so push the Eq. 1 mean and variance through it.
        mean_t, var_t = process.forward_marginal(x0, abar_t, b_t)
        m_at_mean, s2 = process.ddim_posterior(mean_t, x0, abar_t, abar_p, b_t, b_p, eta)
        slope = process.ddim_posterior(mean_t + 1.0, x0, abar_t, abar_p, b_t, b_p, eta)[0] - m_at_mean
        torch.testing.assert_close(m_at_mean, want_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(slope**2 * var_t + s2, want_var.expand(D), rtol=1e-12, atol=1e-12)


def test_eta_one_is_ddpm_variance():
    for j in range(1, len(STEPS)):
        abar_t, abar_p = ABAR[STEPS[j]], ABAR[STEPS[j - 1]]
        _, var = process.posterior(torch.zeros(D), torch.zeros(D), abar_t, abar_p)
        torch.testing.assert_close(process.ddim_sigma(abar_t, abar_p, 1.0) ** 2, var, rtol=1e-12, atol=0)


def test_ddim_sigma_takes_floats_and_tensors():
    """Plain floats (as a caller with Python numbers passes them) give the tensor result."""
    abar_t, abar_p = float(ABAR[600]), float(ABAR[550])
    want = 0.4 * math.sqrt((1 - abar_p) / (1 - abar_t) * (1 - abar_t / abar_p))
    for args in ((abar_t, abar_p), (torch.tensor(abar_t), abar_p), (abar_t, torch.tensor(abar_p))):
        assert process.ddim_sigma(*args, 0.4).item() == pytest.approx(want, rel=1e-12)
    assert process.ddim_sigma(abar_p, abar_t, 1.0).item() == 0  # towards more noise: no posterior noise


def test_zero_bias_is_plain_ddpm_and_ddim():
    """With r = 0 (or no bias) every formula is the textbook eps-form DDPM/DDIM."""
    g = torch.Generator().manual_seed(11)
    x0, x_t, z = (torch.randn(D, generator=g) for _ in range(3))
    zero_r = ContextBias(lambda x, sig: (torch.zeros_like(x), torch.zeros_like(x)), SIGMA_T)
    for j in range(1, len(STEPS)):
        abar_t, abar_p = ABAR[STEPS[j]], ABAR[STEPS[j - 1]]
        alpha = abar_t / abar_p
        eps = (x_t - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
        # DDPM (Ho et al. 2020, Eq. 11 of that paper): mean from eps, variance beta-tilde.
        ddpm_mean = (x_t - (1 - alpha) / (1 - abar_t).sqrt() * eps) / alpha.sqrt()
        ddpm_var = (1 - abar_p) / (1 - abar_t) * (1 - alpha)
        for b_t, b_p in ((None, None), b_pair(zero_r, x0, abar_t, abar_p)):
            mean, var = process.posterior(x_t, x0, abar_t, abar_p, b_t, b_p)
            torch.testing.assert_close(mean, ddpm_mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(var, ddpm_var, rtol=1e-12, atol=0)
            for eta in (0.0, 0.5):
                s = eta * ((1 - abar_p) / (1 - abar_t) * (1 - alpha)).sqrt()
                ddim = abar_p.sqrt() * x0 + (1 - abar_p - s**2).sqrt() * eps + s * z
                got = process.ddim_step(x_t, x0, abar_t, abar_p, b_t, b_p, z, eta=eta)
                torch.testing.assert_close(got, ddim, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(
                process.forward_sample(x0, abar_t, z, b_t),
                abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * z,
                rtol=1e-14,
                atol=1e-14,
            )


def test_ddim_step_runs_both_ways():
    """Deterministic DDIM towards more noise, for the same x0hat and bias, undoes the step down (Eq. 11
    solved for x_t): the classic inversion step is the sampling step with its levels swapped."""
    g = torch.Generator().manual_seed(13)
    bias = context_bias(2)
    x0hat, x_t = torch.randn(D, generator=g), torch.randn(D, generator=g)
    for j in range(1, len(STEPS)):
        abar_t, abar_p = ABAR[STEPS[j]], ABAR[STEPS[j - 1]]
        b_t, b_p = b_pair(bias, x0hat, abar_t, abar_p)
        x_p = process.ddim_step(x_t, x0hat, abar_t, abar_p, b_t, b_p)
        torch.testing.assert_close(process.ddim_step(x_p, x0hat, abar_p, abar_t, b_p, b_t), x_t, rtol=0, atol=1e-12)


# --- The sampler loops against references written here from the equations (docs/design.md section 1) ---


def nonlinear_denoiser(seed=4):
    """A deterministic, nonlinear x0-predictor in k-space: ``model(x_k, sigma) -> x0hat``."""
    g = torch.Generator().manual_seed(seed)
    W, c = torch.randn(D, D, generator=g) / math.sqrt(D), torch.randn(D, generator=g)

    def model(x, sigma, **_):
        s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
        return torch.tanh(x @ W.T / (1 + s) + c) * (1 + 0.5 * torch.cos(s)) + x / (1 + s * s)

    return model


def reference_loop(model, x_k, sigmas, r, stochastic_step, noises):
    """Sampling by docs/design.md §1, written out here: VP conversion, k_t, the posterior or DDIM step.

    ``stochastic_step(x_t, x0hat, abar_t, abar_p, b_t, b_p, z) -> x_{t-1}``; ``noises`` are used in order, one per
    step with ``sigma_next > 0`` (the order ComfyUI's ``ddpm`` draws them).
    """
    noises = list(noises)
    abar_T = 1 / (1 + SIGMA_T**2)
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        abar_t, abar_p = 1 / (1 + s * s), 1 / (1 + s_next * s_next)
        x0hat = model(x_k, torch.full((x_k.shape[0],), s))

        def b(abar, x0hat=x0hat):  # b = k r(x0hat, t), k = sqrt(abar)(1 - sqrt(abar)), zero at T
            k = 0.0 if abar <= abar_T * (1 + 1e-9) else math.sqrt(abar) * (1 - math.sqrt(abar))
            return k * r(x0hat, torch.tensor(abar))

        x_t = x_k * math.sqrt(abar_t)
        z = noises.pop(0) if s_next > 0 else None
        x_p = stochastic_step(x_t, x0hat, abar_t, abar_p, b(abar_t), b(abar_p), z)
        x_k = x_p / math.sqrt(abar_p)
    assert not noises, "the loop used fewer noises than the reference drew"
    return x_k


def ddpm_reference(x_t, x0hat, abar_t, abar_p, b_t, b_p, z):
    beta = 1 - abar_t / abar_p
    mean = (
        math.sqrt(abar_p) * beta / (1 - abar_t) * x0hat
        + math.sqrt(abar_t / abar_p) * (1 - abar_p) / (1 - abar_t) * (x_t - b_t)
        + b_p
    )
    return mean if z is None else mean + math.sqrt((1 - abar_p) * beta / (1 - abar_t)) * z


def ddim_reference(eta):
    def step(x_t, x0hat, abar_t, abar_p, b_t, b_p, z):
        s = eta * math.sqrt((1 - abar_p) / (1 - abar_t) * (1 - abar_t / abar_p))
        c = math.sqrt(1 - abar_p - s * s) / math.sqrt(1 - abar_t)
        x_tilde = math.sqrt(abar_p) * x0hat + c * (x_t - math.sqrt(abar_t) * x0hat)
        out = x_tilde - b_t * c + b_p
        return out if z is None else out + s * z

    return step


def sd_sigmas(timesteps) -> torch.Tensor:
    """Descending sigmas at the given training timesteps, then 0 (a ComfyUI schedule)."""
    return torch.cat([schedule.sigma_from_abar(ABAR[list(timesteps)]), torch.zeros(1)])


@pytest.mark.parametrize("kind", ["ddpm", "ddim_eta"])
@pytest.mark.parametrize("timesteps", [range(999, 0, -111), range(951, 0, -50)], ids=["from_T", "below_T"])
def test_stochastic_loops_match_reference(kind, timesteps):
    """The DDPM loop and the eta > 0 DDIM loop, fixed noise and a nonlinear bias, against the reference."""
    g = torch.Generator().manual_seed(21)
    sigmas = sd_sigmas(timesteps)
    x = torch.randn(3, D, generator=g) * float(sigmas[0])
    noises = [torch.randn(3, D, generator=g) for _ in range(len(sigmas) - 2)]
    model, r = nonlinear_denoiser(), make_r(6)
    bias = ContextBias(
        lambda x0, sig: (r(x0, schedule.abar_from_sigma(sig[0])), r(x0, schedule.abar_from_sigma(sig[1]))), SIGMA_T
    )
    supply = iter(noises)
    noise_sampler = lambda *_: next(supply)  # noqa: E731
    if kind == "ddpm":
        got = sampling.sample_contextdiff_ddpm(model, x, sigmas, noise_sampler=noise_sampler, bias=bias, disable=True)
        want = reference_loop(model, x, sigmas, r, ddpm_reference, noises)
    else:
        got = sampling.sample_contextdiff_ddim(
            model, x, sigmas, eta=0.7, noise_sampler=noise_sampler, bias=bias, disable=True
        )
        want = reference_loop(model, x, sigmas, r, ddim_reference(0.7), noises)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # The bias matters at this tolerance: the plain loop lands far away.
    plain = reference_loop(
        model,
        x,
        sigmas,
        lambda x0, abar: torch.zeros_like(x0),
        ddpm_reference if kind == "ddpm" else ddim_reference(0.7),
        noises,
    )
    assert (plain - want).abs().max() > 1e-3


@pytest.mark.parametrize("start_has_bias", [True, False])
def test_first_step_bias_below_T(start_has_bias):
    """A schedule that starts below T (ddim_uniform starts at t = 951): a latent that carries b_t there (from an
    inversion) has it subtracted at the first step (k_951 > 0); a latent ComfyUI noised carries none, so the
    first step takes b_t = 0, as every start at T does (k_T = 0). From the second step on both use the bias."""
    seen = []

    def r(x0, sig):
        return torch.ones_like(x0), torch.ones_like(x0)

    def record(x0hat, sigma, sigma_next):
        b_t, b_next = ContextBias(r, SIGMA_T)(x0hat, sigma, sigma_next)
        seen.append((float(b_t.abs().max()), float(b_next.abs().max())))
        return b_t, b_next

    def first_b_t(sigmas, start_has_bias):
        """The b_t the first step subtracts, read off the step: the same run with b_t forced to 0 differs by c b_t."""
        seen.clear()
        x = torch.full((1, D), 3.0)
        out = sampling.sample_contextdiff_ddim(
            model, x, sigmas[:2], bias=record, disable=True, start_has_bias=start_has_bias
        )
        no_bt = sampling.sample_contextdiff_ddim(
            model, x, sigmas[:2], disable=True, bias=lambda x0, s, n: (torch.zeros_like(x0), record(x0, s, n)[1])
        )
        abar_t, abar_p = (float(schedule.abar_from_sigma(s)) for s in sigmas[:2])
        c = math.sqrt(1 - abar_p) / math.sqrt(1 - abar_t)
        return float((no_bt - out).abs().max()) * math.sqrt(abar_p) / c  # VP units

    model = nonlinear_denoiser()
    below, at_T = sd_sigmas(range(951, 0, -50)), sd_sigmas(range(999, 0, -50))
    abar0 = float(schedule.abar_from_sigma(below[0]))
    k_951 = math.sqrt(abar0) * (1 - math.sqrt(abar0))
    assert first_b_t(below, start_has_bias) == pytest.approx(k_951 if start_has_bias else 0.0, rel=1e-6, abs=1e-12)
    assert first_b_t(at_T, start_has_bias) == pytest.approx(0.0, abs=1e-12)
    seen.clear()
    sampling.sample_contextdiff_ddim(
        model, torch.ones(1, D), below, bias=record, disable=True, start_has_bias=start_has_bias
    )
    assert seen[0][1] > 0 and seen[1][0] > 0  # the bias enters from the first step's b_{t-1} on


def test_unsampling_is_the_classic_inversion_step():
    """DDIM on increasing sigmas (FlipSigmas) takes x0hat at the lower level: Euler in k-space, like core ddim,
    down to sigma 1e-4 (where 1 - abar is below float32's resolution)."""
    model = nonlinear_denoiser()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, D, generator=g).float()
    sigmas = torch.tensor([1e-4, 0.03, 0.5, 3.0, 14.6])
    got = sampling.sample_contextdiff_ddim(lambda v, s: model(v.double(), s.double()).float(), x, sigmas, disable=True)
    euler = x.double()
    for s, s_next in zip(sigmas[:-1].double(), sigmas[1:].double(), strict=True):
        d = (euler - model(euler, s.expand(2))) / s
        euler = euler + d * (s_next - s)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), euler, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="only deterministic DDIM runs towards more noise"):
        sampling.sample_contextdiff_ddpm(model, x.double(), sigmas.double(), disable=True)
    with pytest.raises(ValueError, match="rise from 0"):
        sampling.sample_contextdiff_ddim(model, x.double(), torch.tensor([0.0, 1.0]), disable=True)


class GaussianDenoiser:
    """The exact E[x0 | x_k] for data x0 ~ N(mu, diag(s^2)) under x_k = x0 + sigma eps (k-space)."""

    def __init__(self, mu, s):
        self.mu, self.s2 = mu, s * s
        self.calls = 0

    def __call__(self, x, sigma, **_):
        self.calls += 1
        sig2 = sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2
        return self.mu + self.s2 / (self.s2 + sig2) * (x - self.mu)


def test_inversion_then_sampling_returns_input():
    """Bias-aware inversion, solved exactly at each step, then contextual DDIM gives back x0."""
    g = torch.Generator().manual_seed(17)
    mu, s = torch.randn(D, generator=g), 0.8
    denoiser = GaussianDenoiser(mu, s)
    r = make_r(9)
    bias = ContextBias(
        lambda x0, sig: (r(x0, schedule.abar_from_sigma(sig[0])), r(x0, schedule.abar_from_sigma(sig[1]))), SIGMA_T
    )
    sig_desc = sd_sigmas(STEPS[::-1])
    x0 = mu + s * torch.randn(3, D, generator=g)
    noise = inversion.invert_ddim(denoiser, x0, sig_desc.flip(0), bias=bias, refine_steps=50, disable=True)
    back = sampling.sample_contextdiff_ddim(denoiser, noise, sig_desc, bias=bias, disable=True)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-11)
    # Without the bias at sampling time the round trip breaks: the bias really is in the loop.
    plain = sampling.sample_contextdiff_ddim(denoiser, noise, sig_desc, disable=True)
    assert (plain - x0).abs().max() > 1e-3
    # Unrefined inversion is the familiar approximate DDIM inversion, close but not exact.
    rough = inversion.invert_ddim(denoiser, x0, sig_desc.flip(0), bias=bias, disable=True)
    err = (sampling.sample_contextdiff_ddim(denoiser, rough, sig_desc, bias=bias, disable=True) - x0).abs().max()
    assert 1e-11 < err < 0.5
    with pytest.raises(ValueError, match="sigmas must increase"):
        inversion.invert_ddim(denoiser, x0, sig_desc, disable=True)


def test_context_bias_prior_and_strength():
    """k_T = 0 at sigma_max (the prior is untouched), strength scales b linearly, 0 switches it off."""
    calls = []

    def r(x0, sig):
        calls.append(sig)
        return torch.ones_like(x0), 2 * torch.ones_like(x0)

    sig_lo = schedule.sigma_from_abar(ABAR[500])
    x = torch.zeros(D)
    b_T, b_lo = ContextBias(r, SIGMA_T, 1.0)(x, SIGMA_T, sig_lo)
    assert (b_T == 0).all()
    torch.testing.assert_close(b_lo, 2 * schedule.k_coefficient(ABAR[500]).expand(D))
    _, b_half = ContextBias(r, SIGMA_T, 0.5)(x, SIGMA_T, sig_lo)
    torch.testing.assert_close(b_half, 0.5 * b_lo)
    n = len(calls)
    b0, b1 = ContextBias(r, SIGMA_T, 0.0)(x, SIGMA_T, sig_lo)
    assert len(calls) == n and (b0 == 0).all() and (b1 == 0).all()


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_strength_is_refused_by_name(strength):
    with pytest.raises(ValueError, match="adapter_strength is .*not a finite number"):
        ContextBias(lambda x0, sig: (x0, x0), SIGMA_T, strength)
