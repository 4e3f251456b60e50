"""Training-time variants of the context bias, each derived from the paper's own objective (§3.2, App. A.2).

Eq. 6 trains ``f_theta`` on ``x_t = a_t x0 + k_t r_phi(x0, c, t) + s_t eps`` (VP: ``a_t = sqrt(abar_t)``,
``s_t = sqrt(1 - abar_t)``; flow matching: ``(1 - sigma, sigma)``, docs/design.md §1.1): ``r_phi``
sees ``x0`` itself, so the bias can carry the image into ``x_t`` and the UNet learns to read it there.
At sampling (Eq. 7) the bias is ``k_t r_phi(x0hat, c, t)``: the information is not there. Each variant
below closes that gap in a way the paper's derivation names; :class:`BiasVariant` holds their settings
and its defaults are Eq. 6 itself (:func:`contextdiff.objective.contextual_x0_loss`, bit for bit).

- ``objective="eq5"``: the unsimplified objective. Eq. 4's KL terms are Eq. 5, the distance between
  Eq. 3's mean with ``b(x0)`` and the model's mean (Eq. 7 = Eq. 24) with ``b(x0hat)``; Eq. 6 is Lemma 4's
  upper bound of it and drops the bias terms, so under Eq. 6 nothing asks ``r_phi(x0hat)`` to agree with
  ``r_phi(x0)``. Here the bias terms stay (:func:`posterior_mean_gap`).
- ``lipschitz_weight``: Lemma 4 holds only if ``r_phi`` is Lipschitz in ``x0`` with constants ``C_t``,
  and nothing in Eq. 6 bounds them. A hinge penalty on the difference quotient of ``r_phi`` between
  ``x0`` and the model's own ``x0hat`` (the pair Lemma 4 applies the condition to) keeps ``C_t`` below
  ``lipschitz_bound``. With ``C_t <= C`` the bias can add at most a factor ``1 + C (1 - a_t)``
  to the distance between the means of ``x_t`` for two images (the signal term alone gives
  ``a_t ||x0 - x0'||``): the leak is bounded. (Spectral normalisation of the adapter's weights
  would not bound ``C_t``: LayerNorm and dot-product attention are not Lipschitz with bounded constants.)
- ``self_bias``: the share of samples whose bias is computed from the model's own stop-gradient
  ``x0hat`` (one extra forward pass without gradient, as in self-conditioning) instead of ``x0``:
  the bias the UNet is trained on is then the one Eq. 7 gives it at sampling.
- ``input_blur`` / ``input_noise``: a bottleneck on ``r_phi``'s image input (a Gaussian low-pass of
  ``sigma`` pixels, Gaussian noise of that std). What ``b_t`` can carry about ``x0`` is at most what the
  bottleneck lets through (data processing), and a low-passed input is what ``x0hat`` resembles at
  high noise, so ``r_phi(x0hat)`` and ``r_phi(x0)`` differ less (Lemma 4's ``C_t ||x0hat - x0||``).

Every variant is written for the pair: Eq. 5's Gaussian posterior exists for any pair (``beta >= 0`` when
``s/a`` rises with the noise level, as in VP and flow matching), the others only draw ``x_t`` and call
``r_phi``. All functions are pure; randomness comes in as tensors (:class:`Aux`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

from . import process
from .objective import TrainingLevels, as_levels, contextual_x0_loss, loss_weight
from .process import LevelLike, as_level

OBJECTIVES = ("eq6", "eq5")

# relational(x0, t) -> r_phi(x0, c, t); a batch that is a multiple of the conditioning's is tiled over it
# (ComfyUI's convention, contextdiff.adapter.match_text_batch), so several inputs share one call.
Relational = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BiasVariant:
    """How the bias is trained; the defaults are the paper's Eq. 6. See the module docstring for each field."""

    objective: str = "eq6"
    self_bias: float = 0.0
    lipschitz_weight: float = 0.0
    lipschitz_bound: float = 1.0
    input_blur: float = 0.0
    input_noise: float = 0.0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r}: choose one of {OBJECTIVES} (eq6 is the paper's)")
        if not 0.0 <= self.self_bias <= 1.0:
            raise ValueError(f"self_bias={self.self_bias}: give a share of the batch between 0 and 1")
        for name in ("lipschitz_weight", "input_blur", "input_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value}: give a finite number, 0 or more (0 switches it off)")
        if not (math.isfinite(self.lipschitz_bound) and self.lipschitz_bound > 0):
            raise ValueError(f"lipschitz_bound={self.lipschitz_bound}: give a positive finite number")

    @property
    def is_paper(self) -> bool:
        """True for Eq. 6 unchanged."""
        return self == BiasVariant()

    def needs_aux(self) -> bool:
        """Whether :func:`variant_loss` needs random draws beyond ``t`` and ``eps``."""
        return self.input_noise > 0 or 0.0 < self.self_bias < 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Aux:
    """Extra randomness of a variant: ``noise`` like ``x0`` (standard normal) and ``uniform`` ``(B,)`` in [0, 1)."""

    noise: torch.Tensor | None = None
    uniform: torch.Tensor | None = None


def draw_aux(variant: BiasVariant, x0: torch.Tensor, gen: torch.Generator | None) -> Aux:
    """The draws ``variant`` needs, from ``gen`` on the CPU (a seed gives the same draws on every device)."""
    if not variant.needs_aux():
        return Aux()
    noise = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype) if variant.input_noise > 0 else None
    uniform = torch.rand(x0.shape[0], generator=gen).to(x0.device) if 0.0 < variant.self_bias < 1.0 else None
    return Aux(noise, uniform)


def posterior_mean_gap(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    x0hat: torch.Tensor,
    level_t: LevelLike,
    level_prev: LevelLike,
    bias: tuple[torch.Tensor, torch.Tensor],
    bias_hat: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Eq. 5 per sample: ``||mu_theta - mu~_t||^2 / (c0^2 n)``, ``c0 = a_{t-1} beta / s_t^2`` (VP:
    ``sqrt(abar_{t-1}) beta_t / (1 - abar_t)``).

    ``mu~_t`` is Eq. 3's mean at ``x0`` with ``bias = (b_t(x0), b_{t-1}(x0))``, ``mu_theta`` the model's
    (Eq. 7, Eq. 24) at ``x0hat`` with ``bias_hat = (b_t(x0hat), b_{t-1}(x0hat))``; the levels (a
    :class:`~contextdiff.schedule.Level` or VP's ``abar``) broadcast against ``x0``. Dividing by ``c0^2`` makes it
    Eq. 6's per-sample x0 error when the bias is zero; the bias terms add
    ``(b_{t-1}(x0hat) - b_{t-1}(x0) - c_xt (b_t(x0hat) - b_t(x0))) / c0``, what Lemma 4 bounds by ``C_t`` and
    Eq. 6 drops.
    """
    lt, lp = as_level(level_t, x0), as_level(level_prev, x0)
    mean_hat, _ = process.posterior(x_t, x0hat, lt, lp, *bias_hat)
    mean, _ = process.posterior(x_t, x0, lt, lp, *bias)
    _, beta = process.kernel_scale(lt, lp)
    c0 = lp.a * beta / (lt.s * lt.s)
    return ((mean_hat - mean) / c0).pow(2).flatten(1).mean(1)


def low_pass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of ``sigma`` pixels over the last two axes (kernel ``2 ceil(3 sigma) + 1``, reflected
    borders); ``sigma = 0`` returns ``x``."""
    if sigma <= 0:
        return x
    size = 2 * math.ceil(3 * sigma) + 1
    flat = x.reshape(-1, 1, *x.shape[-2:])
    return gaussian_blur2d(flat, (size, size), (sigma, sigma), border_type="reflect").reshape(x.shape)


def bottleneck(x0: torch.Tensor, blur: float, noise_std: float, noise: torch.Tensor | None) -> torch.Tensor:
    """``r_phi``'s image input through the bottleneck: ``low_pass(x0, blur) + noise_std * noise``."""
    x = low_pass(x0, blur)
    if noise_std > 0:
        if noise is None:
            raise ValueError("input_noise > 0 needs a noise tensor (draw_aux draws it)")
        x = x + noise_std * noise
    return x


def lipschitz_quotient(r_a: torch.Tensor, r_b: torch.Tensor, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """Per sample ``||r_a - r_b|| / ||x_a - x_b||``: a lower bound of Lemma 4's ``C_t`` along that pair."""
    num = (r_a - r_b).float().flatten(1).norm(dim=1)
    den = (x_a - x_b).float().flatten(1).norm(dim=1)
    return num / den.clamp(min=1e-12)


def lipschitz_hinge(quotient: torch.Tensor, bound: float) -> torch.Tensor:
    """``mean(max(0, q - C)^2)``: zero while every quotient is within the bound ``C``."""
    return F.relu(quotient - bound).pow(2).mean()


def local_lipschitz(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iters: int = 20, step: float = 1e-3, seed: int = 0
) -> torch.Tensor:
    """Per sample the spectral norm of the Jacobian of ``fn`` at ``x`` (batch along dim 0, samples independent):
    power iteration on ``J^T J``, ``J v`` by central differences of size ``step``, ``J^T u`` by autograd.

    It is the local Lipschitz constant, a lower bound of Lemma 4's global ``C_t``; exact (up to the
    iteration's convergence) for a linear ``fn``.
    """
    x = x.detach()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device, x.dtype)

    def unit(u):
        return u / u.flatten(1).norm(dim=1).clamp(min=1e-30).reshape(-1, *([1] * (u.dim() - 1)))

    def jvp(u):
        with torch.no_grad():
            return (fn(x + step * u) - fn(x - step * u)) / (2 * step)

    v = unit(v)
    for _ in range(iters):
        ju = jvp(v)
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            out = fn(xg)
            (grad,) = torch.autograd.grad(out, xg, ju, allow_unused=True) if out.requires_grad else (None,)
        if grad is None:  # fn does not read x (a text-only adapter): its Jacobian is 0
            return torch.zeros(x.shape[0], device=x.device)
        v = unit(grad)
    return jvp(v).float().flatten(1).norm(dim=1)


def variant_loss(
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    levels: TrainingLevels | torch.Tensor,
    denoise: Denoise,
    relational: Relational | None,
    variant: BiasVariant = BiasVariant(),
    aux: Aux = Aux(),
    weighting: str = "uniform",
    gamma: float = 5.0,
    use_bias: bool = True,
    bias_l2: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss of ``variant`` for one batch; returns ``(loss, per-sample loss)``.

    The defaults (and ``use_bias=False``) are :func:`contextdiff.objective.contextual_x0_loss`, Eq. 6,
    called as is. Otherwise: ``r_phi``'s input is ``x0``, or for a ``self_bias`` share of the samples
    the stop-gradient ``x0hat`` of the unbiased ``x_t``, through the bottleneck; ``x_t`` is Eq. 1 with
    that bias; the per-sample loss is Eq. 6's x0 error or Eq. 5's :func:`posterior_mean_gap` (one batched
    adapter call for ``b_{t-1}(x0)``, ``b_t(x0hat)``, ``b_{t-1}(x0hat)``), weighted by ``lambda_t``; then
    the Lipschitz hinge and ``bias_l2`` are added. Arguments as for ``contextual_x0_loss`` (``levels``: the
    model's :class:`~contextdiff.objective.TrainingLevels` or VP's ``abar`` table); ``aux`` from :func:`draw_aux`.
    """
    if variant.is_paper or not use_bias or relational is None:
        return contextual_x0_loss(x0, t, eps, levels, denoise, relational, weighting, gamma, use_bias, bias_l2)
    levels = as_levels(levels)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    drawn = levels.at(t, x0)

    source = x0
    if variant.self_bias > 0:
        # The first pass sees x_t without a bias; its prediction only feeds r_phi (no gradient).
        with torch.no_grad():
            guess = denoise(process.forward_sample(x0, drawn.level, eps), t).to(x0.dtype)
        if variant.self_bias == 1.0:
            source = guess
        elif aux.uniform is None:
            raise ValueError("a self_bias share below 1 needs uniform draws (draw_aux draws them)")
        else:
            source = torch.where((aux.uniform < variant.self_bias).reshape(shape), guess, x0)
    source = bottleneck(source, variant.input_blur, variant.input_noise, aux.noise)
    r_source = relational(source, t)
    bias = drawn.k * r_source
    x_t = process.forward_sample(x0, drawn.level, eps, bias)
    x0hat = denoise(x_t, t)

    # Extra adapter inputs, evaluated in one call: Eq. 5's three biases, the hinge's r(sg x0hat, t).
    inputs, times = [], []
    if variant.objective == "eq5":
        t_prev = (t - 1).clamp(min=0)
        inputs += [source, x0hat.to(x0.dtype), x0hat.to(x0.dtype)]
        times += [t_prev, t, t_prev]
    if variant.lipschitz_weight > 0:
        inputs.append(x0hat.detach().to(x0.dtype))
        times.append(t)
    extra = list(relational(torch.cat(inputs), torch.cat(times)).split(x0.shape[0])) if inputs else []

    if variant.objective == "eq5":
        r_prev, r_hat, r_hat_prev = extra[:3]
        before = levels.previous(t, x0)
        per_sample = posterior_mean_gap(
            x_t,
            x0,
            x0hat.to(x0.dtype),
            drawn.exact,
            before.exact,
            (bias, before.k * r_prev),
            (drawn.k * r_hat, before.k * r_hat_prev),
        )
    else:
        per_sample = (x0hat.float() - x0.float()).pow(2).flatten(1).mean(1)
    loss = (loss_weight(drawn.snr, weighting, gamma) * per_sample).mean()
    if variant.lipschitz_weight > 0:
        quotient = lipschitz_quotient(extra[-1], r_source, x0hat.detach(), source)
        loss = loss + variant.lipschitz_weight * lipschitz_hinge(quotient, variant.lipschitz_bound)
    if bias_l2 > 0:
        loss = loss + bias_l2 * bias.float().pow(2).mean()
    return loss, per_sample
