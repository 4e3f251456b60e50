"""The training objective of Eq. 6 with the contextualized forward process of Eq. 1, for any pair ``(a_t, s_t)``.

``x_t = a_t x0 + k_t r_phi(x0, c, t) + s_t eps`` is drawn by reparameterisation, so the gradient of
``||f_theta(x_t, c, t) - x0||^2`` reaches ``r_phi`` through ``x_t`` (paper §3.2). The pair is VP's
``(sqrt(abar_t), sqrt(1 - abar_t))`` or flow matching's ``(1 - sigma, sigma)`` (docs/design.md §1.1): a
:class:`TrainingLevels` gives it per sample, and an ``abar`` table stands for VP's (the paper's notation).
With ``use_bias=False`` the identical model trains without the bias: the fair baseline. Because ``r_phi``
sees ``x0``, the bias can carry the image into ``x_t``, which the sampler's ``r_phi(x0hat)`` cannot give
back; :mod:`contextdiff.bias_variants` holds the variants that close this gap (Eq. 5, Lemma 4's Lipschitz
bound, a self-consistent bias, a bottleneck).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from . import process
from .process import LevelLike, as_level
from .schedule import Level, bias_weight, k_coefficient

WEIGHTINGS = ("uniform", "snr", "min_snr", "truncated_snr")


def loss_weight(snr: torch.Tensor, kind: str = "uniform", gamma: float = 5.0) -> torch.Tensor:
    """``lambda_t`` of Eq. 6 per sample, from the signal-to-noise ratio ``snr = a_t^2 / s_t^2`` (VP: ``abar/(1-abar)``).

    uniform: 1 (the plain x0 loss); snr: ``snr``, the weighting under which the x0 loss equals the usual eps
    loss; min_snr: ``min(snr, gamma)`` (Hang et al. 2023); truncated_snr: ``max(snr, 1)`` (Salimans & Ho 2022).
    On flow matching the x0 loss is ``sigma^2`` times the velocity loss ``||v_hat - v||^2`` (``x0hat = x_t -
    sigma v_hat``), and ``snr = ((1 - sigma) / sigma)^2``.
    """
    if kind == "uniform":
        return torch.ones_like(snr)
    if kind == "snr":
        return snr
    if kind == "min_snr":
        return snr.clamp(max=gamma)
    if kind == "truncated_snr":
        return snr.clamp(min=1.0)
    raise ValueError(f"unknown loss weighting {kind!r}; choose one of {WEIGHTINGS}")


class Drawn(NamedTuple):
    """Eq. 6's per-sample quantities at a batch's timesteps, shaped to broadcast against ``x0`` (batch first).

    ``level``: ``(a_t, s_t)`` in ``x0``'s dtype; ``k``: ``k_t = a_t (1 - a_t)`` of that level (0 at ``T``), in
    ``x0``'s dtype; ``snr``: ``a_t^2 / s_t^2``, float32 ``(B,)``; ``exact``: the level in float64 (an ``abar``
    on VP), for formulas that lose precision in float32 (Eq. 3's coefficients).
    """

    level: Level
    k: torch.Tensor
    snr: torch.Tensor
    exact: LevelLike


class TrainingLevels:
    """A model's training noise levels ``t = 0 .. T-1`` as the pair ``(a_t, s_t)``; the last entry is ``T``, where
    ``k_T = 0``. :meth:`at` gives a batch's :class:`Drawn`; :meth:`adapter_time` the timestep ``r_phi`` is told."""

    def __len__(self) -> int:
        raise NotImplementedError

    def at(self, t: torch.Tensor, like: torch.Tensor) -> Drawn:
        """The quantities at integer timesteps ``t`` ``(B,)`` for latents ``like`` ``(B, ...)``."""
        raise NotImplementedError

    def previous(self, t: torch.Tensor, like: torch.Tensor) -> Drawn:
        """The same at ``t - 1``; clean data (``a = 1``, ``s = 0``) before the first level."""
        raise NotImplementedError

    def adapter_time(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep ``r_phi`` is told at index ``t``, float32: the index itself (a VP model's own timestep)."""
        return t.float()


def _shape(like: torch.Tensor) -> tuple[int, ...]:
    return (-1,) + (1,) * (like.dim() - 1)


class AbarLevels(TrainingLevels):
    """VP, written as the paper writes it: the cumulative ``abar_t`` table (float64), ``a = sqrt(abar)``."""

    def __init__(self, abar: torch.Tensor):
        self.abar = abar

    def __len__(self) -> int:
        return len(self.abar)

    def _drawn(self, abar: torch.Tensor, like: torch.Tensor) -> Drawn:
        shape = _shape(like)
        # The level and k from abar rounded to the latents' dtype (float32: what this objective always used).
        abar_x = abar.to(like.dtype)
        k = k_coefficient(abar_x.double(), self.abar[-1].double()).to(like.dtype)
        abar32 = abar.to(torch.float32)
        return Drawn(as_level(abar_x.reshape(shape)), k.reshape(shape), abar32 / (1.0 - abar32), abar.reshape(shape))

    def at(self, t: torch.Tensor, like: torch.Tensor) -> Drawn:
        return self._drawn(self.abar.to(like.device)[t], like)

    def previous(self, t: torch.Tensor, like: torch.Tensor) -> Drawn:
        return self._drawn(previous_abar(self.abar.to(like.device), t), like)


class PairLevels(TrainingLevels):
    """Any pair, from float64 tables ``a``, ``s`` (flow matching: ``(1 - sigma, sigma)`` of the model's sigmas);
    ``told``: the adapter's timestep of each level (flow: ``1000 sigma``, ``families.adapter_timestep``)."""

    def __init__(self, a: torch.Tensor, s: torch.Tensor, told: torch.Tensor):
        self.a, self.s, self.told = a.double(), s.double(), told.float()

    def __len__(self) -> int:
        return len(self.a)

    def _drawn(self, a: torch.Tensor, s: torch.Tensor, like: torch.Tensor) -> Drawn:
        shape = _shape(like)
        a_x = a.to(like.dtype)
        k = bias_weight(a_x.double(), self.a[-1].to(a.device)).to(like.dtype)
        level = Level(a_x.reshape(shape), s.to(like.dtype).reshape(shape))
        return Drawn(level, k.reshape(shape), (a * a / (s * s)).float(), Level(a.reshape(shape), s.reshape(shape)))

    def at(self, t: torch.Tensor, like: torch.Tensor) -> Drawn:
        return self._drawn(self.a.to(like.device)[t], self.s.to(like.device)[t], like)

    def previous(self, t: torch.Tensor, like: torch.Tensor) -> Drawn:
        a, s = self.a.to(like.device), self.s.to(like.device)
        before = (t - 1).clamp(min=0)
        first = t == 0
        return self._drawn(
            torch.where(first, torch.ones_like(a[before]), a[before]),
            torch.where(first, torch.zeros_like(s[before]), s[before]),
            like,
        )

    def adapter_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.told.to(t.device)[t]


def as_levels(levels: TrainingLevels | torch.Tensor) -> TrainingLevels:
    """``levels`` itself, or VP's :class:`AbarLevels` of an ``abar`` table."""
    return levels if isinstance(levels, TrainingLevels) else AbarLevels(levels)


def previous_abar(abar_table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``abar_{t-1}`` for integer training timesteps ``t``; 1 (clean data) before the first one."""
    prev = abar_table[(t - 1).clamp(min=0)]
    return torch.where(t > 0, prev, torch.ones_like(prev))


def contextual_x0_loss(
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    levels: TrainingLevels | torch.Tensor,
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    relational: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    weighting: str = "uniform",
    gamma: float = 5.0,
    use_bias: bool = True,
    bias_l2: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 for one batch; returns ``(loss, per-sample loss)``.

    ``bias_l2 > 0`` adds ``bias_l2 * mean(b_t^2)``, not in the paper: ``r_phi`` sees ``x0`` itself, so
    the adapter can encode ``x0`` into ``x_t`` with a large bias that makes Eq. 6 easy at training
    time but leaves sampling and inversion to chase a stiff ``x0hat -> b_t`` feedback loop.

    ``t``: integer training timesteps ``(B,)``; ``levels``: the model's :class:`TrainingLevels` (or VP's
    cumulative ``abar`` table), whose last entry is ``T`` (``k_T = 0``); ``denoise(x_t, t) -> x0hat`` in process
    space; ``relational(x0, t) -> r_phi(x0, c, t)``.
    """
    drawn = as_levels(levels).at(t, x0)
    bias = None
    if use_bias and relational is not None:
        bias = drawn.k * relational(x0, t)
    x_t = process.forward_sample(x0, drawn.level, eps, bias)
    x0hat = denoise(x_t, t)
    per_sample = (x0hat.float() - x0.float()).pow(2).flatten(1).mean(1)
    weighted = loss_weight(drawn.snr, weighting, gamma) * per_sample
    loss = weighted.mean()
    if bias is not None and bias_l2 > 0:
        loss = loss + bias_l2 * bias.float().pow(2).mean()
    return loss, per_sample
