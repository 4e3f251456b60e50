"""Appendix A.4 toy (Eqs. 32-35): analytic errors vs Monte Carlo, the paper's claim, zero adapter.

Tolerances for Monte Carlo come from the sample count: 5 standard errors of the mean of the
per-sample squared errors (fixed seeds, so the checks are deterministic).
"""

import json

import numpy as np
import pytest

from analysis import toy_a4 as toy_mod
from analysis.toy_a4 import (
    Adapter,
    Toy,
    adapter_error,
    check_claim,
    default_toy,
    equivalent_plain_abar,
    expected_contextdiff_error,
    expected_plain_error,
    gain_sq,
    k_coefficient,
    mc_contextdiff_error,
    mc_plain_error,
    plain_error,
    sd_abar,
)

ABAR = sd_abar()
K = k_coefficient(ABAR, ABAR[-1])
TS = (0, 50, 200, 400, 600, 800, 950, 999)
N = 20000
TOY = default_toy(4)
SINGLE = Toy.make(np.full((1, 3), 0.7), 1.3)  # one caption, d = 3


def adapters(toy):
    return [
        Adapter.make("0.5", toy, 0.5),
        Adapter.make("2", toy, 2.0),
        Adapter.make("c-dep", toy, np.linspace(0.25, 3.0, toy.K)),
        Adapter.make("offset", toy, 1.0, -2.0 * toy.mu),
        Adapter.make("neg", toy, -1.0),
        Adapter.make("very neg", toy, -12.0),
    ]


def test_schedule_matches_the_pack():
    torch = pytest.importorskip("torch")
    from contextdiff import schedule

    assert ABAR.shape == (1000,) and ABAR[-1] == pytest.approx(0.0047, abs=1e-4)
    ref = schedule.k_coefficient(torch.from_numpy(ABAR), torch.tensor(ABAR[-1], dtype=torch.float64))
    np.testing.assert_allclose(K, ref.numpy(), rtol=0, atol=1e-15)
    assert K[-1] == 0.0 and K.max() == pytest.approx(0.25, abs=1e-4)


def test_eq34_eq35_against_direct_gaussian_algebra():
    """Error = trace of Var(x0|x_t,c) = d (sigma^2 - Cov^2/Var) with Cov = s sigma^2, Var = s^2 sigma^2 + 1 - abar."""
    abar = ABAR[:, None]
    for sigma in (0.1, 0.5, 1.0, 3.0):
        for r in (0.0, 0.05, 0.3, -0.1, -1.5):
            s = np.sqrt(abar) + r
            direct = 3 * (sigma**2 - (s * sigma**2) ** 2 / (s**2 * sigma**2 + 1 - abar))
            np.testing.assert_allclose(adapter_error(abar, sigma, r, d=3), direct, rtol=1e-10, atol=1e-14)
    # the paper's intermediate line of Eq. 34 (before simplification)
    a, s2 = ABAR, 0.8**2
    mid = ((1 - a) * a * s2**2 + s2 * (1 - a) ** 2) / (a * s2 + 1 - a) ** 2
    np.testing.assert_allclose(plain_error(a, 0.8), mid, rtol=1e-12)


@pytest.mark.parametrize("t", TS)
def test_mc_matches_analytic(t):
    rng = np.random.default_rng(1000 + t)
    for toy in (TOY, SINGLE):
        m, se = mc_plain_error(ABAR[t], toy, N, rng)
        assert abs(m - expected_plain_error(ABAR[t], toy)) <= 5 * se, (t, "plain")
        for a in adapters(toy):
            m, se = mc_contextdiff_error(ABAR[t], K[t], toy, a, N, rng)
            ref = expected_contextdiff_error(ABAR[t], K[t], toy, a)
            assert abs(m - ref) <= 5 * se, (t, a.name, m, ref, se)


def test_mc_matches_analytic_without_k_T_zero_and_large_r():
    """The bare k formula at T (k_T != 0) and adapters far outside the pack's range."""
    k_bare = k_coefficient(ABAR)
    rng = np.random.default_rng(7)
    for t in (999, 500):
        for rho in (10.0, -30.0):
            a = Adapter.make("big", SINGLE, rho)
            m, se = mc_contextdiff_error(ABAR[t], k_bare[t], SINGLE, a, N, rng)
            assert abs(m - expected_contextdiff_error(ABAR[t], k_bare[t], SINGLE, a)) <= 5 * se


def test_zero_adapter_is_plain_exactly():
    for sigma in (0.2, 1.0, 4.0):
        np.testing.assert_allclose(adapter_error(ABAR, sigma, 0.0 * K, d=5), plain_error(ABAR, sigma, d=5), rtol=1e-13)
    zero = Adapter.make("zero", TOY, 0.0)
    np.testing.assert_allclose(
        expected_contextdiff_error(ABAR, K, TOY, zero), expected_plain_error(ABAR, TOY), rtol=1e-13
    )
    for t in (0, 300, 999):  # same draws, two code paths: equal to rounding
        a = mc_plain_error(ABAR[t], TOY, 500, np.random.default_rng(t))
        b = mc_contextdiff_error(ABAR[t], K[t], TOY, zero, 500, np.random.default_rng(t))
        assert a == pytest.approx(b, rel=1e-12)


def test_caption_only_offset_changes_nothing():
    with_off = Adapter.make("off", TOY, 1.0, 5.0 * TOY.mu + 1.0)
    plain_r = Adapter.make("no off", TOY, 1.0)
    np.testing.assert_allclose(
        expected_contextdiff_error(ABAR, K, TOY, with_off),
        expected_contextdiff_error(ABAR, K, TOY, plain_r),
        rtol=1e-13,
    )
    m1 = mc_contextdiff_error(ABAR[400], K[400], TOY, with_off, 4000, np.random.default_rng(3))
    m2 = mc_contextdiff_error(ABAR[400], K[400], TOY, plain_r, 4000, np.random.default_rng(3))
    assert m1[0] == pytest.approx(m2[0], rel=1e-9)


def test_claim_non_negative_adapter_never_raises_error():
    """The claim after Eq. 35, analytically on a dense grid, and by Monte Carlo with common random numbers."""
    res = check_claim(ABAR, K, rhos=np.linspace(0.0, 20.0, 201), sigmas=[0.01, 0.1, 0.5, 1, 2, 10, 100])
    assert res["holds_for_nonnegative"] and res["nonnegative_max_diff"] <= 0.0
    # strictly lower wherever r = k_t rho > 0 and 0 < abar < 1
    inner = K > 0
    for rho in (0.1, 1.0, 5.0):
        assert np.all(adapter_error(ABAR[inner], 1.0, K[inner] * rho) < plain_error(ABAR[inner], 1.0))
    # equality exactly where k_t = 0 (t = T)
    assert adapter_error(ABAR[-1], 1.0, K[-1] * 3.0) == plain_error(ABAR[-1], 1.0)
    # the same ordering by Monte Carlo on identical draws (common random numbers)
    for t in (100, 400, 700):
        p = mc_plain_error(ABAR[t], TOY, N, np.random.default_rng(t))
        a = mc_contextdiff_error(ABAR[t], K[t], TOY, Adapter.make("1", TOY, 1.0), N, np.random.default_rng(t))
        assert a[0] < p[0]


def test_claim_boundary_for_negative_adapters():
    """Not claimed by the paper: r in (-2 sqrt(abar), 0) raises the error; r < -2 sqrt(abar) lowers it."""
    inner = K > 0
    a, k = ABAR[inner], K[inner]
    assert np.all(adapter_error(a, 1.0, -1.0 * k) > plain_error(a, 1.0))  # rho = -1: always worse
    r = -2.0 * np.sqrt(a)
    np.testing.assert_allclose(adapter_error(a, 1.0, r), plain_error(a, 1.0), rtol=1e-12)  # boundary: equal
    assert np.all(adapter_error(a, 1.0, 1.01 * r) < plain_error(a, 1.0))
    assert np.all(adapter_error(a, 1.0, 0.99 * r) > plain_error(a, 1.0))
    res = check_claim(ABAR, K)
    assert -1.0 in res["negative_rho_raising_error"] and -3.0 in res["negative_rho_lowering_error_somewhere"]


def test_gain_is_an_snr_shift():
    """ContextDiff at abar has exactly the plain error at abar' = s^2 / (s^2 + 1 - abar), any sigma."""
    for rho in (0.5, 2.0, -1.0):
        ae = equivalent_plain_abar(ABAR, K * rho)
        for sigma in (0.3, 1.0, 2.5):
            np.testing.assert_allclose(adapter_error(ABAR, sigma, K * rho), plain_error(ae, sigma), rtol=1e-12)
    np.testing.assert_allclose(gain_sq(ABAR, 0.0), ABAR, rtol=1e-15)


def test_cli_writes_png_and_json(tmp_path, capsys):
    assert toy_mod.main(["--samples", "400", "--out", str(tmp_path), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "HOLDS" in out and "plain" in out
    png = (tmp_path / "toy_a4.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    data = json.loads((tmp_path / "toy_a4.json").read_text())
    assert data["samples_per_point"] == 400 and data["claim"]["holds_for_nonnegative"]
    s = data["mc"]["settings"]
    assert "plain" in s and len(s["plain"]["mc_mean"]) == len(data["mc"]["t"])
    assert all(abs(z) < 6 for v in s.values() for z in v["z"])
