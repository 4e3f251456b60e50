"""Zero terminal SNR (abar_T = 0): what the contextualized equations do there, proved numerically.

The decision (README "Model families"): at ``abar_T = 0`` the formulas need no special case.
- ``k_T = 0`` twice over: by the paper's rule at the last training step and by ``sqrt(abar)(1 - sqrt(abar))``
  itself, so the prior ``x_T ~ N(0, I)`` stays untouched.
- The forward kernel (Eq. 2) into ``T`` has ``a_T = 0``: ``x_T`` is independent of ``x_{T-1}``, so the
  posterior (Eq. 3) at ``T`` is Eq. 1's marginal at ``T-1``; DDPM's first step ignores ``x_T``. The DDIM
  step from ``T`` is ``sqrt(abar_{T-1}) x0hat + sqrt(1 - abar_{T-1}) x_T + b_{T-1}``: finite, no division by 0.
- Inversion's last step has the unique solution ``x_T = eps`` of that map (a denoiser's ``x0hat`` at zero SNR
  does not depend on ``x_T``), so inversion followed by sampling is still exact.
- In k-diffusion space ``sigma_T`` is infinite; ComfyUI stores ``abar_T = 4.897e-8`` instead (sigma 4519,
  ``rescale_zero_terminal_snr_sigmas``). Every formula is continuous at ``abar_T = 0``: the samplers on
  ComfyUI's schedule stay within ``O(sqrt(abar_T))`` of the exact ``abar_T = 0`` process (tested below).
"""

import math

import pytest
import torch

from contextdiff import process, sampling, schedule
from contextdiff.bias import ContextBias
from contextdiff.inversion import invert_ddim

D = 6
COMFY_ABAR_T = 4.8973451890853435e-08  # ComfyUI's stand-in for abar_T = 0


def zsnr_abar() -> torch.Tensor:
    """SD's scaled-linear schedule rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1), float64:
    ``sqrt(abar)`` shifted so its last entry is 0 and scaled so its first is unchanged."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    root = torch.cumprod(1.0 - betas, 0).sqrt()
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    return root**2


ABAR = zsnr_abar()
STEPS = list(range(999, -1, -111))[::-1]  # 9 skipped steps ending at T = 999


def make_r(seed=0):
    """A nonlinear relational network r(x0, abar) with a fixed context."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    c = torch.randn(D, generator=g, dtype=torch.float64)
    return lambda x0, abar: (
        torch.tanh(x0 @ W.T.to(x0.dtype) + c.to(x0.dtype)) * (1.0 + torch.sin(3.0 * abar)) + 0.3 * x0**2
    )


def pair(r):
    """``r`` as the samplers' relational pair (both sigmas of a step, one call)."""
    return lambda x0, sig: (r(x0, schedule.abar_from_sigma(sig[0])), r(x0, schedule.abar_from_sigma(sig[1])))


class GaussianDenoiser:
    """The exact E[x0 | x_k] for data x0 ~ N(mu, s^2 I) under x_k = x0 + sigma eps (k-space)."""

    def __init__(self, mu, s):
        self.mu, self.s2 = mu, s * s

    def __call__(self, x, sigma, **_):
        sig2 = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype) ** 2
        return self.mu.to(x.dtype) + self.s2 / (self.s2 + sig2) * (x - self.mu.to(x.dtype))

    def vp(self, x_vp, abar):
        """The same posterior mean for a VP latent; at abar = 0 it is the prior mean."""
        root = abar.sqrt()
        return self.mu + self.s2 * root / (abar * self.s2 + 1.0 - abar) * (x_vp - root * self.mu)


def test_schedule_matches_comfyui(comfy_inprocess):
    """Our float64 rescale is ComfyUI's (zsnr=True), which only replaces abar_T = 0 by 4.9e-8."""
    import comfy.model_sampling

    sigmas = comfy.model_sampling.ModelSamplingDiscrete(zsnr=True).sigmas.double()
    abar = schedule.abar_from_sigma(sigmas)
    torch.testing.assert_close(abar[:-1], ABAR[:-1], rtol=2e-6, atol=1e-9)
    assert ABAR[-1] == 0 and math.isclose(float(abar[-1]), COMFY_ABAR_T, rel_tol=1e-4)
    assert math.isinf(float(schedule.sigma_from_abar(ABAR[-1])))
    assert float(schedule.abar_from_sigma(torch.tensor(math.inf, dtype=torch.float64))) == 0


def test_k_vanishes_at_zero_terminal_snr():
    k = schedule.k_coefficient(ABAR, ABAR[-1])
    assert k[-1] == 0 and (k[:-1] > 0).all()
    assert schedule.k_coefficient(torch.tensor(0.0, dtype=torch.float64)) == 0  # by the formula, no rule needed
    sigma_T = schedule.sigma_from_abar(torch.tensor(COMFY_ABAR_T, dtype=torch.float64))
    below = schedule.sigma_from_abar(ABAR[STEPS[-2]])
    k_comfy = schedule.k_from_sigma(torch.stack([sigma_T, below]).float(), float(sigma_T))
    assert k_comfy[0] == 0 and k_comfy[1] > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_steps_at_abar_zero_are_finite_and_exact(dtype):
    """Each formula evaluated exactly at abar_T = 0, against its independent derivation."""
    g = torch.Generator().manual_seed(3)
    x0, x_T, x_p, eps = (torch.randn(D, generator=g, dtype=torch.float64).to(dtype) for _ in range(4))
    zero, abar_p = torch.tensor(0.0, dtype=dtype), ABAR[STEPS[-2]].to(dtype)
    r = make_r(1)
    b_T = schedule.k_coefficient(zero, zero) * r(x0, zero)
    b_p = schedule.k_coefficient(abar_p, zero) * r(x0, abar_p)
    assert (b_T == 0).all() and b_p.abs().max() > 0
    tol = dict(rtol=0, atol=1e-12 if dtype == torch.float64 else 2e-6)
    # Eq. 1 at T is the prior.
    torch.testing.assert_close(process.forward_sample(x0, zero, eps, b_T), eps, **tol)
    # Eq. 2 into T: a_T = 0, so x_T is N(0, I) whatever x_{T-1} is.
    mean, var = process.forward_kernel(x_p, zero, abar_p, b_T, b_p)
    torch.testing.assert_close(mean, torch.zeros_like(x_p), **tol)
    torch.testing.assert_close(var, torch.ones_like(var), **tol)
    # Hence Bayes: the posterior at T is Eq. 1's marginal at T-1, independent of x_T.
    mean, var = process.posterior(x_T, x0, zero, abar_p, b_T, b_p)
    marginal_mean, marginal_var = process.forward_marginal(x0, abar_p, b_p)
    torch.testing.assert_close(mean, marginal_mean, **tol)
    torch.testing.assert_close(var, marginal_var, **tol)
    # DDIM (Eq. 11) from T, and eta = 1 gives the posterior variance (Lemma 2).
    ddim = process.ddim_step(x_T, x0, zero, abar_p, b_T, b_p)
    torch.testing.assert_close(ddim, abar_p.sqrt() * x0 + (1 - abar_p).sqrt() * x_T + b_p, **tol)
    torch.testing.assert_close(process.ddim_sigma(zero, abar_p, 1.0) ** 2, marginal_var, **tol)
    # Inversion's last step (Eq. 11 towards T) has the unique solution, and DDIM takes it back.
    up = process.ddim_step(x_p, x0, abar_p, zero, b_p, b_T)
    torch.testing.assert_close(up, (x_p - abar_p.sqrt() * x0 - b_p) / (1 - abar_p).sqrt(), **tol)
    torch.testing.assert_close(process.ddim_step(up, x0, zero, abar_p, b_T, b_p), x_p, **tol)
    for out in (ddim, up, mean):
        assert torch.isfinite(out).all()


def vp_ddim(denoiser, x_T, abars, r):
    """Contextualized DDIM written directly in VP space over ``abars`` (descending, ending at 1): no sigma,
    so abar_T = 0 is representable. The bias is k * r with k_T = 0 at abars[0]."""
    x = x_T
    for a, a_next in zip(abars[:-1], abars[1:], strict=True):
        x0hat = denoiser.vp(x, a)
        b = schedule.k_coefficient(a, abars[0]) * r(x0hat, a)
        b_next = schedule.k_coefficient(a_next, abars[0]) * r(x0hat, a_next)
        x = process.ddim_step(x, x0hat, a, a_next, b, b_next)
    return x


def test_comfyui_zsnr_is_the_abar_zero_process_up_to_sqrt_abar():
    """From the same prior sample, the k-space sampler on ComfyUI's schedule (abar_T = 4.9e-8) and the
    exact abar_T = 0 process in VP space end within O(sqrt(abar_T)) of each other."""
    g = torch.Generator().manual_seed(5)
    mu, s = torch.randn(D, generator=g, dtype=torch.float64), 0.8
    denoiser, r = GaussianDenoiser(mu, s), make_r(2)
    x_T = torch.randn(3, D, generator=g, dtype=torch.float64)
    abars = torch.cat([ABAR[STEPS[::-1]], torch.ones(1, dtype=torch.float64)])
    exact = vp_ddim(denoiser, x_T, abars, r)
    comfy_abars = abars.clone()
    comfy_abars[0] = COMFY_ABAR_T
    sigmas = schedule.sigma_from_abar(comfy_abars)
    bias = ContextBias(pair(r), sigmas[0])
    x = x_T / math.sqrt(COMFY_ABAR_T)  # VP prior sample in k-space (ComfyUI: noise * sqrt(1 + sigma^2))
    comfy = sampling.sample_contextdiff_ddim(denoiser, x, sigmas, bias=bias, disable=True)
    gap = (comfy - exact).abs().max().item()
    assert torch.isfinite(comfy).all() and gap < 10 * math.sqrt(COMFY_ABAR_T), gap
    # The bias is active in both (the comparison is not between two bias-free runs).
    plain = sampling.sample_contextdiff_ddim(denoiser, x, sigmas, disable=True)
    assert (plain - comfy).abs().max() > 100 * gap


def test_inversion_round_trip_on_zsnr_schedule():
    """Bias-aware inversion (solved per step) then contextual DDIM returns x0 on ComfyUI's zsnr sigmas."""
    g = torch.Generator().manual_seed(7)
    mu, s = torch.randn(D, generator=g, dtype=torch.float64), 0.8
    denoiser, r = GaussianDenoiser(mu, s), make_r(9)
    abars = ABAR[STEPS[::-1]].clone()
    abars[0] = COMFY_ABAR_T
    sig_desc = torch.cat([schedule.sigma_from_abar(abars), torch.zeros(1, dtype=torch.float64)])
    bias = ContextBias(pair(r), sig_desc[0])
    x0 = mu + s * torch.randn(3, D, generator=g, dtype=torch.float64)
    noise = invert_ddim(denoiser, x0, sig_desc.flip(0), bias=bias, refine_steps=50, disable=True)
    assert torch.isfinite(noise).all()
    # x_T is the prior's scale: N(0, 1) in VP space, times sqrt(1 + sigma_T^2) in k-space.
    assert 0.2 < float((noise * math.sqrt(COMFY_ABAR_T)).std()) < 3
    back = sampling.sample_contextdiff_ddim(denoiser, noise, sig_desc, bias=bias, disable=True)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-9)
    plain = sampling.sample_contextdiff_ddim(denoiser, noise, sig_desc, disable=True)
    assert (plain - x0).abs().max() > 1e-3, "the bias must be part of the round trip"


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_zero_strength_equals_comfyui_samplers_with_zsnr_vpred(comfy_inprocess, method):
    """ComfyUI's v-prediction + zsnr model sampling and scheduler: ours at strength 0 (float32 in, as ComfyUI
    runs) against ComfyUI's own euler (its ddim) and ddpm. ComfyUI's float32 Euler step loses ~1e-5 at
    sigma 4519 (``x + d (sigma_next - sigma)`` cancels), so the reference is the same ComfyUI function run in
    float64 (tolerance 1e-6); against its float32 run the gap stays at that round-off (1e-4)."""
    import comfy.k_diffusion.sampling as kd
    import comfy.model_sampling
    import comfy.samplers

    class VZsnr(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
        pass

    ms = VZsnr(zsnr=True)
    sigmas = comfy.samplers.calculate_sigmas(ms, "normal", 8).float()
    assert float(sigmas[0]) > 4000
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(1, 4, 8, 8, generator=g)
    x = torch.randn(1, 4, 8, 8, generator=g) * torch.sqrt(1.0 + sigmas[0] ** 2)
    bias = ContextBias(pair(make_r(3)), float(ms.sigma_max), strength=0.0)

    def core(dtype):
        denoiser = GaussianDenoiser(mu.to(dtype), 0.7)
        if method == "ddim":
            return kd.sample_euler(denoiser, x.to(dtype), sigmas.to(dtype), disable=True)
        gen = torch.Generator().manual_seed(4)  # k-diffusion's default noise sampler, in this dtype
        return kd.sample_ddpm(
            denoiser,
            x.to(dtype),
            sigmas.to(dtype),
            disable=True,
            noise_sampler=lambda *_: torch.randn(x.size(), generator=gen).to(dtype),
        )

    denoiser = GaussianDenoiser(mu, 0.7)
    if method == "ddim":
        ours = sampling.sample_contextdiff_ddim(denoiser, x.clone(), sigmas, bias=bias, disable=True)
    else:
        ours = sampling.sample_contextdiff_ddpm(
            denoiser, x.clone(), sigmas, extra_args={"seed": 4}, bias=bias, disable=True
        )
    assert torch.isfinite(ours).all()
    exact, core32 = core(torch.float64), core(torch.float32)
    assert ((ours.double() - exact).norm() / exact.norm()).item() <= 1e-6
    assert ((ours - core32).norm() / core32.norm()).item() <= 1e-4


@pytest.mark.parametrize("method", ["ddim", "ddim_eta1", "ddpm", "invert"])
def test_no_nan_or_inf_with_a_live_bias_under_zsnr(method):
    """float32 (ComfyUI's dtype) on the zsnr schedule with a bias: every output finite, and the bias acts."""
    sigmas = schedule.sigma_from_abar(
        torch.cat([ABAR[STEPS[::-1]].clone().clamp(min=COMFY_ABAR_T), torch.ones(1, dtype=torch.float64)])
    ).float()
    g = torch.Generator().manual_seed(8)
    mu = torch.randn(2, D, generator=g)
    denoiser, r = GaussianDenoiser(mu, 0.8), make_r(4)
    bias = ContextBias(pair(r), float(sigmas[0]))
    x = torch.randn(2, D, generator=g) * torch.sqrt(1.0 + sigmas[0] ** 2)
    runs = {
        "ddim": lambda b: sampling.sample_contextdiff_ddim(denoiser, x, sigmas, bias=b, disable=True),
        "ddim_eta1": lambda b: sampling.sample_contextdiff_ddim(
            denoiser, x, sigmas, eta=1.0, bias=b, disable=True, extra_args={"seed": 1}
        ),
        "ddpm": lambda b: sampling.sample_contextdiff_ddpm(
            denoiser, x, sigmas, bias=b, disable=True, extra_args={"seed": 1}
        ),
        "invert": lambda b: invert_ddim(denoiser, mu, sigmas.flip(0), bias=b, refine_steps=5, disable=True),
    }
    with_bias, without = runs[method](bias), runs[method](None)
    assert torch.isfinite(with_bias).all() and torch.isfinite(without).all()
    assert (with_bias - without).abs().max() > 1e-4


@pytest.fixture(scope="module")
def sdxl_vpred_zsnr(comfy_inprocess):
    from comfy_models import build_family

    return build_family("SDXL", 0, prediction="v", zsnr=True).model


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_sdxl_vpred_zsnr_unet_zero_strength_equals_comfyui(sdxl_vpred_zsnr, method):
    """The same with a real (SDXL-shaped, random) v-prediction UNet on ComfyUI's zsnr schedule, SDXL's ``y``
    included. ComfyUI's own float32 samplers are ~2e-4 from their float64 runs here (the first step from sigma
    4519 cancels); ours, float32 in and out, are within 1e-6 of the float64 ones. The host tests
    (test_host_families.py) therefore compare with ComfyUI's float32 samplers at 1e-3 under zsnr."""
    import comfy.k_diffusion.sampling as kd
    import comfy.sample
    import comfy.samplers
    from comfy_models import family_conditioning

    from contextdiff import families
    from hostside import families as host_families

    base = sdxl_vpred_zsnr
    info = host_families.identify(base)
    assert (info.family, info.prediction, info.zsnr) == (families.SDXL, "v", True)
    ((pos, extra),) = family_conditioning(1, tokens=8)
    cond = host_families.unet_conditioning(base, pos, extra["pooled_output"], (1, 4, 8, 8))

    def denoiser(x, sigma, **_):
        with torch.no_grad():
            return base.apply_model(x, sigma, **cond)

    sigmas = comfy.samplers.calculate_sigmas(base.model_sampling, "normal", 4)
    x = comfy.sample.prepare_noise(torch.zeros(1, 4, 8, 8), 3) * torch.sqrt(1.0 + sigmas[0] ** 2)
    gen = torch.Generator().manual_seed(3)

    def core(dtype):
        if method == "ddim":
            return kd.sample_euler(denoiser, x.to(dtype), sigmas.to(dtype), disable=True)
        gen.manual_seed(3)
        return kd.sample_ddpm(
            denoiser,
            x.to(dtype),
            sigmas.to(dtype),
            disable=True,
            noise_sampler=lambda *_: torch.randn(x.size(), generator=gen).to(dtype),
        )

    bias = ContextBias(lambda x0, s: (x0, x0), float(base.model_sampling.sigma_max), strength=0.0)
    if method == "ddim":
        ours = sampling.sample_contextdiff_ddim(denoiser, x.clone(), sigmas, bias=bias, disable=True)
    else:
        ours = sampling.sample_contextdiff_ddpm(
            denoiser, x.clone(), sigmas, extra_args={"seed": 3}, bias=bias, disable=True
        )
    exact, core32 = core(torch.float64), core(torch.float32)
    assert torch.isfinite(ours).all() and ours.dtype == torch.float32
    assert ((ours.double() - exact).norm() / exact.norm()).item() <= 1e-6
    assert ((ours - core32).norm() / core32.norm()).item() <= 1e-3
