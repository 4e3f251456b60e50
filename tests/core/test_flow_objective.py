"""Eq. 6 and its variants on flow matching (docs/design.md §1.1), checked against computations written out here:

- ``x_t = (1 - sigma) x0 + sigma (1 - sigma) r(x0, 1000 sigma) + sigma eps`` at the model's shifted sigmas (SD3's
  ``time_snr_shift(3, t/1000)``, computed here from its formula), the adapter told ``1000 sigma``, the x0 error
  weighted by ``((1 - sigma) / sigma)^2`` under ``snr``; at ``sigma = 1`` no bias and ``x_t = eps``;
- Eq. 5 on the pair against the Gaussian posterior by Bayes' rule (precisions added), not by Eq. 3's coefficients;
- Wan's video latent reaches the adapter as each clip's frames in order (one call per frame here).

Float64 where a formula is compared (tolerance 1e-10: only rounding differs); Eq. 6's per-sample error is float32
(1e-6), and the adapter is told ``1000 sigma`` in float32, as the trainer tells it.
"""

import pytest
import torch

from contextdiff.bias_variants import BiasVariant, variant_loss
from contextdiff.objective import AbarLevels, PairLevels, contextual_x0_loss
from contextdiff.schedule import FLOW
from trainer.diffusion import relational

B, C, H, W = 6, 16, 4, 4


def sd3_sigmas(shift: float = 3.0, steps: int = 1000) -> torch.Tensor:
    """ComfyUI's ModelSamplingDiscreteFlow table for SD3: ``shift t / (1 + (shift - 1) t)``, ``t = i / 1000``."""
    t = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    return shift * t / (1 + (shift - 1) * t)


def flow_levels(sigmas: torch.Tensor) -> PairLevels:
    a, s = FLOW.level(sigmas)
    return PairLevels(a, s, sigmas * 1000)


def told(sig: float) -> torch.Tensor:
    """``1000 sigma`` as the adapter is told it: float32."""
    return torch.tensor([1000 * sig], dtype=torch.float64).float().double()


class RecordingAdapter:
    """A nonlinear ``r(x, c, t)``, per sample, that records the timesteps it is told."""

    def __init__(self):
        self.told = []
        g = torch.Generator().manual_seed(1)
        self.w = torch.randn(C, C, generator=g, dtype=torch.float64) / C**0.5

    def __call__(self, x, tokens, t, frames=None):
        self.told.append(t.detach().clone())
        mix = torch.einsum("oc,bchw->bohw", self.w, x)
        per_sample = (1 + t.double().reshape(-1, 1, 1, 1) / 1000, tokens.mean(dim=(1, 2)).reshape(-1, 1, 1, 1))
        return torch.tanh(mix) * per_sample[0] + per_sample[1] * 0.1


def toy_denoiser(x, t):
    return 0.7 * torch.tanh(x) + 0.01 * t.reshape(-1, *([1] * (x.dim() - 1)))


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    eps = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 998, 999])  # 999: sigma 1, the prior
    return x0, eps, t, torch.randn(1, 8, 32, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("weighting", ["uniform", "snr", "min_snr"])
def test_flow_eq6_is_the_process_written_out(weighting):
    x0, eps, t, tokens = batch()
    sigmas = sd3_sigmas()
    adapter = RecordingAdapter()
    r = relational(adapter, tokens, timestep=flow_levels(sigmas).adapter_time)
    loss, per = contextual_x0_loss(x0, t, eps, flow_levels(sigmas), toy_denoiser, r, weighting)
    want_per, weights = [], []
    for i, ti in enumerate(t.tolist()):
        sig = float(sigmas[ti])
        xi = x0[i : i + 1]
        bias = sig * (1 - sig) * adapter(xi, tokens, told(sig))
        x_t = (1 - sig) * xi + bias + sig * eps[i : i + 1]
        want_per.append((toy_denoiser(x_t, torch.tensor([ti])) - xi).pow(2).mean())
        snr = ((1 - sig) / sig) ** 2
        weights.append({"uniform": 1.0, "snr": snr, "min_snr": min(snr, 5.0)}[weighting])
    want_per = torch.stack(want_per)
    torch.testing.assert_close(per, want_per.float(), rtol=1e-6, atol=1e-9)
    want = (torch.tensor(weights, dtype=torch.float64) * want_per).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)  # the weights are float32
    torch.testing.assert_close(adapter.told[0].double(), (sigmas[t] * 1000).float().double())


def test_flow_prior_level_has_no_bias_and_is_the_noise():
    """At the table's last sigma (1, ``a = 0``) ``k = 0`` by the formula, and ``x_t`` is the noise itself."""
    x0, eps, _, tokens = batch()
    levels = flow_levels(sd3_sigmas())
    t = torch.full((B,), 999)
    drawn = levels.at(t, x0)
    assert float(sd3_sigmas()[-1]) == 1.0 and bool((drawn.k == 0).all())
    seen = []
    contextual_x0_loss(x0, t, eps, levels, lambda x, tt: seen.append(x) or x, lambda x, tt: 100 + x)
    torch.testing.assert_close(seen[0], eps, rtol=0, atol=0)


def bayes_posterior_mean(x_t, x0, lt, lp, b_t, b_prev):
    """``q(x_{t-1} | x_t, x0)`` of ``x_{t-1} ~ N(a_p x0 + b_p, s_p^2)``, ``x_t | x_{t-1} ~ N(alpha x_{t-1} + b_t -
    alpha b_p, beta)`` by Bayes' rule: precision ``1/s_p^2 + alpha^2/beta``, mean the precision-weighted sum."""
    (a_t, s_t), (a_p, s_p) = lt, lp
    alpha = a_t / a_p
    beta = s_t**2 - alpha**2 * s_p**2
    if s_p == 0:  # the step to clean data: x_{t-1} = x0 (+ b_p) exactly
        return a_p * x0 + b_prev, a_p * beta / s_t**2
    precision = 1 / s_p**2 + alpha**2 / beta
    mean = ((a_p * x0 + b_prev) / s_p**2 + alpha * (x_t - b_t + alpha * b_prev) / beta) / precision
    return mean, a_p * beta / s_t**2


def test_flow_eq5_is_the_bayes_posterior_gap():
    x0, eps, t, tokens = batch()
    t = t[:-1]  # below the prior (beta > 0 between two levels with a > 0)
    x0, eps = x0[: len(t)], eps[: len(t)]
    sigmas = sd3_sigmas()
    adapter = RecordingAdapter()
    levels = flow_levels(sigmas)
    r = relational(adapter, tokens, timestep=levels.adapter_time)
    _, per = variant_loss(x0, t, eps, levels, toy_denoiser, r, BiasVariant(objective="eq5"))

    def rr(x, sig):
        return adapter(x, tokens, told(sig))

    for i, ti in enumerate(t.tolist()):
        sig = float(sigmas[ti])
        sig_p = float(sigmas[ti - 1]) if ti > 0 else 0.0
        k, k_p = sig * (1 - sig), sig_p * (1 - sig_p)
        xi = x0[i : i + 1]
        x_t = (1 - sig) * xi + k * rr(xi, sig) + sig * eps[i : i + 1]
        xhat = toy_denoiser(x_t, torch.tensor([ti]))
        lt, lp = (1 - sig, sig), (1 - sig_p, sig_p)
        mu, c0 = bayes_posterior_mean(x_t, xi, lt, lp, k * rr(xi, sig), k_p * rr(xi, sig_p))
        mu_hat, _ = bayes_posterior_mean(x_t, xhat, lt, lp, k * rr(xhat, sig), k_p * rr(xhat, sig_p))
        want = ((mu_hat - mu) / c0).pow(2).mean()
        assert per[i].item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12)


def test_vp_levels_keep_the_paper_table():
    """VP's abar table gives a = sqrt(abar), s = sqrt(1 - abar), k = a (1 - a) and snr abar / (1 - abar)."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    t = torch.tensor([0, 400, 998])
    d = AbarLevels(abar).at(t, x0)
    a = abar[t].sqrt()
    torch.testing.assert_close(d.level.a.flatten(), a, rtol=1e-15, atol=0)
    torch.testing.assert_close(d.level.s.flatten(), (1 - abar[t]).sqrt(), rtol=1e-15, atol=0)
    torch.testing.assert_close(d.k.flatten(), a * (1 - a), rtol=1e-15, atol=0)
    abar32 = abar[t].float()  # the weights are float32, as Eq. 6's always were
    torch.testing.assert_close(d.snr, abar32 / (1 - abar32), rtol=0, atol=0)


def test_video_latent_reaches_the_adapter_frame_by_frame():
    """A (B, C, F, H, W) latent with one prompt per clip: each frame gets its clip's prompt and timestep."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, C, 3, H, W, generator=g, dtype=torch.float64)
    tokens = torch.randn(2, 8, 32, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 700])
    adapter = RecordingAdapter()
    levels = flow_levels(sd3_sigmas())
    got = relational(adapter, tokens, timestep=levels.adapter_time)(x, t)
    assert got.shape == x.shape
    for b in range(2):
        for f in range(3):
            want = adapter(x[b : b + 1, :, f], tokens[b : b + 1], levels.adapter_time(t[b : b + 1]).double())
            torch.testing.assert_close(got[b : b + 1, :, f], want, rtol=1e-12, atol=1e-12)
