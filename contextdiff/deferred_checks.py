"""Checks that do not stop the GPU: each step records a flag on the device, one host read at the end.

A per-step ``bool(torch.isfinite(x).all())`` makes the CPU wait for the GPU to finish that step before it
may queue the next model call, which serialises the two (issue 19 measured +55-65% per KSampler run on an
H200). Here each check records ``~isfinite(x).all()`` (or a magnitude bound) as a device scalar without reading
it; :meth:`DeferredChecks.raise_first` reads them all at once, at the end of the run, and raises the
message of the earliest failure, so that the error still names the step that went wrong and what it was.
On the CPU the flags are plain tensors and the end-of-run read costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# A message, or one made from the recorded value (read only when the check failed).
Message = str | Callable[[float], str]


class DeferredChecks:
    """Flags recorded in order (``record``), read once (``raise_first``). One instance per run."""

    def __init__(self) -> None:
        self._flags: list[torch.Tensor] = []
        self._messages: list[tuple[Message, torch.Tensor | None]] = []

    def record(self, bad: torch.Tensor, message: Message, value: torch.Tensor | None = None) -> None:
        """Remember ``bad`` (a 0-d bool tensor on any device, not read now) and what to say if it is true;
        a callable ``message`` gets ``value`` (read then) to describe the failure."""
        self._flags.append(bad.reshape(()))
        self._messages.append((message, value))

    def nonfinite(self, x: torch.Tensor, message: str) -> None:
        """Record whether ``x`` holds NaN or infinity."""
        self.record(~torch.isfinite(x).all(), message)

    def raise_first(self, error: type[Exception] = FloatingPointError) -> None:
        """One host read for the whole run: raise the first recorded failure's message, if any."""
        if not self._flags:
            return
        hits = torch.stack(self._flags).nonzero()  # every flag is on the run's device
        if hits.numel():
            message, value = self._messages[int(hits[0, 0])]
            raise error(message if isinstance(message, str) else message(float(value)))

    def __len__(self) -> int:
        return len(self._flags)


def describe_sigma(sigma: float) -> str:
    """A sigma for a message (host float: formatting it never touches the device)."""
    return f"{sigma:.4g}" if math.isfinite(sigma) else str(sigma)
