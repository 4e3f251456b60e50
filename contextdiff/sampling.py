"""One sampler loop in k-diffusion form, ``(model, x, sigmas, extra_args, callback, disable)``, with a
pluggable process-space step (like ComfyUI's ``generic_step_sampler``).

``model(x, sigma, **extra_args)`` returns ``x0hat`` for ``x`` in ComfyUI's latent space, as ComfyUI's samplers
receive it. The run's :class:`~contextdiff.schedule.NoiseProcess` (VP, flow matching) says how that space
relates to the process ``x_t = a_t x0 + s_t eps + b_t``; :func:`transition` converts, takes the step, and
converts back: the one place where the two spaces meet. A step function is
:func:`contextdiff.process.ddim_step` or :func:`~contextdiff.process.ddpm_step` (signature :data:`StepFn`).
A ``bias`` is a :class:`~contextdiff.bias.ContextBias` giving ``(b_t, b_{t-1})`` for one ``x0hat``; ``None``
runs plain DDIM/DDPM (on flow matching, DDIM at eta 0 is ComfyUI's ``euler``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import trange

from . import process
from .deferred_checks import DeferredChecks, describe_sigma
from .schedule import NoiseProcess, RunSchedule, step_dtype

if TYPE_CHECKING:
    from .bias import ContextBias, RunBias

# (x_t, x0hat, level_t, level_prev, b_t, b_prev, noise) -> x_prev, all in process space.
StepFn = Callable[..., torch.Tensor]
# model(x, sigma, **extra_args) -> x0hat, in k-diffusion space.
Denoiser = Callable[..., torch.Tensor]
# (sigma, sigma_next) -> standard normal noise shaped like x.
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# ComfyUI's sampler callback: {"x", "i", "sigma", "sigma_hat", "denoised"}.
Callback = Callable[[dict[str, Any]], None]
# (i, x_next, sigma_next) -> x_next; sigma_next is a host float.
PostStep = Callable[[int, torch.Tensor, float], torch.Tensor]
# (sigma) -> None, told the host value of the sigma before each model call (the editor's step lookup).
LevelHook = Callable[[float], None]
Sigma = torch.Tensor | float

MODEL_CAUSE = "in fp16 this is usually an overflow: run the model in bf16 or fp32 (ComfyUI --bf16-unet or --force-fp32)"


def default_noise_sampler(x: torch.Tensor, seed: int | None = None) -> NoiseSampler:
    """Fresh standard normal noise per call from a generator seeded once, as k-diffusion seeded it up to ComfyUI
    0.3.x; inside ComfyUI the nodes pass the host's own noise sampler instead (its seeding changed in 0.8)."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(
        x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator
    )


def transition(
    step: StepFn,
    x: torch.Tensor,
    x0hat: torch.Tensor,
    run: RunSchedule,
    i: int,
    j: int,
    b_t: torch.Tensor | None = None,
    b_next: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """``step`` from ``x`` (ComfyUI's space, level ``i`` of ``run``) to level ``j``, with the process-space biases
    of ``x0hat``; ComfyUI's space out.

    ``x_t = scale_i x`` (VP: ``sqrt(abar) x``; flow: ``x`` itself); ``x0hat`` is the same in both spaces. The
    run's levels are in the step dtype on ``x``'s device already, so that a step reads nothing back.
    """
    dt = step_dtype(x)

    def to_dt(t):
        return None if t is None else t.to(dt)

    level_t, level_next = run.level(i), run.level(j)
    x_next = step(x.to(dt) * run.scale[i], x0hat.to(dt), level_t, level_next, to_dt(b_t), to_dt(b_next), to_dt(noise))
    return (x_next / run.scale[j]).to(x.dtype)


def model_error(i: int, sigma: float, cause: str = MODEL_CAUSE) -> str:
    """What to say when the model predicted NaN or infinity at step ``i`` (``sigma``: host float)."""
    return f"the model predicted NaN or infinity at step {i} (sigma {describe_sigma(sigma)}); {cause}"


class Denoise:
    """The model called at level ``j`` of a run: tells ``on_level`` the host sigma first, records the finite check
    of the prediction in ``checks`` (read at the end of the run) and names the step ``index`` if it fails."""

    def __init__(
        self,
        model: Denoiser,
        run: RunSchedule,
        extra_args: dict[str, Any],
        checks: DeferredChecks,
        cause: str = MODEL_CAUSE,
        on_level: LevelHook | None = None,
    ):
        self.model, self.run, self.extra_args, self.checks = model, run, extra_args, checks
        self.cause, self.on_level = cause, on_level

    def __call__(self, x: torch.Tensor, j: int, index: int) -> torch.Tensor:
        if self.on_level is not None:
            self.on_level(self.run.host[j])
        x0hat = self.model(x, self.run.sigmas[j] * x.new_ones([x.shape[0]]), **self.extra_args)
        self.checks.nonfinite(x0hat, model_error(index, self.run.host[j], self.cause))
        return x0hat


def no_bias(x0hat: torch.Tensor, i: int, j: int) -> tuple[None, None]:
    """The biases of a run without an adapter."""
    return None, None


def run_bias(bias: ContextBias | None, run: RunSchedule, checks: DeferredChecks) -> RunBias | Callable:
    """``(x0hat, i, j) -> (b_i, b_j)`` over the run's schedule (:meth:`ContextBias.for_run`), or :func:`no_bias`.

    Any other callable ``bias(x0hat, sigma, sigma_next) -> (b_t, b_next)`` is called with the run's sigmas
    (a custom bias decides for itself what it reads)."""
    if bias is None:
        return no_bias
    if hasattr(bias, "for_run"):
        return bias.for_run(run, checks)
    return lambda x0hat, i, j: bias(x0hat, run.sigmas[i], run.sigmas[j])


def require_direction(sigmas: torch.Tensor, reversible: bool) -> None:
    """Only a deterministic step may run towards more noise (unsampling: FlipSigmas, core ddim's inversion),
    and not from sigma 0, where the noise direction is undefined."""
    rising = sigmas[1:] > sigmas[:-1]
    if not bool(rising.any()):
        return
    if not reversible:
        raise ValueError(
            "these sigmas increase (unsampling, e.g. FlipSigmas): only deterministic DDIM runs towards "
            "more noise; choose method ddim with eta 0, or give descending sigmas"
        )
    if bool((rising & (sigmas[:-1] <= 0)).any()):
        raise ValueError(
            "these sigmas rise from 0, where the noise direction is undefined: start unsampling at a "
            "small sigma (FlipSigmas uses 1e-4) or invert with ContextDiff DDIM Inversion"
        )


@torch.no_grad()
def sample(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    *,
    step: StepFn,
    stochastic: bool = False,
    bias: ContextBias | None = None,
    noise_sampler: NoiseSampler | None = None,
    post_step: PostStep | None = None,
    cause: str = MODEL_CAUSE,
    start_has_bias: bool = True,
    on_level: LevelHook | None = None,
    process: NoiseProcess | None = None,
) -> torch.Tensor:
    """The sampler loop: one model call per step, then ``step`` (see :func:`transition`).

    ``process``: the model's :class:`~contextdiff.schedule.NoiseProcess` (default VP).
    ``stochastic`` steps get fresh noise for every step with ``sigma_next > 0``, in the order ComfyUI's
    ``ddpm`` draws it; deterministic ones may run on increasing sigmas (unsampling).
    ``post_step(i, x_next, sigma_next) -> x_next`` may adjust each result (editing's latent blend);
    ``cause`` is named when the model predicts NaN (the caller knows the model's dtype); that check, and the
    adapter's output bound, are read once at the end of the run (:mod:`contextdiff.deferred_checks`), so no step
    makes the host wait for the device; the error still names the first step that failed. ``on_level(sigma)``
    is told each model call's sigma as a host float (the editor's attention hooks look their step up with it).

    ``start_has_bias`` says whether ``x`` carries ``b_t`` at ``sigmas[0]`` (Eq. 1), as a latent from
    :func:`contextdiff.inversion.invert_ddim` does; then the first step subtracts it like any other. A latent
    that ComfyUI noised (``sigma_0 * noise``, or image + noise for img2img) carries none: pass ``False`` and
    the first step takes ``b_t = 0``, as ``k_T = 0`` does for a start at T. It matters only for schedules
    that start below T (``ddim_uniform``: t = 951), where the first step's term is most of the bias's net
    effect on the sample (``bench/first_step_bias.py``).
    """
    extra_args = {} if extra_args is None else extra_args
    require_direction(sigmas, reversible=not stochastic)
    if stochastic and noise_sampler is None:
        noise_sampler = default_noise_sampler(x, extra_args.get("seed"))
    # Everything a step decides is decided on host values read here, once: no step waits for the device.
    run = RunSchedule(sigmas, x, process)
    checks = DeferredChecks()
    denoise = Denoise(model, run, extra_args, checks, cause, on_level)
    bias_at = run_bias(bias, run, checks)
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, i, i)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        b_t, b_next = bias_at(denoised, i, i + 1)
        if i == 0 and not start_has_bias:
            b_t = None
        noise = noise_sampler(sigma, sigma_next) if stochastic and run.host[i + 1] > 0 else None
        x = transition(step, x, denoised, run, i, i + 1, b_t, b_next, noise)
        if post_step is not None:
            x = post_step(i, x, run.host[i + 1])
    checks.raise_first()
    return x


def sample_contextdiff_ddim(*args: Any, eta: float = 0.0, **options: Any) -> torch.Tensor:
    """Contextualized DDIM (Eq. 11; Eq. 18 for ``eta > 0``) over any sigma list (increasing too, at eta 0).

    Called like a k-diffusion sampler, ``(model, x, sigmas, extra_args, callback, disable)``, with
    :func:`sample`'s keywords (``bias``, ``noise_sampler``, ``post_step``, ``cause``, ``start_has_bias``,
    ``on_level``, ``process``).
    """
    step = functools.partial(process.ddim_step, eta=eta)
    return sample(*args, step=step, stochastic=eta > 0, **options)


def sample_contextdiff_ddpm(*args: Any, **options: Any) -> torch.Tensor:
    """Contextualized ancestral DDPM (Eq. 7 mean, posterior variance) over any descending sigma list.

    Called like :func:`sample_contextdiff_ddim`, without ``eta``.
    """
    return sample(*args, step=process.ddpm_step, stochastic=True, **options)
