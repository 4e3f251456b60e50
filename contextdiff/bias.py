"""The bias ``b_t = k_t r_phi(x0hat, c, t)`` as the samplers consume it: both ends of a step at once."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .schedule import k_from_sigma

if TYPE_CHECKING:
    from .adapter import ContextAdapter

# r(x0hat, sigmas) -> (r at sigmas[0], r at sigmas[1]): one relational-network call for both.
RelationalPair = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def finite_strength(strength: float) -> float:
    """``strength`` as a float; NaN or infinity is refused here, before it turns every latent into NaN."""
    value = float(strength)
    if not math.isfinite(value):
        raise ValueError(
            f"adapter_strength is {value}, not a finite number: set it to a number such as 1.0 "
            "(0 switches the adapter off)"
        )
    return value


class ContextBias:
    """``b_t = strength * k_t * r_phi(x0hat, c, t)`` for the two ends of a step, in VP units.

    ``r`` is called once per step with both sigmas (the adapter batches them). ``sigma_max`` is
    the model's last training sigma, where ``k_T = 0`` keeps the prior ``N(0, I)``.
    """

    def __init__(self, r: RelationalPair, sigma_max: float | torch.Tensor | None, strength: float = 1.0):
        self.r, self.sigma_max, self.strength = r, sigma_max, finite_strength(strength)

    def __call__(
        self, x0hat: torch.Tensor, sigma_a: torch.Tensor, sigma_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # k in float64 on the CPU: exact near abar = 1 and independent of the device's dtypes.
        sigmas = torch.stack([torch.as_tensor(s).detach().cpu() for s in (sigma_a, sigma_b)]).double()
        k = k_from_sigma(sigmas, self.sigma_max)
        if self.strength == 0 or not bool((k != 0).any()):
            zero = torch.zeros_like(x0hat)
            return zero, zero
        r_a, r_b = self.r(x0hat, sigmas.to(x0hat.device, x0hat.dtype))
        k = (self.strength * k).to(x0hat.device, x0hat.dtype)
        return k[0] * r_a, k[1] * r_b


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 (or fp16) autocast on CUDA, where the adapter's attention is memory-bound; none on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def adapter_bias(
    adapter: ContextAdapter,
    text: torch.Tensor,
    timestep: Callable[[torch.Tensor], torch.Tensor],
    sigma_max: float | torch.Tensor | None,
    strength: float = 1.0,
    frames: int | None = None,
) -> ContextBias:
    """A :class:`ContextBias` from a :class:`~contextdiff.adapter.ContextAdapter`.

    ``text``: the positive CONDITIONING tokens; ``timestep``: sigma -> training timestep (the
    model's own ``model_sampling.timestep``); ``frames``: clip length in video mode.
    """

    def r(x0hat: torch.Tensor, sigmas: torch.Tensor):
        t = timestep(sigmas.to(x0hat.device)).float()
        with torch.no_grad(), autocast_for(x0hat.device):
            # pair() refuses NaN, infinity and absurd magnitudes, naming the adapter file.
            r_a, r_b = adapter.pair(x0hat, text.to(x0hat.device), t, frames=frames)
        return r_a.to(x0hat.dtype), r_b.to(x0hat.dtype)

    return ContextBias(r, sigma_max, strength)
