"""Bias-aware DDIM inversion is the exact inverse of contextual DDIM sampling (issue 12.7): with the exact
Gaussian denoiser, on every ComfyUI scheduler at 10, 20 and 50 steps, in float64, inversion followed by
sampling returns the input to 1e-4 relative error or better. ComfyUI computes the sigmas in-process."""

import math

import pytest
import torch

from contextdiff import inversion, sampling
from contextdiff.bias import ContextBias

SHAPE = (2, 4, 8, 8)


@pytest.fixture(scope="module")
def comfy_schedules(comfy_inprocess):
    import comfy.model_sampling
    import comfy.samplers

    ms = comfy.model_sampling.ModelSamplingDiscrete()  # SD1.x's schedule
    return ms, comfy.samplers.SCHEDULER_NAMES, comfy.samplers.calculate_sigmas


class GaussianDenoiser:
    """E[x0 | x_k] for x0 ~ N(mu, diag(s^2)) under x_k = x0 + sigma eps; counts its calls."""

    def __init__(self, mu, s):
        self.mu, self.s2, self.calls = mu, s * s, 0

    def __call__(self, x, sigma, **_):
        self.calls += 1
        sig2 = sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2
        return self.mu + self.s2 / (self.s2 + sig2) * (x - self.mu)


def data(kind: str):
    """Isotropic unit-scale data (the issue's case) or a diagonal covariance spanning s = 0.2 .. 1.7."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(SHAPE[1:], generator=g, dtype=torch.float64)
    s = (
        (0.2 + 1.5 * torch.rand(SHAPE[1:], generator=g, dtype=torch.float64))
        if kind == "diagonal"
        else torch.tensor(0.8)
    )
    x0 = mu + s * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return GaussianDenoiser(mu, s), x0


def nonlinear_bias(sigma_max: float) -> ContextBias:
    """A context bias from a nonlinear r(x0, t), zero at T like every ContextDiff bias."""

    def r(x0, sigmas):
        return tuple(
            0.5 * torch.tanh(x0.flip(1)) * (1 + 0.3 * torch.cos(s)) + 0.1 * x0**2 / (1 + x0**2) for s in sigmas
        )

    return ContextBias(r, sigma_max)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("steps", [10, 20, 50])
@pytest.mark.parametrize("case", ["isotropic-no-bias", pytest.param("diagonal-bias", marks=pytest.mark.slow)])
def test_inversion_is_exact_on_every_scheduler(comfy_schedules, case, steps):
    ms, names, calculate_sigmas = comfy_schedules
    kind, with_bias = case.split("-", 1)
    denoiser, x0 = data(kind)
    bias = nonlinear_bias(float(ms.sigma_max)) if with_bias == "bias" else None
    worst = {}
    for name in names:
        sigmas = calculate_sigmas(ms, name, steps).double()
        denoiser.calls = 0
        noise = inversion.invert_ddim(denoiser, x0, sigmas.flip(0), bias=bias, refine_steps=50, disable=True)
        assert denoiser.calls <= steps * 51  # the first guess and at most 50 refinements per step
        back = sampling.sample_contextdiff_ddim(denoiser, noise, sigmas, bias=bias, disable=True)
        worst[name] = rel_err(back, x0)
    assert max(worst.values()) <= 1e-4, worst


def test_classic_inversion_is_not_exact_and_refinement_is_needed(comfy_schedules):
    """The failure issue 12.7 reports: without refinement (and with the old fixed-point iteration) the
    default schedule does not round-trip; the solve is what makes it exact."""
    ms, _, calculate_sigmas = comfy_schedules
    denoiser, x0 = data("isotropic")
    for name in ("ddim_uniform", "normal"):
        sigmas = calculate_sigmas(ms, name, 20).double()
        rough = inversion.invert_ddim(denoiser, x0, sigmas.flip(0), disable=True)
        assert rel_err(sampling.sample_contextdiff_ddim(denoiser, rough, sigmas, disable=True), x0) > 1e-3


def test_anderson_solves_a_linear_system_a_plain_iteration_cannot():
    """y <- y - R(y) diverges for R(y) = A y - c with eigenvalues of A in (0, 2.5); the accelerated solve
    (GMRES-like on a linear map, here with 40 distinct eigenvalues and a memory of 10) converges."""
    g = torch.Generator().manual_seed(1)
    diag = torch.linspace(0.05, 2.5, 40, dtype=torch.float64)
    c = torch.randn(40, generator=g, dtype=torch.float64)
    calls = []

    def residual(y):
        calls.append(1)
        return diag * y - c

    y = inversion.anderson(residual, torch.zeros(40, dtype=torch.float64), max_iter=150, tol=1e-12)
    torch.testing.assert_close(y, c / diag, rtol=1e-9, atol=1e-9)
    assert len(calls) <= 150
    plain = torch.zeros(40, dtype=torch.float64)
    for _ in range(150):
        plain = plain - residual(plain)
    assert not (plain - c / diag).abs().max() < 1  # the unaccelerated iteration blows up
    assert math.isfinite(float(y.norm()))
