"""Schedules that start below T: is ``k`` zero at the first step of a pure-noise start? (issue 12, "Also").

ComfyUI's ``ddim_uniform`` starts at t = 951 of SD's 1000 training steps (sigma 8.4 / 11.0 / 13.1 at
10 / 20 / 50 steps, not sigma_max = 14.6), and ComfyUI starts such a schedule from ``x = sigma_0 eps``:
the latent carries neither ``sqrt(abar) x0`` nor ``b_t``. Two choices for the first DDIM step:

A. ``k`` follows its formula at every level below T (``k_951 = sqrt(abar)(1 - sqrt(abar)) ~ 0.082``), zero
   only at T: the first step subtracts ``c b_951(x0hat)`` like any other step.
B. The first step takes ``b_t = 0`` (its ``b_{t-1}`` and every later step use the bias as usual).

The DDIM step subtracts ``c b_t`` and adds ``b_{t-1}``; from one step to the next these nearly cancel, so the
net effect of the bias on a sample is small, and the first step's subtraction, which nothing before it
compensates, is most of it (60-99% below). That term is right only for a latent that carries ``b_t``, as an
inverted one does; a latent ComfyUI noised (``sigma_0 noise``, image + noise for img2img) carries none, like
the start at T where ``k_T = 0`` says so. Decision: B for ComfyUI-noised starts (the KSampler and SAMPLER
nodes), A for sampling from an inversion (the edit sampler), which B would break by the round-trip error
printed below. ``contextdiff.sampling.sample(start_has_bias=...)`` carries the choice.

Measured (both lines per step count): the difference A - B on a pure-noise start relative to the sample and to
the whole effect of the bias (A - plain DDIM), for the exact Gaussian denoiser with an O(1) nonlinear ``r``
and for a random tiny SD UNet with a small random adapter; and the inversion round trip sampled with A or B.

Run: ``python -m bench.first_step_bias`` (CPU, about a minute; not part of ``python -m bench``).
"""

from __future__ import annotations

import torch

from devkit import comfyui, tiny_models


class FirstStepWithoutBias:
    """Choice B: the wrapped bias with ``b_t = 0`` at the first step only."""

    def __init__(self, bias):
        self.bias, self.calls = bias, 0

    def __call__(self, x0hat, sigma, sigma_next):
        b_t, b_next = self.bias(x0hat, sigma, sigma_next)
        self.calls += 1
        return (torch.zeros_like(b_t) if self.calls == 1 else b_t), b_next


def compare(sample, bias, x) -> dict:
    """``sample(x, bias) -> x0``: A, B and plain from the same starting noise."""
    a = sample(x, bias)
    b = sample(x, FirstStepWithoutBias(bias))
    plain = sample(x, None)
    return {"A-B / A": float((a - b).norm() / a.norm()), "A-B / (A-plain)": float((a - b).norm() / (a - plain).norm())}


def gaussian_case(ms, steps: int, calculate_sigmas) -> dict:
    from contextdiff import sampling
    from contextdiff.bias import ContextBias

    g = torch.Generator().manual_seed(0)
    mu, s = torch.randn(64, generator=g, dtype=torch.float64), 0.8

    def denoiser(x, sigma, **_):
        return mu + s * s / (s * s + sigma.reshape(-1, 1) ** 2) * (x - mu)

    w = torch.randn(64, 64, generator=g, dtype=torch.float64) / 8
    bias = ContextBias(
        lambda x0, sig: tuple(torch.tanh(x0 @ w) * (1 + 0.2 * torch.cos(q)) for q in sig), float(ms.sigma_max)
    )
    sigmas = calculate_sigmas(ms, "ddim_uniform", steps).double()
    x = float(sigmas[0]) * torch.randn(256, 64, generator=g, dtype=torch.float64)
    out = compare(lambda v, b: sampling.sample_contextdiff_ddim(denoiser, v, sigmas, bias=b, disable=True), bias, x)
    # The round trip: invert with the bias (exactly), sample back with A and with B.
    from contextdiff import inversion

    x0 = mu + s * torch.randn(16, 64, generator=g, dtype=torch.float64)
    noise = inversion.invert_ddim(denoiser, x0, sigmas.flip(0), bias=bias, refine_steps=50, disable=True)
    for name, b in (("A", bias), ("B", FirstStepWithoutBias(bias))):
        back = sampling.sample_contextdiff_ddim(denoiser, noise, sigmas, bias=b, disable=True)
        out[f"round trip {name}"] = float((back - x0).norm() / x0.norm())
    return out


def unet_case(ms_steps: int) -> dict:
    import comfy.sample
    import comfy.samplers

    models = tiny_models()
    build_sd15, random_conditioning = models.build_sd15, models.random_conditioning

    from contextdiff import sampling
    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from contextdiff.bias import adapter_bias

    patcher = build_sd15(0, 32, 768)
    base = patcher.model
    ms = base.model_sampling
    pos, neg = random_conditioning(1)[0][0].repeat(4, 1, 1), random_conditioning(2)[0][0].repeat(4, 1, 1)
    torch.manual_seed(5)
    adapter = ContextAdapter(AdapterConfig(dim=64, depth=2)).eval()  # "gentle": a small, smooth bias
    torch.nn.init.normal_(adapter.patch_out.weight, std=0.02)
    torch.nn.init.normal_(adapter.patch_out.bias, std=0.05)
    bias = adapter_bias(adapter, pos, ms.timestep, float(ms.sigma_max), 1.0)
    sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", ms_steps)

    def denoiser(x, sigma, **_):
        with torch.no_grad():
            c = base.apply_model(x, sigma, c_crossattn=pos)
            u = base.apply_model(x, sigma, c_crossattn=neg)
        return u + 4.0 * (c - u)

    noise = comfy.sample.prepare_noise(torch.zeros(4, 4, 16, 16), 3)
    x = noise * sigmas[0]  # ComfyUI's start below sigma_max
    return compare(lambda v, b: sampling.sample_contextdiff_ddim(denoiser, v, sigmas, bias=b, disable=True), bias, x)


def main() -> None:
    comfyui()
    import comfy.model_sampling
    import comfy.samplers

    from contextdiff.schedule import k_from_sigma

    ms = comfy.model_sampling.ModelSamplingDiscrete()
    for steps in (10, 20, 50):
        sigma0 = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", steps)[0]
        k0 = float(k_from_sigma(sigma0.double(), float(ms.sigma_max)))
        print(f"ddim_uniform {steps} steps: sigma_0 = {float(sigma0):.3f}, k at the first step = {k0:.4f}")
        print(
            "  Gaussian denoiser, O(1) nonlinear r:",
            {k: f"{v:.2e}" for k, v in gaussian_case(ms, steps, comfy.samplers.calculate_sigmas).items()},
        )
        print("  tiny SD UNet, small random adapter:", {k: f"{v:.2e}" for k, v in unet_case(steps).items()})


if __name__ == "__main__":
    main()
