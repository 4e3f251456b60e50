"""Noise-schedule conversions, the process pair ``(a_t, s_t)`` and the bias magnitude ``k_t``.

The method is written once for a Gaussian process ``x_t = a_t x0 + s_t eps + b_t`` (docs/design.md §1).
A :class:`NoiseProcess` says how a family's ComfyUI ``sigma`` gives the pair and how ComfyUI's latent (the
"host" space) relates to ``x_t``:

- VP (SD1.x, SD2.x, SDXL): ``a = sqrt(abar)``, ``s = sqrt(1 - abar)``, ``abar = 1 / (1 + sigma^2)``;
  ComfyUI works on ``x_host = x_t / a`` (k-diffusion, ``sigma = s / a``).
- Flow matching (SD3, Flux, Wan; ComfyUI's CONST sampling): ``a = 1 - sigma``, ``s = sigma``; ComfyUI's
  latent is ``x_t`` itself (its ``noise_scaling`` is ``sigma noise + (1 - sigma) latent``).

Every function here is pure and broadcasts over tensors of any shape and float dtype (float64 included).
"""

from __future__ import annotations

from typing import NamedTuple

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


def bias_weight(a: Tensorish, a_T: Tensorish | None = None) -> torch.Tensor:
    """Bias magnitude ``k_t = a_t (1 - a_t)`` for the signal scale ``a_t`` of any process (paper, after Eq. 1).

    ``k_T = 0`` at the model's last training level ``T`` (paper, after Eq. 6), so that the prior is unchanged:
    any ``a <= a_T`` gives 0. ``a = 1`` (sigma 0, clean data) gives 0 by the formula itself, and so does
    ``a = 0`` (flow matching's sigma 1). A run that starts below ``T`` keeps the bias of its first step.
    """
    a = _t(a)
    k = a * (1.0 - a)
    if a_T is None:
        return k
    a_T = _t(a_T, a)
    # Relative tolerance: sigma lists arrive in float32 and sigma_max round-trips through it
    # (5e-6 on a is the 1e-5 on abar = a^2 this rule always had).
    at_prior = a <= a_T * (1.0 + 5e-6)
    return torch.where(at_prior, torch.zeros_like(k), k)


def k_coefficient(abar: Tensorish, abar_T: Tensorish | None = None) -> torch.Tensor:
    """VP's ``k_t = sqrt(abar_t) * (1 - sqrt(abar_t))``: :func:`bias_weight` of ``a = sqrt(abar)``."""
    abar = _t(abar)
    return bias_weight(abar.sqrt(), None if abar_T is None else _t(abar_T, abar).sqrt())


def k_from_sigma(sigma: Tensorish, sigma_max: Tensorish | None = None) -> torch.Tensor:
    """:func:`k_coefficient` for a VP model's ComfyUI sigma; ``sigma_max`` is the model's last training sigma."""
    return VP.k(sigma, sigma_max)


class Level(NamedTuple):
    """One noise level of the process ``x_t = a x0 + s eps + b_t``: its signal and noise scales."""

    a: torch.Tensor
    s: torch.Tensor


class NoiseProcess:
    """How a family's ComfyUI ``sigma`` maps to the pair ``(a, s)`` and to ComfyUI's latent space.

    ``host_scale(sigma)``: the factor with ``x_t = host_scale * x_host``. Subclasses give ``level`` and
    ``host_scale``; the bias weight :func:`bias_weight` and everything in :mod:`contextdiff.process` follow.
    """

    name = ""

    def level(self, sigma: Tensorish) -> Level:
        raise NotImplementedError

    def host_scale(self, sigma: Tensorish) -> torch.Tensor:
        raise NotImplementedError

    def to_host(self, sigma: Tensorish) -> torch.Tensor:
        """The factor with ``x_host = to_host * x_t``: ``1 / host_scale``."""
        return 1.0 / self.host_scale(sigma)

    def k(self, sigma: Tensorish, sigma_max: Tensorish | None = None) -> torch.Tensor:
        """``k_t = a_t (1 - a_t)`` at ComfyUI ``sigma``, 0 at and above ``sigma_max`` (the prior)."""
        a_T = None if sigma_max is None else self.level(sigma_max).a
        return bias_weight(self.level(sigma).a, a_T)

    def __repr__(self) -> str:
        return f"NoiseProcess({self.name})"


class VarPreserving(NoiseProcess):
    """``a = 1 / sqrt(1 + sigma^2)``, ``s = sigma a`` (no ``1 - abar`` cancellation near 0); ``x_host = x_t / a``."""

    name = "variance-preserving"

    def level(self, sigma: Tensorish) -> Level:
        sigma = _t(sigma)
        a = abar_from_sigma(sigma).sqrt()
        s = torch.where(torch.isinf(sigma), torch.ones_like(a), sigma * a)  # sigma = inf: abar = 0 (zero SNR)
        return Level(a, s)

    def host_scale(self, sigma: Tensorish) -> torch.Tensor:
        return self.level(sigma).a

    def to_host(self, sigma: Tensorish) -> torch.Tensor:
        """``1 / sqrt(abar)`` in one operation (k-diffusion's ``x_k = x_vp / sqrt(abar)``)."""
        return abar_from_sigma(sigma).rsqrt()


class FlowMatching(NoiseProcess):
    """ComfyUI's CONST sampling: ``x_t = (1 - sigma) x0 + sigma eps``, ComfyUI's latent itself."""

    name = "flow matching"

    def level(self, sigma: Tensorish) -> Level:
        sigma = _t(sigma)
        return Level(1.0 - sigma, sigma)

    def host_scale(self, sigma: Tensorish) -> torch.Tensor:
        return torch.ones_like(_t(sigma))


VP = VarPreserving()
FLOW = FlowMatching()


def step_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for the step arithmetic: ``1 - abar`` vanishes in float32 below sigma ~ 3e-4 (FlipSigmas
    starts at 1e-4) and ``x_t - sqrt(abar_t) x0hat`` cancels near sigma 0. MPS has no float64."""
    return torch.float32 if x.device.type == "mps" else torch.float64


class RunSchedule:
    """A run's sigmas, read once before the first step, so that no step has to read the device.

    ``host``: the sigmas as Python floats (float64 of what the device holds), for every decision a step makes
    (is this the last step, which stored step is this) and for messages. ``a``, ``s``, ``scale``: the
    process's pair and host scale of every level in the step dtype on the latent's device, computed on the
    CPU in float64, then moved once. ``sigmas``: the list as given (device).
    """

    def __init__(self, sigmas: torch.Tensor, like: torch.Tensor, process: NoiseProcess | None = None):
        self.sigmas = sigmas
        self.process = VP if process is None else process
        # The run's one device-to-host read of its schedule.
        self.sigmas64 = sigmas.detach().to("cpu", torch.float64)
        self.host: tuple[float, ...] = tuple(self.sigmas64.tolist())
        dt = step_dtype(like)
        a, s = self.process.level(self.sigmas64)
        self.a, self.s = a.to(like.device, dt), s.to(like.device, dt)
        self.scale = self.process.host_scale(self.sigmas64).to(like.device, dt)

    def level(self, j: int) -> Level:
        return Level(self.a[j], self.s[j])

    def __len__(self) -> int:
        return len(self.host)
