"""The bias ``b_t = k_t r_phi(x0hat, c, t)`` as the samplers consume it: both ends of a step at once."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .adapter import frames_as_batch, frames_as_clips
from .deferred_checks import DeferredChecks
from .schedule import VP, NoiseProcess, RunSchedule

if TYPE_CHECKING:
    from .adapter import ContextAdapter

# r(x0hat, sigmas) -> (r at sigmas[0], r at sigmas[1]): one relational-network call for both.
RelationalPair = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# (bound, message(peak)) for the relational network's output: larger or non-finite outputs are refused.
OutputGuard = tuple[float, Callable[[float], str]]


def finite_strength(strength: float) -> float:
    """``strength`` as a float; NaN or infinity is refused here, before it turns every latent into NaN."""
    value = float(strength)
    if not math.isfinite(value):
        raise ValueError(
            f"adapter_strength is {value}, not a finite number: set it to a number such as 1.0 "
            "(0 switches the adapter off)"
        )
    return value


def pair_peak(r_a: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of a step's two relational outputs, on their device (NaN if either holds NaN)."""
    return torch.maximum(r_a.detach().abs().amax(), r_b.detach().abs().amax())


class ContextBias:
    """``b_t = strength * k_t * r_phi(x0hat, c, t)`` for the two ends of a step, in process units.

    ``r`` is called once per step with both sigmas (the adapter batches them). ``sigma_max`` is
    the model's last training sigma, where ``k_T = 0`` keeps the prior ``N(0, I)``; ``process`` (default VP)
    gives ``k_t = a_t (1 - a_t)`` from a sigma.
    """

    def __init__(
        self,
        r: RelationalPair,
        sigma_max: float | torch.Tensor | None,
        strength: float = 1.0,
        guard: OutputGuard | None = None,
        process: NoiseProcess | None = None,
    ):
        self.r, self.sigma_max, self.strength = r, sigma_max, finite_strength(strength)
        self.guard = guard
        self.process = VP if process is None else process

    def for_run(self, run: RunSchedule, checks: DeferredChecks) -> RunBias:
        """This bias over one run's schedule: ``k`` of every sigma computed once, checks deferred to ``checks``."""
        return RunBias(self, run, checks)

    def __call__(
        self, x0hat: torch.Tensor, sigma_a: torch.Tensor, sigma_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # k in float64 on the CPU: exact near abar = 1 and independent of the device's dtypes.
        sigmas = torch.stack([torch.as_tensor(s).detach().cpu() for s in (sigma_a, sigma_b)]).double()
        k = self.process.k(sigmas, self.sigma_max)
        if self.strength == 0 or not bool((k != 0).any()):
            zero = torch.zeros_like(x0hat)
            return zero, zero
        r_a, r_b = self.r(x0hat, sigmas.to(x0hat.device, x0hat.dtype))
        if self.guard is not None:
            bound, message = self.guard
            peak = float(pair_peak(r_a, r_b))
            if not peak <= bound:
                raise FloatingPointError(message(peak))
        k = (self.strength * k).to(x0hat.device, x0hat.dtype)
        return k[0] * r_a, k[1] * r_b


class RunBias:
    """``(b_i, b_j)`` of one ``x0hat`` at steps ``i`` and ``j`` of a run, without reading the device.

    ``k`` is computed for every sigma of the run once, on the CPU in float64, exactly as
    :meth:`ContextBias.__call__` computes it per call; whether a step needs the adapter at all (``k = 0`` at
    both ends, or strength 0) is decided on those host values. The adapter's output bound is recorded on the
    device (:class:`~contextdiff.deferred_checks.DeferredChecks`) and read at the end of the run.
    """

    def __init__(self, bias: ContextBias, run: RunSchedule, checks: DeferredChecks):
        if type(bias.process) is not type(run.process):
            raise ValueError(f"a bias for {bias.process.name} cannot run on a {run.process.name} schedule")
        self.bias, self.run, self.checks = bias, run, checks
        self.k = (bias.strength * bias.process.k(run.sigmas64, bias.sigma_max)).tolist()  # host floats, no device

    def __call__(self, x0hat: torch.Tensor, i: int, j: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        k_a, k_b = self.k[i], self.k[j]
        if k_a == 0 and k_b == 0:
            return None, None  # the same sample as zero biases: the steps add nothing
        sigmas = torch.stack([self.run.sigmas[i], self.run.sigmas[j]]).to(x0hat.dtype)
        r_a, r_b = self.bias.r(x0hat, sigmas)
        if self.bias.guard is not None:
            bound, message = self.bias.guard
            peak = pair_peak(r_a, r_b)  # read only at the end of the run
            self.checks.record(~(peak <= bound), message, value=peak)
        return r_a * k_a, r_b * k_b


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
    process: NoiseProcess | None = None,
) -> ContextBias:
    """A :class:`ContextBias` from a :class:`~contextdiff.adapter.ContextAdapter`.

    ``text``: the positive CONDITIONING tokens; ``timestep``: sigma -> the timestep the adapter is told
    (:func:`contextdiff.families.adapter_timestep`); ``frames``: clip length in video mode; ``process``: the
    model's noise process (default VP).
    """

    on_device = {text.device: text}  # the tokens moved once per device, not at every step

    def r(x0hat: torch.Tensor, sigmas: torch.Tensor):
        # ``sigmas`` are on the latent's device already (the run's schedule): no copy per step.
        t = timestep(sigmas).float()
        tokens = on_device.get(x0hat.device)
        if tokens is None:
            tokens = on_device[x0hat.device] = text.to(x0hat.device)
        images, clip = x0hat, frames
        if x0hat.dim() == 5:  # (batch, channels, frames, h, w), Wan's video latent: each clip's frames in order
            images, tokens, clip = frames_as_batch(x0hat, tokens)
        with torch.no_grad(), autocast_for(x0hat.device):
            # The output bound (NaN, infinity, absurd magnitudes, naming the adapter file) is checked by the
            # caller: per call here (a host read) or deferred to the end of a run (RunBias).
            r_a, r_b = adapter.pair(images, tokens, t, frames=clip, check=False)
        if x0hat.dim() == 5:
            r_a, r_b = frames_as_clips(r_a, clip), frames_as_clips(r_b, clip)
        return r_a.to(x0hat.dtype), r_b.to(x0hat.dtype)

    return ContextBias(r, sigma_max, strength, guard=(adapter.max_output, adapter.output_error), process=process)
