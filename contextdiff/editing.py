"""Inversion-then-edit bookkeeping that is independent of the host: steps, the fused window, what
inversion hands to editing.

``t in [fuse_start * T, T]`` (paper §4.2: fuse_start = 0.5, T = 20 DDIM steps) are the first
``(1 - fuse_start)`` of the sampling steps, counted from the noisiest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .attention_store import AttentionStore


class StepIndex:
    """Maps a sigma to its index in a descending sampling schedule (``None`` if not in it)."""

    def __init__(self, sigmas_desc: torch.Tensor, rtol: float = 1e-4):
        self.sigmas = [float(s) for s in sigmas_desc]
        self.rtol = rtol

    def __call__(self, sigma: float) -> int | None:
        for i, s in enumerate(self.sigmas):
            if abs(sigma - s) <= self.rtol * max(abs(s), 1e-8):
                return i
        return None


def fused_steps(n_steps: int, fuse_start: float) -> set[int]:
    """Sampling-step indices (0 = noisiest) inside ``t in [fuse_start*T, T]``."""
    if not 0.0 <= fuse_start <= 1.0:
        raise ValueError(f"fuse_start must be in [0, 1], got {fuse_start}")
    return set(range(int(round((1.0 - fuse_start) * n_steps))))


def trajectory_recorder(store_latents: dict, step_of: Callable[[float], int | None]) -> Callable[[dict], None]:
    """An inversion callback keeping the inverted latent at every level (k-space) by step index."""

    def callback(info: dict) -> None:
        step = step_of(float(info["sigma"]))
        if step is not None:
            store_latents[step] = info["x"].detach().clone()

    return callback


@dataclass
class Inversion:
    """What inversion hands to editing (it travels on the ``CONTEXTDIFF_EDIT_SOURCE`` socket).

    ``settings`` records how it was made (steps, cfg, fuse_start, adapter name and strength), so
    that an edit run with different settings can say so.
    """

    noise: torch.Tensor  # inverted x_T as unit-variance noise (model space), ComfyUI's noise convention
    store: AttentionStore
    sigmas: torch.Tensor  # descending sampling schedule, ends at 0
    latent_shape: tuple
    frames: int | None
    fuse_start: float
    settings: dict = field(default_factory=dict)
