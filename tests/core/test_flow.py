"""ContextDiff on flow matching (SD3, Flux, Wan): the method of the pair ``(a_t, s_t) = (1 - sigma, sigma)``,
checked against independent computations on the schedules ComfyUI ships (sigmas computed in-process by ComfyUI):

- the deterministic step at zero bias is ComfyUI's ``euler`` (algebra, and ComfyUI's own ``sample_euler``);
- with the exact Gaussian denoiser, sampling converges to the probability-flow ODE's closed-form answer;
- exact inversion followed by sampling returns the input to 1e-4 relative, with and without a nonlinear bias;
- ``k_t = a_t (1 - a_t)`` vanishes at sigma 1 (``a = 0``) by the formula itself.
"""

import math

import pytest
import torch

from contextdiff import inversion, process, sampling, schedule
from contextdiff.bias import ContextBias

SHAPE = (2, 16, 6, 6)  # 16 latent channels, as SD3, Flux and Wan 2.1


def flux_shift(latent_h: int, latent_w: int, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """ComfyUI's ModelSamplingFlux node (comfy_extras/nodes_model_advanced.py): mu linear in the image's
    2x2-patch token count, 256 tokens -> base_shift, 4096 -> max_shift; width x height in pixels = latent x 8."""
    tokens = (latent_w * 8) * (latent_h * 8) / (8 * 8 * 2 * 2)
    slope = (max_shift - base_shift) / (4096 - 256)
    return tokens * slope + base_shift - slope * 256


@pytest.fixture(scope="module")
def flow_schedules(comfy_inprocess):
    """ComfyUI's model_sampling objects of each flow family, as its model_base builds them."""
    import comfy.model_sampling as ms

    class Discrete(ms.ModelSamplingDiscreteFlow, ms.CONST):
        pass

    class Flux(ms.ModelSamplingFlux, ms.CONST):
        pass

    sd3, wan, flux = Discrete(), Discrete(), Flux()
    sd3.set_parameters(shift=3.0, multiplier=1000)  # comfy.supported_models.SD3
    wan.set_parameters(shift=8.0, multiplier=1000)  # comfy.supported_models.WAN21_T2V
    flux.set_parameters(shift=flux_shift(128, 128))  # a 1024 x 1024 image: mu = 1.15
    return {"sd3": sd3, "flux": flux, "wan": wan}


def comfy_sigmas(model_sampling, scheduler: str, steps: int) -> torch.Tensor:
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).double()


class FlowGaussian:
    """The exact E[x0 | x_t] for x0 ~ N(mu, diag(v)) under x_t = (1 - sigma) x0 + sigma eps; counts its calls."""

    def __init__(self, mu, v):
        self.mu, self.v, self.calls = mu, v, 0

    def __call__(self, x, sigma, **_):
        self.calls += 1
        s = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        a = 1 - s
        return self.mu + self.v * a / (a * a * self.v + s * s) * (x - a * self.mu)

    def ode_map(self, x, sigma_from: float, sigma_to: float):
        """The probability-flow ODE from ``sigma_from`` to ``sigma_to`` in closed form: the marginals are
        N(a mu, a^2 v + s^2) per coordinate, and the ODE's flow is the monotone affine map between them."""

        def sd(sig):
            return ((1 - sig) ** 2 * self.v + sig**2).sqrt()

        return (1 - sigma_to) * self.mu + sd(sigma_to) / sd(sigma_from) * (x - (1 - sigma_from) * self.mu)


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(SHAPE[1:], generator=g, dtype=torch.float64)
    v = (0.2 + 1.5 * torch.rand(SHAPE[1:], generator=g, dtype=torch.float64)) ** 2
    x0 = mu + v.sqrt() * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return FlowGaussian(mu, v), x0


def nonlinear_bias(strength: float = 1.0) -> ContextBias:
    """A context bias from a nonlinear r(x0, t) on the flow process (sigma_max = 1)."""

    def r(x0, sigmas):
        return tuple(
            0.5 * torch.tanh(x0.flip(1)) * (1 + 0.3 * torch.cos(3 * s)) + 0.1 * x0**2 / (1 + x0**2) for s in sigmas
        )

    return ContextBias(r, 1.0, strength, process=schedule.FLOW)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def test_flow_pair_and_bias_weight():
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    a, s = schedule.FLOW.level(sigma)
    torch.testing.assert_close(a, 1 - sigma)
    torch.testing.assert_close(s, sigma)
    k = schedule.FLOW.k(sigma, 1.0)
    torch.testing.assert_close(k, torch.tensor([0.0, 0.1875, 0.25, 0.0], dtype=torch.float64))
    assert float(schedule.FLOW.k(torch.tensor(1.0, dtype=torch.float64))) == 0  # a = 0: k_T = 0 by the formula
    torch.testing.assert_close(schedule.FLOW.host_scale(sigma), torch.ones_like(sigma))
    # VP's pair: s = sigma a, the same abar as before.
    va, vs = schedule.VP.level(sigma)
    torch.testing.assert_close(va**2, schedule.abar_from_sigma(sigma))
    torch.testing.assert_close(va**2 + vs**2, torch.ones_like(sigma))


def test_zero_bias_step_is_euler_algebraically():
    """Eq. 11 with the flow pair at b = 0 is x + (sigma' - sigma)(x - x0hat)/sigma, in both directions."""
    g = torch.Generator().manual_seed(3)
    x, x0hat = torch.randn(2, 10, generator=g, dtype=torch.float64)
    for sig, sig_next in ((1.0, 0.7), (0.7, 0.3), (0.3, 0.01), (0.3, 0.0), (0.2, 0.6), (0.6, 1.0)):
        lt, ln = schedule.FLOW.level(sig), schedule.FLOW.level(sig_next)
        got = process.ddim_step(x, x0hat, lt, ln)
        torch.testing.assert_close(got, x + (sig_next - sig) * (x - x0hat) / sig, rtol=1e-13, atol=1e-13)
    # The bias enters as in VP: eps from x_t - b_t, then b_next added.
    b_t, b_n = torch.randn(2, 10, generator=g, dtype=torch.float64)
    lt, ln = schedule.FLOW.level(0.6), schedule.FLOW.level(0.2)
    eps = (x - 0.4 * x0hat - b_t) / 0.6
    torch.testing.assert_close(process.ddim_step(x, x0hat, lt, ln, b_t, b_n), 0.8 * x0hat + 0.2 * eps + b_n)


def nonlinear_flow_model(seed=4):
    """A deterministic nonlinear x0-predictor ``model(x, sigma) -> x0hat`` (a flow model's CONST output)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(SHAPE[1], SHAPE[1], generator=g) / math.sqrt(SHAPE[1])

    def model(x, sigma, **_):
        s = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        mixed = torch.einsum("dc,bchw->bdhw", W.to(x.dtype), x)
        return torch.tanh(mixed) * (1 + 0.5 * torch.cos(3 * s)) + (1 - s) * x

    return model


@pytest.mark.parametrize("family", ["sd3", "flux", "wan"])
def test_strength_zero_is_comfyui_sample_euler(flow_schedules, family):
    """The loop without bias against ComfyUI's k_diffusion sample_euler, float32: 1e-5 relative."""
    from comfy.k_diffusion import sampling as k_sampling

    model = nonlinear_flow_model()
    sigmas = comfy_sigmas(flow_schedules[family], "simple", 20).float()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    want = k_sampling.sample_euler(model, x.clone(), sigmas, disable=True)
    got = sampling.sample_contextdiff_ddim(model, x.clone(), sigmas, disable=True, process=schedule.FLOW)
    assert got.dtype == torch.float32
    assert rel_err(got, want) < 1e-5
    # A live bias moves the result (the comparison can fail).
    biased = sampling.sample_contextdiff_ddim(
        model, x.clone(), sigmas, disable=True, process=schedule.FLOW, bias=nonlinear_bias()
    )
    assert rel_err(biased, want) > 1e-2


@pytest.mark.parametrize("family", ["sd3", "flux", "wan"])
def test_sampling_converges_to_the_ode_answer(flow_schedules, family):
    """With the exact Gaussian denoiser the sampler approximates the probability-flow ODE, whose answer is
    closed-form. Euler's error is first order in the step: 5x the steps, about 5x smaller; 10x, 10x; to 0.5%
    at 500 steps."""
    den, _ = data(1)
    x1 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = den.ode_map(x1, 1.0, 0.0)
    errs = {}
    for steps in (10, 50, 500):
        sigmas = comfy_sigmas(flow_schedules[family], "simple", steps)
        assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
        got = sampling.sample_contextdiff_ddim(den, x1, sigmas, disable=True, process=schedule.FLOW)
        errs[steps] = rel_err(got, want)
    assert errs[500] < 5e-3, errs
    assert 3 < errs[10] / errs[50] < 8 and 6 < errs[50] / errs[500] < 15, errs


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("scheduler", ["simple", "normal", "beta"])
@pytest.mark.parametrize("family", ["sd3", "flux", "wan"])
def test_exact_inversion_round_trip(flow_schedules, family, scheduler, steps):
    """Exact (refined) inversion to sigma 1, then sampling with the same bias, returns the input to 1e-4."""
    den, x0 = data(0)
    sigmas = comfy_sigmas(flow_schedules[family], scheduler, steps)
    bias = nonlinear_bias()
    noise = inversion.invert_ddim(
        den, x0, sigmas.flip(0), bias=bias, refine_steps=50, disable=True, process=schedule.FLOW
    )
    assert torch.isfinite(noise).all()
    back = sampling.sample_contextdiff_ddim(
        den, noise, sigmas, bias=bias, disable=True, process=schedule.FLOW, start_has_bias=True
    )
    assert rel_err(back, x0) < 1e-4
    # The bias is in both loops: sampling the same noise without it lands elsewhere.
    plain = sampling.sample_contextdiff_ddim(den, noise, sigmas, disable=True, process=schedule.FLOW)
    assert rel_err(plain, x0) > 1e-3


@pytest.mark.parametrize("family", ["sd3", "flux", "wan"])
def test_inversion_matches_the_ode_and_classic_inversion_is_not_exact(flow_schedules, family):
    """Without bias, exact inversion of the 500-step sampler is within 2% of the ODE's closed-form noise (Euler's
    first-order error); classic (unrefined) inversion does not round-trip to 1e-4, so the refinement is what
    makes it exact."""
    den, x0 = data(0)
    fine = comfy_sigmas(flow_schedules[family], "simple", 500)
    exact = inversion.invert_ddim(den, x0, fine.flip(0), refine_steps=50, disable=True, process=schedule.FLOW)
    assert rel_err(exact, den.ode_map(x0, 0.0, 1.0)) < 2e-2
    sigmas = comfy_sigmas(flow_schedules[family], "simple", 50)
    rough = inversion.invert_ddim(den, x0, sigmas.flip(0), disable=True, process=schedule.FLOW)
    back = sampling.sample_contextdiff_ddim(den, rough, sigmas, disable=True, process=schedule.FLOW)
    assert rel_err(back, x0) > 1e-4


def test_a_bias_of_another_process_is_refused():
    den, x0 = data(0)
    vp_bias = ContextBias(lambda x, s: (x, x), 14.6)
    with pytest.raises(ValueError, match="variance-preserving.*flow matching"):
        sampling.sample_contextdiff_ddim(
            den, x0, torch.tensor([1.0, 0.5, 0.0]), bias=vp_bias, disable=True, process=schedule.FLOW
        )
