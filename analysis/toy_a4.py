"""Appendix A.4 of the paper ("Better expression of cross-modal semantics"), Eqs. 29-35, checked.

The toy model (Eq. 32): a caption ``c`` and an image embedding ``x0 in R^d`` with

    x0 = mu(c) + sigma(c) * eps,        eps ~ N(0, I_d) independent of c.

Plain diffusion (Eq. 31) noises it as ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps'``; ContextDiff
(Eq. 1 / Eq. 30) adds the cross-modal bias ``b_t = k_t r_phi(x0, c)`` with
``k_t = sqrt(abar_t)(1 - sqrt(abar_t))`` (docs/notation.md, ``k_T = 0`` at the last training
step). The optimal estimator under the L2 objective (Eqs. 29, 33) is ``E[x0 | x_t, c]``, and
its error is what Eqs. 34 and 35 compute:

    Eq. 34 (plain):       E||x0 - E[x0|x_t,c]||^2 = d sigma^2 (1 - abar) / (abar sigma^2 + 1 - abar)
    Eq. 35 (ContextDiff): E||x0 - E[x0|x_t,c]||^2 = d sigma^2 (1 - abar) / ((sqrt(abar) + r)^2 sigma^2 + 1 - abar)

The setting, with what the paper leaves implicit stated (every function below follows it):

* ``sigma(c)`` is a scalar: ``Cov(x0 | c) = sigma(c)^2 I_d`` (the ``d *`` factor of Eqs. 34-35).
  ``eps'`` is independent of ``eps`` and ``c`` (the paper writes ``eps`` for both in places).
* The paper's toy adapter is linear in ``x0``: ``x_t = sqrt(abar) x0 + sqrt(1-abar) eps' + r(phi,c,t) x0``
  with a scalar ``r``. It has no ``k_t``; matching it to the main text's ``b_t = k_t r_phi(x0, c)``
  means ``r_phi(x0, c) = rho(c) x0 + beta(c)`` and ``r(phi, c, t) = k_t rho(c)``. Here ``rho`` is the
  adapter strength and :func:`adapter_error` takes the toy's ``r`` (already times ``k_t``).
* A part of the adapter that depends on ``c`` only (``beta(c)``) is known to the estimator, which
  conditions on ``c``, so it is subtracted and changes nothing (checked by Monte Carlo below).
* "Non-negative adapter" means ``r >= 0`` (hence ``rho >= 0`` since ``k_t >= 0``).
* The errors are conditional on ``c``; a population error averages them over ``c``
  (:func:`expected_plain_error`, :func:`expected_contextdiff_error`).

Re-deriving Eqs. 34 and 35 (``s = sqrt(abar) + r``, ``D = s^2 sigma^2 + 1 - abar``): ``Cov(x0, x_t | c) =
s sigma^2 I``, ``Var(x_t | c) = D I``, so ``E[x0|x_t,c] = mu + (s sigma^2 / D)(x_t - s mu)`` and
``x0 - E[x0|x_t,c] = sigma (1-abar)/D eps - s sigma^2 sqrt(1-abar)/D eps'``, whose expected squared
norm is ``d sigma^2 (1-abar) [(1-abar) + s^2 sigma^2] / D^2 = d sigma^2 (1-abar) / D``. Eq. 34 is the
case ``r = 0``. The paper's intermediate lines and both results are right. Its slips are only in
notation: Eq. 33 writes ``f_theta(x0, c)``, which should be ``f_theta(x_t, c)``; Eq. 35 drops the
``(c)`` of ``sigma^2`` in the denominators; the toy's ``r(phi, c, t)`` silently absorbs ``k_t``.

What the algebra says about the claim ("a non-negative adapter will always reduce the estimation
error"): the error is decreasing in ``s^2``, and ``s^2 - abar = r (r + 2 sqrt(abar))``. So it is
reduced (strictly for ``0 < abar < 1``) iff ``r > 0`` or ``r < -2 sqrt(abar)``, and increased for
``-2 sqrt(abar) < r < 0``. The claim holds. Non-negativity is sufficient, not necessary, and a
small negative adapter makes things worse. The gain is exactly a higher signal-to-noise ratio: ContextDiff at
``abar`` has the error of plain diffusion at ``abar' = s^2 / (s^2 + 1 - abar)``
(:func:`equivalent_plain_abar`), i.e. at an earlier, less noisy timestep. Note too that the
minimisation over ``phi`` in Eq. 29 has no minimiser in this toy: the error tends to 0 as
``r -> inf``. The toy shows that the adapter can raise the SNR; it does not isolate a semantic effect.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SD_BETA_START = 0.00085
SD_BETA_END = 0.012
SD_STEPS = 1000


# --------------------------------------------------------------------------- schedule


def sd_abar(n_steps: int = SD_STEPS, beta_start: float = SD_BETA_START, beta_end: float = SD_BETA_END) -> np.ndarray:
    """SD's scaled-linear schedule: ``betas = linspace(sqrt(b0), sqrt(b1), n)**2``, ``abar = cumprod(1 - betas)``.

    Index ``t = 0 .. n-1``; ``abar[0] = 1 - b0`` (the least noisy training step), ``abar[-1] = abar_T``.
    """
    betas = np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), n_steps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def k_coefficient(abar, abar_T=None) -> np.ndarray:
    """``k_t = sqrt(abar_t) (1 - sqrt(abar_t))`` (after Eq. 1), with ``k = 0`` for ``abar <= abar_T``.

    Same convention as :func:`contextdiff.schedule.k_coefficient` (``k_T = 0`` keeps the prior
    ``x_T ~ N(0, I)``); ``abar_T=None`` gives the bare formula.
    """
    abar = np.asarray(abar, dtype=np.float64)
    root = np.sqrt(abar)
    k = root * (1.0 - root)
    if abar_T is None:
        return k
    return np.where(abar <= abar_T * (1.0 + 1e-5), 0.0, k)


# --------------------------------------------------------------------------- analytic (Eqs. 34, 35)


def gain_sq(abar, r) -> np.ndarray:
    """``s^2 = (sqrt(abar) + r)^2`` (the signal gain of ``x0`` in ``x_t``, squared), written as
    ``abar + r (r + 2 sqrt(abar))`` so that ``r = 0`` gives exactly ``abar`` and the sign of
    ``s^2 - abar`` (which decides the claim after Eq. 35) is explicit."""
    abar = np.asarray(abar, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    return abar + r * (r + 2.0 * np.sqrt(abar))


def plain_error(abar, sigma, d: int = 1) -> np.ndarray:
    """Eq. 34: optimal-estimator error of plain diffusion for one caption ``c``,
    ``d sigma^2 (1 - abar) / (abar sigma^2 + 1 - abar)``."""
    abar = np.asarray(abar, dtype=np.float64)
    sig2 = np.asarray(sigma, dtype=np.float64) ** 2
    one_m = 1.0 - abar
    return d * sig2 * one_m / (one_m + abar * sig2)


def adapter_error(abar, sigma, r, d: int = 1) -> np.ndarray:
    """Eq. 35: optimal-estimator error with the toy's linear adapter ``r(phi, c, t) x0`` for one caption,
    ``d sigma^2 (1 - abar) / ((sqrt(abar) + r)^2 sigma^2 + 1 - abar)``.

    ``r`` is the toy's coefficient, i.e. ``k_t rho(c)`` in the main text's parameterisation.
    ``r = 0`` returns exactly :func:`plain_error` (Eq. 34).
    """
    abar = np.asarray(abar, dtype=np.float64)
    sig2 = np.asarray(sigma, dtype=np.float64) ** 2
    one_m = 1.0 - abar
    return d * sig2 * one_m / (one_m + gain_sq(abar, r) * sig2)


def equivalent_plain_abar(abar, r) -> np.ndarray:
    """The plain-diffusion noise level with the same error as ContextDiff at ``abar`` (any ``sigma``):
    ``abar' = s^2 / (s^2 + 1 - abar)``, i.e. equal SNR ``abar'/(1-abar') = s^2/(1-abar)``."""
    s2 = gain_sq(abar, r)
    return s2 / (s2 + 1.0 - np.asarray(abar, dtype=np.float64))


def equivalent_plain_t(abar_schedule: np.ndarray, abar_eq) -> np.ndarray:
    """Fractional timestep of ``abar_schedule`` (decreasing in t) at which ``abar == abar_eq``
    (linear interpolation; clipped to the schedule's range)."""
    t = np.arange(len(abar_schedule), dtype=np.float64)
    return np.interp(-np.asarray(abar_eq, dtype=np.float64), -abar_schedule, t)


# --------------------------------------------------------------------------- toy data and adapters


@dataclass(frozen=True)
class Toy:
    """Eq. 32 with a categorical caption ``c in {0..K-1}``: ``x0 | c ~ N(mu[c], sigma[c]^2 I_d)``."""

    mu: np.ndarray  # (K, d)
    sigma: np.ndarray  # (K,)
    weights: np.ndarray  # (K,), p(c)

    @property
    def d(self) -> int:
        return int(self.mu.shape[1])

    @property
    def K(self) -> int:
        return int(self.mu.shape[0])

    @staticmethod
    def make(mu, sigma, weights=None) -> Toy:
        mu = np.atleast_2d(np.asarray(mu, dtype=np.float64))
        sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (mu.shape[0],)).copy()
        w = np.full(mu.shape[0], 1.0 / mu.shape[0]) if weights is None else np.asarray(weights, np.float64)
        if np.any(sigma <= 0) or w.shape != (mu.shape[0],) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError("need sigma > 0 and weights: a probability vector over the captions")
        return Toy(mu, sigma, w)


def default_toy(d: int = 4) -> Toy:
    """Two captions, equally likely, with different means and spreads (``sigma = 1`` and ``0.5``)."""
    mu = np.stack([np.linspace(-1.0, 1.0, d), np.linspace(1.5, 0.5, d)])
    return Toy.make(mu, [1.0, 0.5])


@dataclass(frozen=True)
class Adapter:
    """``r_phi(x0, c) = rho[c] x0 + beta[c]``; the bias is ``b_t = k_t r_phi`` and the toy's ``r = k_t rho[c]``."""

    name: str
    rho: np.ndarray  # (K,)
    beta: np.ndarray | None = field(default=None)  # (K, d) caption-only part, or None

    @staticmethod
    def make(name: str, toy: Toy, rho, beta=None) -> Adapter:
        rho = np.broadcast_to(np.asarray(rho, dtype=np.float64), (toy.K,)).copy()
        if beta is not None:
            beta = np.broadcast_to(np.asarray(beta, dtype=np.float64), (toy.K, toy.d)).copy()
        return Adapter(name, rho, beta)

    @property
    def non_negative(self) -> bool:
        return bool(np.all(self.rho >= 0))


def default_adapters(toy: Toy) -> list[Adapter]:
    """The strengths and choices plotted: constant ``rho``, caption-dependent ``rho(c)``, a caption-only
    offset on top of ``rho = 1`` (no effect), and a negative ``rho`` (outside the paper's claim)."""
    return [
        Adapter.make("rho=0.5", toy, 0.5),
        Adapter.make("rho=1", toy, 1.0),
        Adapter.make("rho=2", toy, 2.0),
        Adapter.make("rho(c)=(2, 0.5)", toy, [2.0, 0.5][: toy.K] + [1.0] * max(0, toy.K - 2)),
        Adapter.make("rho=1, beta(c)=3 mu(c)", toy, 1.0, 3.0 * toy.mu),
        Adapter.make("rho=-1 (negative)", toy, -1.0),
    ]


def expected_plain_error(abar, toy: Toy) -> np.ndarray:
    """Eq. 34 averaged over captions: ``sum_c p(c) plain_error(abar, sigma(c), d)``; shape of ``abar``."""
    abar = np.asarray(abar, dtype=np.float64)[..., None]
    return (toy.weights * plain_error(abar, toy.sigma, toy.d)).sum(-1)


def expected_contextdiff_error(abar, k, toy: Toy, adapter: Adapter) -> np.ndarray:
    """Eq. 35 averaged over captions with ``r = k_t rho(c)``; ``beta(c)`` does not enter."""
    abar = np.asarray(abar, dtype=np.float64)[..., None]
    r = np.asarray(k, dtype=np.float64)[..., None] * adapter.rho
    return (toy.weights * adapter_error(abar, toy.sigma, r, toy.d)).sum(-1)


# --------------------------------------------------------------------------- Monte Carlo


def plain_posterior_mean(x_t, abar, mu, sigma) -> np.ndarray:
    """Eq. 34, first line:
    ``E[x0|x_t,c] = mu + sqrt(abar) sigma^2 / (abar sigma^2 + 1 - abar) (x_t - sqrt(abar) mu)``."""
    s = np.sqrt(abar)
    sig2 = sigma * sigma
    g = s * sig2 / ((1.0 - abar) + abar * sig2)
    return mu + g * (x_t - s * mu)


def adapter_posterior_mean(x_t, abar, mu, sigma, r, offset=0.0) -> np.ndarray:
    """Eq. 35, first line, with a known caption-only offset ``k_t beta(c)`` subtracted:
    ``E[x0|x_t,c] = mu + s sigma^2 / (s^2 sigma^2 + 1 - abar) (x_t - offset - s mu)``, ``s = sqrt(abar) + r``."""
    s = np.sqrt(abar) + r
    sig2 = sigma * sigma
    g = s * sig2 / ((1.0 - abar) + gain_sq(abar, r) * sig2)
    return mu + g * ((x_t - offset) - s * mu)


def _draw(toy: Toy, n: int, rng: np.random.Generator):
    c = rng.choice(toy.K, size=n, p=toy.weights)
    eps = rng.standard_normal((n, toy.d))
    eps_prime = rng.standard_normal((n, toy.d))
    mu = toy.mu[c]
    sigma = toy.sigma[c][:, None]
    return c, mu, sigma, mu + sigma * eps, eps_prime  # x0 by Eq. 32


def _mean_se(sq: np.ndarray) -> tuple[float, float]:
    return float(sq.mean()), float(sq.std(ddof=1) / np.sqrt(sq.size))


def mc_plain_error(abar: float, toy: Toy, n: int, rng: np.random.Generator) -> tuple[float, float]:
    """Monte-Carlo estimate of Eq. 34 averaged over captions: draw ``c, x0`` (Eq. 32), ``x_t`` by the
    plain forward process (Eq. 31), apply the closed-form ``E[x0|x_t,c]``, average ``||x0 - xhat||^2``.
    Returns ``(mean, standard error of the mean)``."""
    _, mu, sigma, x0, eps_prime = _draw(toy, n, rng)
    x_t = np.sqrt(abar) * x0 + np.sqrt(1.0 - abar) * eps_prime
    xhat = plain_posterior_mean(x_t, abar, mu, sigma)
    return _mean_se(((x0 - xhat) ** 2).sum(-1))


def mc_contextdiff_error(
    abar: float, k: float, toy: Toy, adapter: Adapter, n: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Monte-Carlo estimate of Eq. 35 averaged over captions: ``x_t = sqrt(abar) x0 + b_t + sqrt(1-abar) eps'``
    with ``b_t = k_t (rho(c) x0 + beta(c))`` (Eq. 1 / Eq. 30), estimator of :func:`adapter_posterior_mean`.
    Draws the same random numbers as :func:`mc_plain_error` for the same generator state, so a zero
    adapter reproduces it bit for bit. Returns ``(mean, standard error of the mean)``."""
    c, mu, sigma, x0, eps_prime = _draw(toy, n, rng)
    r = k * adapter.rho[c][:, None]
    offset = 0.0 if adapter.beta is None else k * adapter.beta[c]
    b = r * x0 + offset
    x_t = np.sqrt(abar) * x0 + b + np.sqrt(1.0 - abar) * eps_prime
    xhat = adapter_posterior_mean(x_t, abar, mu, sigma, r, offset)
    return _mean_se(((x0 - xhat) ** 2).sum(-1))


# --------------------------------------------------------------------------- the claim, on a grid


def check_claim(abar: np.ndarray, k: np.ndarray, rhos=None, sigmas=None) -> dict:
    """The claim after Eq. 35 on a grid of strengths ``rho``, spreads ``sigma`` and all ``t``:
    the largest ``adapter - plain`` for ``rho >= 0`` (claim: <= 0), and where ``rho < 0`` raises the error."""
    rhos = np.linspace(-3.0, 5.0, 81) if rhos is None else np.asarray(rhos, np.float64)
    sigmas = np.array([0.1, 0.5, 1.0, 2.0, 5.0]) if sigmas is None else np.asarray(sigmas, np.float64)
    A, R, S = abar[:, None, None], k[:, None, None] * rhos[None, :, None], sigmas[None, None, :]
    diff = adapter_error(A, S, R) - plain_error(A, S)  # (t, rho, sigma)
    rel = diff / plain_error(A, S)
    nonneg = rhos >= 0
    neg = ~nonneg
    worse_neg = (diff[:, neg, :] > 0).any(-1)  # (t, n_neg)
    return {
        "rho_grid": [float(rhos.min()), float(rhos.max()), int(rhos.size)],
        "sigma_grid": sigmas.tolist(),
        "nonnegative_max_diff": float(diff[:, nonneg, :].max()),
        "nonnegative_max_rel_diff": float(rel[:, nonneg, :].max()),
        "holds_for_nonnegative": bool((diff[:, nonneg, :] <= 0).all()),
        "negative_rho_raising_error": [float(x) for x in rhos[neg][worse_neg.any(0)]],
        "negative_rho_lowering_error_somewhere": [float(x) for x in rhos[neg][(diff[:, neg, :] < 0).any((0, 2))]],
        "condition": "error reduced iff r(r + 2 sqrt(abar)) > 0, r = k_t rho: rho > 0 or rho < -2/(1 - sqrt(abar_t))",
    }


# --------------------------------------------------------------------------- CLI

TABLE_T = (0, 100, 250, 500, 750, 900, 999)


def run(samples: int = 20000, seed: int = 0, d: int = 4, t_mc=None) -> dict:
    """Everything that :func:`main` writes: analytic curves, MC points, the claim check."""
    abar = sd_abar()
    k = k_coefficient(abar, abar[-1])
    toy = default_toy(d)
    adapters = default_adapters(toy)
    t_mc = np.unique(np.r_[np.arange(0, SD_STEPS, 50), SD_STEPS - 1, TABLE_T]) if t_mc is None else np.asarray(t_mc)
    rng = np.random.default_rng(seed)

    plain = expected_plain_error(abar, toy)
    curves = {a.name: expected_contextdiff_error(abar, k, toy, a) for a in adapters}

    def mc_block(fn):
        means, ses = zip(*(fn(int(t)) for t in t_mc), strict=False)
        return np.array(means), np.array(ses)

    mc = {"plain": mc_block(lambda t: mc_plain_error(abar[t], toy, samples, rng))}
    for a in adapters:
        mc[a.name] = mc_block(lambda t, a=a: mc_contextdiff_error(abar[t], k[t], toy, a, samples, rng))

    settings = {"plain": plain, **curves}
    out = {
        "source": "ContextDiff (ICLR 2024) Appendix A.4, Eqs. 32-35; analysis/toy_a4.py",
        "schedule": {
            "kind": "SD scaled-linear",
            "beta_start": SD_BETA_START,
            "beta_end": SD_BETA_END,
            "steps": SD_STEPS,
            "abar_T": float(abar[-1]),
            "k_T": float(k[-1]),
            "k": "sqrt(abar)(1 - sqrt(abar)), 0 at t = T",
        },
        "toy": {"d": toy.d, "mu": toy.mu.tolist(), "sigma": toy.sigma.tolist(), "p_c": toy.weights.tolist()},
        "adapters": [
            {
                "name": a.name,
                "rho": a.rho.tolist(),
                "beta": None if a.beta is None else a.beta.tolist(),
                "non_negative": a.non_negative,
            }
            for a in adapters
        ],
        "error_unit": "E||x0 - E[x0|x_t,c]||^2 / d, averaged over c",
        "samples_per_point": samples,
        "seed": seed,
        "mc": {"t": t_mc.tolist(), "abar": abar[t_mc].tolist(), "k": k[t_mc].tolist(), "settings": {}},
        "curves": {"t": list(range(0, SD_STEPS, 10)) + [SD_STEPS - 1]},
        "claim": check_claim(abar, k),
    }
    ct = np.array(out["curves"]["t"])
    for name, curve in settings.items():
        m, se = mc[name]
        out["mc"]["settings"][name] = {
            "analytic": (curve[t_mc] / d).tolist(),
            "mc_mean": (m / d).tolist(),
            "mc_se": (se / d).tolist(),
            "z": ((m - curve[t_mc]) / se).tolist(),
            "ratio_to_plain": (curve[t_mc] / plain[t_mc]).tolist(),
        }
        out["curves"][name] = (curve[ct] / d).tolist()
    for a in adapters:
        if np.all(a.rho == a.rho[0]):  # one gain for every caption: a single equivalent plain timestep
            out["mc"]["settings"][a.name]["equivalent_plain_t"] = equivalent_plain_t(
                abar, equivalent_plain_abar(abar[t_mc], k[t_mc] * a.rho[0])
            ).tolist()
    out["_arrays"] = {"abar": abar, "k": k, "t_mc": t_mc, "settings": settings, "mc": mc, "d": d}
    return out


def print_table(res: dict, file=None) -> None:
    file = sys.stdout if file is None else file
    arr = res["_arrays"]
    abar, k, settings, d = arr["abar"], arr["k"], arr["settings"], arr["d"]
    idx = {int(t): i for i, t in enumerate(arr["t_mc"])}
    names = [n for n in settings if n != "plain"]
    print(
        "ContextDiff App. A.4 toy: optimal error E||x0 - E[x0|x_t,c]||^2 / d (Eqs. 34, 35), "
        f"d={d}, {res['samples_per_point']} MC samples/point",
        file=file,
    )
    print("ratio = ContextDiff / plain (analytic); MC in brackets as (MC - analytic)/SE", file=file)
    head = f"{'t':>4} {'abar':>7} {'k_t':>6} {'plain':>7} {'MC plain':>17} " + " ".join(f"{n[:16]:>16}" for n in names)
    print(head, file=file)
    for t in TABLE_T:
        i = idx.get(t)
        p = settings["plain"][t]
        row = f"{t:>4} {abar[t]:7.4f} {k[t]:6.4f} {p / d:7.4f} "
        if i is not None:
            m, se = arr["mc"]["plain"][0][i], arr["mc"]["plain"][1][i]
            row += f"{m / d:8.4f}±{se / d:.4f} "
        else:
            row += " " * 18
        for n in names:
            ratio = settings[n][t] / p
            z = (arr["mc"][n][0][i] - settings[n][t]) / arr["mc"][n][1][i] if i is not None else np.nan
            row += f"{ratio:.4f} ({z:+.1f})".rjust(16) + " "
        print(row.rstrip(), file=file)
    c = res["claim"]
    print(
        f"claim (rho >= 0 never raises the error), grid rho in [{c['rho_grid'][0]}, {c['rho_grid'][1]}], "
        f"sigma in {c['sigma_grid']}, all t: {'HOLDS' if c['holds_for_nonnegative'] else 'FAILS'} "
        f"(max adapter - plain = {c['nonnegative_max_diff']:.3g})",
        file=file,
    )
    print(
        f"negative rho that raise the error somewhere: {len(c['negative_rho_raising_error'])} of the grid's "
        f"negative values; condition: {c['condition']}",
        file=file,
    )


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = res["_arrays"]
    settings, mc, t_mc, d = arr["settings"], arr["mc"], arr["t_mc"], arr["d"]
    t = np.arange(len(arr["abar"]))
    plain = settings["plain"]
    colors = {
        "plain": "black",
        "rho=0.5": "tab:cyan",
        "rho=1": "tab:blue",
        "rho=2": "tab:purple",
        "rho(c)=(2, 0.5)": "tab:green",
        "rho=1, beta(c)=3 mu(c)": "tab:orange",
        "rho=-1 (negative)": "tab:red",
    }
    styles = {"rho=1, beta(c)=3 mu(c)": ":", "rho=-1 (negative)": "--"}
    markers = {"rho=1, beta(c)=3 mu(c)": "x"}
    labels = {
        "plain": "plain diffusion (Eq. 34)",
        "rho=1, beta(c)=3 mu(c)": "rho=1 + caption offset beta(c) (same as rho=1)",
        "rho=-1 (negative)": "rho=-1 (negative; outside the claim)",
    }

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1.15, 1.15, 0.9]})
    ax, axr, axz = axes
    for j, (name, curve) in enumerate(settings.items()):
        col = colors.get(name, f"C{j}")
        lab = labels.get(name, f"ContextDiff {name} (Eq. 35)")
        ax.plot(t, curve / d, color=col, ls=styles.get(name, "-"), lw=1.6, label=lab)
        m, se = mc[name]
        ax.errorbar(t_mc, m / d, yerr=2 * se / d, fmt=markers.get(name, "o"), ms=3.5, color=col, capsize=2, lw=0.8)
        axr.plot(t, curve / plain, color=col, ls=styles.get(name, "-"), lw=1.6)
        axr.errorbar(
            t_mc,
            m / plain[t_mc],
            yerr=2 * se / plain[t_mc],
            fmt=markers.get(name, "o"),
            ms=3.5,
            color=col,
            capsize=2,
            lw=0.8,
        )
        off = (j - len(settings) / 2) * 3.0
        axz.errorbar(t_mc + off, (m - curve[t_mc]) / se, yerr=1.0, fmt=markers.get(name, "o"), ms=3, color=col, lw=0.6)
    ax.set(
        xlabel="timestep t (SD scaled-linear schedule, T = 999)",
        ylabel=r"optimal error  $E\|x_0 - E[x_0|x_t,c]\|^2 / d$",
        title="Estimation error: analytic (lines), Monte Carlo (points, ±2 SE)",
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    axr.axhline(1.0, color="black", lw=0.8)
    axr.set(
        xlabel="timestep t",
        ylabel="error ratio  ContextDiff / plain",
        title=r"Ratio to plain; $b_t = k_t(\rho(c)\,x_0 + \beta(c))$, $k_t=\sqrt{\bar\alpha_t}(1-\sqrt{\bar\alpha_t})$",
    )
    axr.grid(alpha=0.3)
    axz.axhspan(-5, 5, color="0.9", label="±5 SE (test tolerance)")
    axz.axhline(0.0, color="black", lw=0.8)
    axz.set(
        xlabel="timestep t (points offset for legibility)",
        ylabel="(MC − analytic) / SE",
        title=f"Monte Carlo residuals, {res['samples_per_point']} samples/point",
    )
    axz.set_ylim(-6, 6)
    axz.legend(fontsize=8, loc="lower left")
    axz.grid(alpha=0.3)
    fig.suptitle(
        "ContextDiff Appendix A.4 toy: x0 = mu(c) + sigma(c) eps, two captions "
        f"(sigma = {', '.join(f'{s:g}' for s in res['toy']['sigma'])}), d = {d}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.toy_a4",
        description="ContextDiff Appendix A.4 toy: analytic (Eqs. 34, 35) vs Monte Carlo "
        "optimal estimation error, with and without the adapter.",
    )
    p.add_argument("--samples", type=int, default=20000, help="Monte-Carlo samples per (t, setting) point")
    p.add_argument("--out", type=Path, default=Path("docs"), help="folder for toy_a4.png and toy_a4.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--d", type=int, default=4, help="embedding dimension")
    args = p.parse_args(argv)
    if args.samples < 2:
        p.error("--samples must be >= 2")
    res = run(args.samples, args.seed, args.d)
    args.out.mkdir(parents=True, exist_ok=True)
    print_table(res)
    plot(res, args.out / "toy_a4.png")
    data = {k: v for k, v in res.items() if k != "_arrays"}
    (args.out / "toy_a4.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out / 'toy_a4.png'} and {args.out / 'toy_a4.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
