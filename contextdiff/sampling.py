"""Sampler loops in k-diffusion form: ``(model, x, sigmas, extra_args, callback, disable, ...)``.

``model(x, sigma, **extra_args)`` returns ``x0hat`` for ``x`` in k-diffusion space
(``x_k = x_vp / sqrt(abar)``), as ComfyUI's samplers receive it. The loops convert to VP space,
take the step from :mod:`contextdiff.process`, and convert back: the one place where the two
spaces meet. A ``bias`` is a :class:`ContextBias` (or any callable with its signature) giving
``(b_t, b_{t-1})`` for one ``x0hat``; ``None`` runs plain DDIM/DDPM.
"""

from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import trange

from . import process
from .bias import ContextBias  # noqa: F401  (re-exported: samplers take one)
from .schedule import abar_from_sigma

def default_noise_sampler(x: torch.Tensor, seed: Optional[int] = None):
    """Fresh standard normal noise per call from a generator seeded once, like k-diffusion's."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device,
                                                 generator=generator)


def _biases(bias, x0hat, sigma, sigma_next):
    return bias(x0hat, sigma, sigma_next) if bias is not None else (None, None)


def check_finite(denoised: torch.Tensor, i: int, sigma) -> None:
    """Stop at the first non-finite prediction, with the usual cause, instead of a black image."""
    if not bool(torch.isfinite(denoised).all()):
        raise FloatingPointError(
            f"the model predicted NaN or infinity at step {i} (sigma {float(sigma):.4g}); in fp16 this is usually an "
            "overflow: run the model in bf16 or fp32 (ComfyUI --bf16-unet or --force-fp32)")


def _report(callback, x, i, sigma, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


@torch.no_grad()
def sample_contextdiff_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None,
                            eta: float = 0.0, noise_sampler=None, bias=None, post_step=None):
    """Contextualized DDIM (Eq. 11; Eq. 18 for ``eta > 0``) over any descending sigma list.

    ``post_step(i, x_next, sigma_next) -> x_next`` may adjust each result (editing's latent blend).
    """
    extra_args = {} if extra_args is None else extra_args
    if eta > 0 and noise_sampler is None:
        noise_sampler = default_noise_sampler(x, extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        check_finite(denoised, i, sigma)
        _report(callback, x, i, sigma, denoised)
        b_t, b_next = _biases(bias, denoised, sigma, sigma_next)
        abar, abar_next = abar_from_sigma(sigma), abar_from_sigma(sigma_next)
        noise = noise_sampler(sigma, sigma_next) if eta > 0 and sigma_next > 0 else None
        x_vp = process.ddim_step(x * abar.sqrt(), denoised, abar, abar_next, b_t, b_next,
                                 eta if noise is not None else 0.0, noise)
        x = x_vp / abar_next.sqrt()
        if post_step is not None:
            x = post_step(i, x, sigma_next)
    return x


@torch.no_grad()
def sample_contextdiff_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None,
                            noise_sampler=None, bias=None):
    """Contextualized ancestral DDPM (Eq. 7 mean, posterior variance) over any sigma list.

    Noise is drawn once per step with ``sigma_next > 0``, in the order ComfyUI's ``ddpm`` draws it.
    """
    extra_args = {} if extra_args is None else extra_args
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        check_finite(denoised, i, sigma)
        _report(callback, x, i, sigma, denoised)
        b_t, b_next = _biases(bias, denoised, sigma, sigma_next)
        abar, abar_next = abar_from_sigma(sigma), abar_from_sigma(sigma_next)
        noise = noise_sampler(sigma, sigma_next) if sigma_next > 0 else None
        x_vp = process.ddpm_step(x * abar.sqrt(), denoised, abar, abar_next, b_t, b_next, noise)
        x = x_vp / abar_next.sqrt()
    return x


@torch.no_grad()
def invert_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, bias=None,
                refine_steps: int = 0, refine_tol: float = 0.0, final_eval: bool = False):
    """Bias-aware DDIM inversion: the deterministic step of Eq. 11 run from ``t-1`` to ``t``.

    ``sigmas`` ascend (e.g. a sampling schedule reversed, starting at 0); ``x`` is the latent at
    ``sigmas[0]``. Each step evaluates the denoiser at the lower noise level and applies
    :func:`contextdiff.process.ddim_inverse_step`, the exact inverse for that ``x0hat``. Sampling
    re-evaluates the denoiser at the higher level, so plain inversion is approximate; with
    ``refine_steps > 0`` each step is refined by fixed-point iteration on
    ``x_t = inverse(x_{t-1}, x0hat(x_t))`` until the change is below ``refine_tol``, which makes
    inversion followed by :func:`sample_contextdiff_ddim` return the input.

    From ``sigma = 0`` the noise direction is undefined; the first guess then takes the model's
    noise estimate at the next level, and refinement solves ``x0hat(x_t) = x_0`` directly.

    ``final_eval`` evaluates the denoiser once more on the result at the top sigma, so that
    attention hooks see every level on the final latents (the editing store records them).
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        abar, abar_next = abar_from_sigma(sigma), abar_from_sigma(sigma_next)
        x_lo = x * abar.sqrt()
        if sigma > 0:
            denoised = model(x, sigma * s_in, **extra_args)
            b_next, b_lo = _biases(bias, denoised, sigma_next, sigma)
            x_hi = process.ddim_inverse_step(x_lo, denoised, abar, abar_next, b_lo, b_next)
        else:
            # Clean start: noise estimate of the model at the next level, bias of the clean latent.
            denoised = model(x, sigma_next * s_in, **extra_args)
            eps = (x - denoised) / sigma_next
            b_next, _ = _biases(bias, x, sigma_next, sigma)
            b_next = torch.zeros_like(x) if b_next is None else b_next
            x_hi = abar_next.sqrt() * x + b_next + (1.0 - abar_next).sqrt() * eps
        previous = None  # (iterate, its fixed-point residual)
        for _ in range(refine_steps):
            x_k = x_hi / abar_next.sqrt()
            denoised = model(x_k, sigma_next * s_in, **extra_args)
            b_next, b_lo = _biases(bias, denoised, sigma_next, sigma)
            if sigma > 0:
                new = process.ddim_inverse_step(x_lo, denoised, abar, abar_next, b_lo, b_next)
            else:
                # The step to sigma 0 returns x0hat + b_0 (b_0 = 0): move x_t until it equals x_0.
                bl = torch.zeros_like(x) if b_lo is None else b_lo
                new = x_hi + abar_next.sqrt() * (x_lo - denoised - bl)
            residual = (new - x_hi).abs().max()
            if previous is not None and residual > previous[1]:
                x_hi = previous[0]  # not a contraction for this model and step: keep the better iterate
                break
            previous = (x_hi, residual)
            x_hi = new
            if residual <= refine_tol:
                break
        x = x_hi / abar_next.sqrt()
        _report(callback, x, i, sigma_next, denoised)
    if final_eval and len(sigmas) > 1:
        model(x, sigmas[-1] * s_in, **extra_args)
    return x
