"""Bias-aware DDIM inversion: the deterministic step of Eq. 11 run from ``t-1`` to ``t``, solved exactly.

Sampling maps ``x_t`` to ``x_{t-1} = S(x_t)``, the contextualized DDIM step with ``x0hat`` (and its
bias) evaluated at ``x_t``. Inversion wants the ``x_t`` with ``S(x_t) = x_{t-1}``:

- :func:`first_guess` is the classic DDIM inversion: the same step run towards more noise with
  ``x0hat`` evaluated at ``x_{t-1}`` (from ``sigma = 0``: Eq. 1 with the model's noise estimate).
- :func:`refine` solves ``R(x_t) = S(x_t) - x_{t-1} = 0`` by Anderson-accelerated iteration of
  ``x_t <- x_t - R(x_t)``, one model call per iteration.

Why this iteration. In k-space without bias ``S(y) = D(y) + (sigma_{t-1}/sigma_t)(y - D(y))``, so the
map ``y - R(y)`` has the Jacobian ``(1 - sigma_{t-1}/sigma_t)(I - dD/dy)``. For Gaussian data ``dD/dy`` is
the posterior covariance over ``sigma_t^2``, symmetric with eigenvalues in ``[0, 1)``: the map contracts
at every step of every schedule. The iteration used before, ``y <- S^-1(x_{t-1}; D(y))``, has the
Jacobian ``(1 - sigma_t/sigma_{t-1}) dD/dy``; near ``sigma ~ 0.03`` ``dD/dy ~ I``, so any step with
``sigma_t > 2 sigma_{t-1}`` diverges (the first step of ``normal`` and ``ddim_uniform``). Steps from
``sigma = 0`` to a large ``sigma_t`` contract slowly (``I - dD/dy ~ I``); Anderson mixing (Walker & Ni
2011, used for diffusion inversion by AIDI, Pan et al. 2023) solves those, and the linear Gaussian case
in general, in a few iterations: on a linear map it is GMRES.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from tqdm.auto import trange

from . import process
from .deferred_checks import DeferredChecks
from .sampling import MODEL_CAUSE, Callback, Denoise, Denoiser, LevelHook, run_bias, transition
from .schedule import NoiseProcess, RunSchedule, step_dtype

if TYPE_CHECKING:
    from .bias import ContextBias

DDIM = functools.partial(process.ddim_step, eta=0.0)


class InversionRun(NamedTuple):
    """One inversion run: the model at each level, the biases at two levels, the schedule (read once)."""

    denoise: Denoise
    bias_at: Callable
    run: RunSchedule


def first_guess(ctx: InversionRun, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Classic (explicit) DDIM inversion of step ``i`` (level ``i`` to ``i + 1``): ``(x at i + 1, x0hat)``,
    one model call."""
    run = ctx.run
    if run.host[i] > 0:
        x0hat = ctx.denoise(x, i, i)
        return transition(DDIM, x, x0hat, run, i, i + 1, *ctx.bias_at(x0hat, i, i + 1)), x0hat
    # Clean start: the noise direction is undefined at sigma 0; take the model's estimate at the next level
    # (the noise of x read as a latent there), and Eq. 1 with the bias of the clean latent itself.
    x0hat = ctx.denoise(x, i + 1, i)
    dt = step_dtype(x)
    x64, level_next = x.to(dt), run.level(i + 1)
    eps = (x64 * run.scale[i + 1] - level_next.a * x0hat.to(dt)) / level_next.s
    b_next, _ = ctx.bias_at(x, i + 1, i)
    x_t = process.forward_sample(x64 * run.scale[i], level_next, eps, None if b_next is None else b_next.to(dt))
    return (x_t / run.scale[i + 1]).to(x.dtype), x0hat


def anderson(
    residual: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, max_iter: int, tol: float, memory: int = 10
) -> torch.Tensor:
    """Solve ``residual(y) = 0`` by Anderson-accelerated (type II) iteration of ``y <- y - residual(y)``.

    At most ``max_iter`` residual evaluations; stops once ``||residual|| <= tol`` or when two evaluations
    in a row do not improve on the best (round-off floor, or a model for which no iteration contracts).
    Returns the best iterate evaluated. The mixing runs in float64 (float32 on MPS).
    """
    dt = step_dtype(y)
    best_y, best_g, best = y, None, math.inf
    ys, gs = [], []  # recent iterates and their images g = y - residual(y), float64
    stalled = 0
    for _ in range(max_iter):
        r = residual(y).to(dt)
        norm = float(r.norm())
        if not math.isfinite(norm):
            break
        y64 = y.to(dt)
        if norm < best:
            best_y, best_g, best, stalled = y, y64 - r, norm, 0
            ys.append(y64)
            gs.append(best_g)
        else:
            stalled += 1  # the extrapolation overshot: restart the mixing from the best pair
            ys, gs = [best_y.to(dt)], [best_g]
        if best <= tol or stalled >= 2:
            break
        ys, gs = ys[-(memory + 1) :], gs[-(memory + 1) :]
        if len(ys) == 1:
            y = gs[-1].to(y.dtype)
            continue
        f = torch.stack([(g - v).flatten() for g, v in zip(gs, ys, strict=True)], 1)  # -residuals, one column each
        d_f = f[:, 1:] - f[:, :-1]
        d_g = torch.stack([(a - b).flatten() for a, b in zip(gs[1:], gs[:-1], strict=True)], 1)
        # min ||f_k - d_f gamma||: the normal equations are memory x memory, solved on the CPU (a rank-deficient
        # system has a least-squares solution there); one copy each way, the one back not waiting for the device.
        normal = torch.cat([d_f.T @ d_f, d_f.T @ f[:, -1:]], dim=1).cpu()
        gamma = torch.linalg.lstsq(normal[:, :-1], normal[:, -1:]).solution.to(f.device, non_blocking=True)
        y = (gs[-1].flatten() - (d_g @ gamma).squeeze(1)).reshape(y.shape).to(y.dtype)
    return best_y


def refine(
    ctx: InversionRun, x: torch.Tensor, guess: torch.Tensor, i: int, max_iter: int = 10, rel_tol: float | None = None
) -> torch.Tensor:
    """The ``x_t`` (k-space, at level ``i + 1``) that the contextualized DDIM step takes back to ``x`` (level ``i``).

    Starts at ``guess``; ``rel_tol`` bounds ``||S(x_t) - x|| / ||x||`` (default: 16 float eps of ``x``). Stopping
    on the residual reads the host by design (``refine_steps = 0``, the default, reads none): ``||x||`` once per
    step, then per iteration the residual's norm and, from the second iteration on, the memory x memory normal
    equations of the Anderson mixing (tests/host/test_host_reads.py counts them).
    """
    if rel_tol is None:
        rel_tol = 16 * torch.finfo(x.dtype).eps
    target = x.to(step_dtype(x))
    run = ctx.run

    def residual(y):
        x0hat = ctx.denoise(y, i + 1, i)
        back = transition(DDIM, y, x0hat, run, i + 1, i, *ctx.bias_at(x0hat, i + 1, i))
        return back.to(target.dtype) - target

    return anderson(residual, guess, max_iter, rel_tol * float(target.norm()))


def require_ascending(sigmas: torch.Tensor) -> None:
    if bool((sigmas[1:] < sigmas[:-1]).any()):
        raise ValueError(
            "inversion runs from the clean latent towards noise: its sigmas must increase (a sampling "
            "schedule reversed, starting at 0)"
        )


@dataclass(frozen=True)
class InversionOptions:
    """:func:`invert_ddim`'s options.

    ``refine_steps = 0`` is the classic approximate inversion (one model call per step); ``refine_steps > 0``
    allows that many more calls per step to solve the step exactly (:func:`refine`), so that sampling with
    :func:`contextdiff.sampling.sample_contextdiff_ddim` and the same bias returns the input. ``final_eval``
    evaluates the denoiser once more on the result at the top sigma, so that attention hooks see every level
    on the final latents (the editing store records them). ``cause``: what a NaN prediction most likely
    means; ``on_level``: told each model call's sigma as a host float (the editor's step lookup);
    ``trajectory(info)``: sees the input (``i = -1``) and then every inverted level, before ``callback``;
    ``process``: the model's :class:`~contextdiff.schedule.NoiseProcess` (default VP).
    """

    bias: ContextBias | None = None
    refine_steps: int = 0
    refine_tol: float | None = None
    final_eval: bool = False
    cause: str = MODEL_CAUSE
    on_level: LevelHook | None = None
    trajectory: Callable[[dict], None] | None = None
    process: NoiseProcess | None = None


@torch.no_grad()
def invert_ddim(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    **options: Any,
) -> torch.Tensor:
    """Bias-aware DDIM inversion over ascending ``sigmas``; ``x`` is the latent at ``sigmas[0]``.

    ``options``: the fields of :class:`InversionOptions`. ``callback`` gets each inverted level, with
    ``sigma_host`` (its sigma as a host float) beside ComfyUI's keys. Like the samplers, the run reads the
    device once for its schedule and once at the end for its checks (NaN predictions, the adapter's bound).
    """
    opts = InversionOptions(**options)
    extra_args = {} if extra_args is None else extra_args
    require_ascending(sigmas)
    run = RunSchedule(sigmas, x, opts.process)
    checks = DeferredChecks()
    ctx = InversionRun(
        Denoise(model, run, extra_args, checks, opts.cause, opts.on_level), run_bias(opts.bias, run, checks), run
    )
    if opts.trajectory is not None:
        opts.trajectory({"x": x, "i": -1, "sigma": sigmas[0], "denoised": x, "sigma_host": run.host[0]})
    for i in trange(len(sigmas) - 1, disable=disable):
        x_next, x0hat = first_guess(ctx, x, i)
        if opts.refine_steps > 0:
            x_next = refine(ctx, x, x_next, i, opts.refine_steps, opts.refine_tol)
        x = x_next
        level = sigmas[i + 1]
        info = {"x": x, "i": i, "sigma": level, "sigma_hat": level, "denoised": x0hat, "sigma_host": run.host[i + 1]}
        for report in (opts.trajectory, callback):
            if report is not None:
                report(info)
    if opts.final_eval and len(sigmas) > 1:
        ctx.denoise(x, len(sigmas) - 1, len(sigmas) - 1)
    checks.raise_first()
    return x
