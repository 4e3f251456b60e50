"""Noise-schedule conversions and the bias magnitude ``k_t``.

ComfyUI (k-diffusion) describes a VP model by ``sigma = sqrt((1 - abar) / abar)`` and works on
``x_k = x_vp / sqrt(abar)``; the paper works in VP space with the cumulative ``abar_t``. Every
function here is pure and broadcasts over tensors of any shape and float dtype (float64 included).
"""

from __future__ import annotations

import torch

Tensorish = torch.Tensor | float


def _t(x: Tensorish, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    dtype = like.dtype if like is not None else torch.float64
    device = like.device if like is not None else None
    return torch.tensor(float(x), dtype=dtype, device=device)


def abar_from_sigma(sigma: Tensorish) -> torch.Tensor:
    """``abar = 1 / (1 + sigma^2)``; sigma = 0 gives abar = 1 (clean data)."""
    sigma = _t(sigma)
    return 1.0 / (1.0 + sigma * sigma)


def sigma_from_abar(abar: Tensorish) -> torch.Tensor:
    """``sigma = sqrt((1 - abar) / abar)``, the inverse of :func:`abar_from_sigma`."""
    abar = _t(abar)
    return ((1.0 - abar) / abar).sqrt()


def step_beta(abar_t: Tensorish, abar_prev: Tensorish) -> torch.Tensor:
    """``beta_t = 1 - abar_t / abar_{t-1}`` for the step actually taken.

    Defining beta from the two cumulative products (rather than from the training schedule's
    per-step beta) keeps every formula exact when a scheduler skips timesteps.
    """
    return 1.0 - _t(abar_t) / _t(abar_prev)


def k_coefficient(abar: Tensorish, abar_T: Tensorish | None = None) -> torch.Tensor:
    """Bias magnitude ``k_t = sqrt(abar_t) * (1 - sqrt(abar_t))`` (paper, after Eq. 1).

    ``k_T = 0`` at the model's last training timestep ``T`` (paper, after Eq. 6), so that the
    prior ``x_T ~ N(0, I)`` is unchanged: any ``abar <= abar_T`` gives 0. A run that starts
    below ``T`` (denoise < 1) keeps the bias of its first step like any other step. ``abar = 1``
    (sigma 0, the clean end of a ComfyUI schedule) gives ``k = 0`` by the formula itself.
    """
    abar = _t(abar)
    root = abar.sqrt()
    k = root * (1.0 - root)
    if abar_T is None:
        return k
    abar_T = _t(abar_T, abar)
    # Relative tolerance: sigma lists arrive in float32 and sigma_max round-trips through it.
    at_prior = abar <= abar_T * (1.0 + 1e-5)
    return torch.where(at_prior, torch.zeros_like(k), k)


def k_from_sigma(sigma: Tensorish, sigma_max: Tensorish | None = None) -> torch.Tensor:
    """:func:`k_coefficient` for a ComfyUI sigma; ``sigma_max`` is the model's last training sigma."""
    abar_T = None if sigma_max is None else abar_from_sigma(sigma_max)
    return k_coefficient(abar_from_sigma(sigma), abar_T)


def step_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for the step arithmetic: ``1 - abar`` vanishes in float32 below sigma ~ 3e-4 (FlipSigmas
    starts at 1e-4) and ``x_t - sqrt(abar_t) x0hat`` cancels near sigma 0. MPS has no float64."""
    return torch.float32 if x.device.type == "mps" else torch.float64


class RunSchedule:
    """A run's sigmas, read once before the first step, so that no step has to read the device.

    ``host``: the sigmas as Python floats (float64 of what the device holds), for every decision a step makes
    (is this the last step, which stored step is this) and for messages. ``abar``: ``abar_from_sigma`` of
    them in the step dtype on the latent's device, computed on the CPU in float64 exactly as a per-step
    conversion would (:func:`abar_from_sigma`), then moved once. ``sigmas``: the list as given (device).
    """

    def __init__(self, sigmas: torch.Tensor, like: torch.Tensor):
        self.sigmas = sigmas
        # The run's one device-to-host read of its schedule.
        self.sigmas64 = sigmas.detach().to("cpu", torch.float64)
        self.host: tuple[float, ...] = tuple(self.sigmas64.tolist())
        self.abar = abar_from_sigma(self.sigmas64).to(like.device, step_dtype(like))

    def __len__(self) -> int:
        return len(self.host)
