"""The bias variants of issue 20 (contextdiff/bias_variants.py), each checked against an independent
computation: Eq. 3's means written out here from the paper, SVDs and autograd Jacobians for the Lipschitz
constant, a hand-built Gaussian kernel for the low-pass, recorded adapter inputs for the self-consistent
bias. Float64 where a formula is compared (tolerance 1e-10: only rounding differs); the finite-difference
Jacobian has an error of order step^2 times the third derivative (tolerance 1e-4 relative)."""

import math

import pytest
import torch

from contextdiff.bias_variants import (
    Aux,
    BiasVariant,
    bottleneck,
    draw_aux,
    lipschitz_hinge,
    lipschitz_quotient,
    local_lipschitz,
    low_pass,
    posterior_mean_gap,
    variant_loss,
)
from contextdiff.objective import contextual_x0_loss, previous_abar

B, C, H, W = 5, 2, 6, 6


@pytest.fixture(autouse=True)
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def sd_abar() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


ABAR = sd_abar()


def paper_k(abar: torch.Tensor) -> torch.Tensor:
    """k_t = sqrt(abar)(1 - sqrt(abar)) (after Eq. 1), 0 at the last training step (after Eq. 6)."""
    k = abar.sqrt() * (1 - abar.sqrt())
    return torch.where(abar <= ABAR[-1], torch.zeros_like(k), k)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, C, H, W, generator=g)
    eps = torch.randn(B, C, H, W, generator=g)
    t = torch.tensor([0, 1, 400, 998, 999])  # both ends: abar_{-1} = 1 and k_T = 0
    return x0, eps, t, g


def nonlinear_r(seed=1):
    """r(x, t): nonlinear in x and in t, samples independent (like the adapter)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, C, generator=g)

    def r(x, t):
        mixed = torch.einsum("oc,bchw->bohw", w, x)
        return torch.tanh(mixed) * (1 + (t.double() / 1000).reshape(-1, 1, 1, 1)) + 0.2 * x**2

    return r


def toy_denoiser(seed=2):
    """f(x_t, t): a smooth function of x_t (stands in for the UNet)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(C, C, generator=g) * 0.5

    def f(x_t, t):
        return torch.einsum("oc,bchw->bohw", a, x_t) + torch.sin(x_t) * 0.3

    return f


def eq3_mean(x_t, x0, abar_t, abar_prev, b_t, b_prev):
    """Eq. 3's mean written from the paper: c0 x0 + c_xt (x_t - b_t) + b_{t-1}, with beta_t = 1 - a_t."""
    beta = 1 - abar_t / abar_prev
    c0 = math.sqrt(abar_prev) * beta / (1 - abar_t)
    cxt = math.sqrt(abar_t / abar_prev) * (1 - abar_prev) / (1 - abar_t)
    return c0 * x0 + cxt * (x_t - b_t) + b_prev, c0


def test_defaults_are_eq6_itself():
    x0, eps, t, _ = batch()
    r, f = nonlinear_r(), toy_denoiser()
    assert BiasVariant().is_paper and not BiasVariant(objective="eq5").is_paper
    got = variant_loss(x0, t, eps, ABAR, f, r)
    want = contextual_x0_loss(x0, t, eps, ABAR, f, r)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_eq5_matches_the_means_written_out():
    x0, eps, t, _ = batch()
    r, f = nonlinear_r(), toy_denoiser()
    _, per = variant_loss(x0, t, eps, ABAR, f, r, BiasVariant(objective="eq5"))
    for i, ti in enumerate(t.tolist()):
        ab = float(ABAR[ti])
        ab_prev = 1.0 if ti == 0 else float(ABAR[ti - 1])
        k, k_prev = float(paper_k(ABAR[ti])), (0.0 if ti == 0 else float(paper_k(ABAR[ti - 1])))
        xi, ti_prev = x0[i : i + 1], torch.tensor([max(ti - 1, 0)])
        x_t = math.sqrt(ab) * xi + k * r(xi, torch.tensor([ti])) + math.sqrt(1 - ab) * eps[i : i + 1]
        xhat = f(x_t, torch.tensor([ti]))
        mu, c0 = eq3_mean(x_t, xi, ab, ab_prev, k * r(xi, torch.tensor([ti])), k_prev * r(xi, ti_prev))
        mu_hat, _ = eq3_mean(x_t, xhat, ab, ab_prev, k * r(xhat, torch.tensor([ti])), k_prev * r(xhat, ti_prev))
        want = ((mu_hat - mu) / c0).pow(2).mean()
        assert per[i].item() == pytest.approx(want.item(), rel=1e-10, abs=1e-12)


def test_eq5_without_bias_is_eq6():
    """With r = 0 the means differ by c0 (x0hat - x0): the normalised Eq. 5 is Eq. 6's x0 error."""
    x0, eps, t, _ = batch()
    f = toy_denoiser()

    def zero(x, tt):
        return torch.zeros_like(x)

    eq5 = variant_loss(x0, t, eps, ABAR, f, zero, BiasVariant(objective="eq5"))[1]
    eq6 = contextual_x0_loss(x0, t, eps, ABAR, f, zero)[1]
    torch.testing.assert_close(eq5, eq6.double(), rtol=1e-6, atol=1e-12)  # Eq. 6 computes in float32


def test_eq5_bias_terms_cancel_for_an_x0_independent_bias():
    """If r depends on (c, t) only, b(x0hat) = b(x0): Eq. 5 is the x0 error on the same biased x_t."""
    x0, eps, t, _ = batch()
    f = toy_denoiser()

    def r(x, tt):
        return torch.ones_like(x) * (1 + tt.double() / 500).reshape(-1, 1, 1, 1)

    eq5 = variant_loss(x0, t, eps, ABAR, f, r, BiasVariant(objective="eq5"))[1]
    eq6 = contextual_x0_loss(x0, t, eps, ABAR, f, r)[1]
    torch.testing.assert_close(eq5, eq6.double(), rtol=1e-6, atol=1e-12)  # Eq. 6 computes in float32
    # ... and an x0-dependent r does add terms:
    eq5_nl = variant_loss(x0, t, eps, ABAR, f, nonlinear_r(), BiasVariant(objective="eq5"))[1]
    eq6_nl = contextual_x0_loss(x0, t, eps, ABAR, f, nonlinear_r())[1]
    assert (eq5_nl - eq6_nl)[1:4].abs().min() > 1e-8


def test_posterior_mean_gap_normalisation():
    g = torch.Generator().manual_seed(3)
    x_t, x0, xh = (torch.randn(2, 3, generator=g) for _ in range(3))
    ab, abp = torch.tensor([[0.5], [0.9]]), torch.tensor([[0.6], [0.95]])
    zero = (torch.zeros(2, 3), torch.zeros(2, 3))
    torch.testing.assert_close(posterior_mean_gap(x_t, x0, xh, ab, abp, zero, zero), (xh - x0).pow(2).mean(1))


def test_previous_abar():
    t = torch.tensor([0, 1, 999])
    torch.testing.assert_close(previous_abar(ABAR, t), torch.stack([torch.tensor(1.0), ABAR[0], ABAR[998]]))


def test_local_lipschitz_is_the_spectral_norm():
    g = torch.Generator().manual_seed(4)
    mats = torch.randn(3, 12, 12, generator=g)

    def linear(x):
        return torch.einsum("bij,bj->bi", mats, x.flatten(1)).reshape(x.shape)

    x = torch.randn(3, 3, 2, 2, generator=g)
    got = local_lipschitz(linear, x, iters=200)
    torch.testing.assert_close(got.double(), torch.linalg.matrix_norm(mats, ord=2), rtol=1e-6, atol=0)

    def nonlinear(x):
        return torch.tanh(linear(x)) + 0.1 * x**3

    got = local_lipschitz(nonlinear, x, iters=200)
    for i in range(3):

        def one(xi, i=i):
            return torch.tanh(mats[i] @ xi.flatten()) + 0.1 * xi.flatten() ** 3

        jac = torch.autograd.functional.jacobian(one, x[i])
        jac = jac.reshape(12, 12)
        assert got[i].item() == pytest.approx(torch.linalg.matrix_norm(jac, ord=2).item(), rel=1e-4)


def test_local_lipschitz_of_a_function_that_ignores_x_is_zero():
    """A text-only adapter (``--bias_input none``) does not read x0: Lemma 4 holds with C_t = 0, whether its output
    carries a graph (trainable weights) or none (frozen)."""
    x = torch.randn(2, 3, 4, 4)
    w = torch.randn(1, 3, 4, 4, requires_grad=True)
    for fn in (lambda x: w.expand_as(x) * 2.0, lambda x: torch.ones_like(x)):
        assert torch.equal(local_lipschitz(fn, x, iters=3), torch.zeros(2))


def test_lipschitz_quotient_and_hinge():
    g = torch.Generator().manual_seed(5)
    mat = torch.randn(4, 4, generator=g)
    top = torch.linalg.matrix_norm(mat, ord=2)
    xa, xb = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    q = lipschitz_quotient(xa @ mat.T, xb @ mat.T, xa, xb)
    assert bool((q <= top + 1e-9).all())  # a quotient never exceeds the Lipschitz constant
    _, _, vh = torch.linalg.svd(mat)
    q_top = lipschitz_quotient(vh[:1] @ mat.T, torch.zeros(1, 4), vh[:1], torch.zeros(1, 4))
    assert q_top.item() == pytest.approx(top.item(), rel=1e-6)  # ... and reaches it along v_1
    quot = torch.tensor([0.5, 1.5, 3.0])
    assert lipschitz_hinge(quot, 1.0).item() == pytest.approx((0.5**2 + 2.0**2) / 3)
    assert lipschitz_hinge(quot, 5.0).item() == 0.0


def test_lipschitz_penalty_is_added_to_the_loss():
    x0, eps, t, _ = batch()
    r, f = nonlinear_r(), toy_denoiser()
    base = variant_loss(x0, t, eps, ABAR, f, r, BiasVariant(lipschitz_weight=2.0, lipschitz_bound=1e9))[0]
    with_pen = variant_loss(x0, t, eps, ABAR, f, r, BiasVariant(lipschitz_weight=2.0, lipschitz_bound=0.01))[0]
    k = paper_k(ABAR[t]).reshape(-1, 1, 1, 1)
    xhat = f(
        ABAR[t].sqrt().reshape(-1, 1, 1, 1) * x0 + k * r(x0, t) + (1 - ABAR[t]).sqrt().reshape(-1, 1, 1, 1) * eps, t
    )
    q = (r(xhat, t) - r(x0, t)).flatten(1).norm(dim=1) / (xhat - x0).flatten(1).norm(dim=1)
    want = torch.clamp(q - 0.01, min=0).pow(2).mean() * 2.0
    assert (with_pen - base).item() == pytest.approx(want.item(), rel=1e-6)


def test_low_pass_is_a_normalised_gaussian_convolution():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 16, 16, generator=g)
    sigma = 1.3
    size = 2 * math.ceil(3 * sigma) + 1
    ax = torch.arange(size, dtype=torch.float64) - size // 2
    k1 = torch.exp(-(ax**2) / (2 * sigma**2))
    kernel = torch.outer(k1, k1) / torch.outer(k1, k1).sum()
    padded = torch.nn.functional.pad(x.reshape(-1, 1, 16, 16), (size // 2,) * 4, mode="reflect")
    want = torch.nn.functional.conv2d(padded, kernel[None, None]).reshape(x.shape)
    torch.testing.assert_close(low_pass(x, sigma), want, rtol=1e-6, atol=1e-6)
    const = torch.full((1, 1, 8, 8), 0.7)
    torch.testing.assert_close(low_pass(const, 2.0), const)
    assert low_pass(x, 0.0) is x
    noise = torch.randn(x.shape, generator=g)
    torch.testing.assert_close(bottleneck(x, 0.0, 0.25, noise), x + 0.25 * noise)
    with pytest.raises(ValueError, match="noise tensor"):
        bottleneck(x, 0.0, 0.25, None)


def test_self_bias_feeds_r_the_stop_gradient_prediction():
    x0, eps, t, _ = batch()
    f = toy_denoiser()
    seen = []

    def r(x, tt):
        seen.append(x)
        return 0.1 * torch.tanh(x)

    x0 = x0.requires_grad_(True)
    variant_loss(x0, t, eps, ABAR, f, r, BiasVariant(self_bias=1.0))
    ab = ABAR[t].reshape(-1, 1, 1, 1)
    guess = f(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)
    torch.testing.assert_close(seen[0], guess.detach())
    assert not seen[0].requires_grad  # the first pass gets no gradient
    seen.clear()
    uniform = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.4])
    variant_loss(x0, t, eps, ABAR, f, r, BiasVariant(self_bias=0.5), Aux(uniform=uniform))
    pick = (uniform < 0.5).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(seen[0], torch.where(pick, guess, x0))


def test_bottleneck_feeds_r_the_blurred_noised_x0():
    x0, eps, t, g = batch()
    f = toy_denoiser()
    seen = []

    def r(x, tt):
        seen.append(x)
        return 0.1 * torch.tanh(x)

    variant = BiasVariant(input_blur=1.0, input_noise=0.3)
    aux = draw_aux(variant, x0, g)
    assert aux.noise is not None and aux.uniform is None and draw_aux(BiasVariant(), x0, g) == Aux()
    variant_loss(x0, t, eps, ABAR, f, r, variant, aux)
    torch.testing.assert_close(seen[0], low_pass(x0, 1.0) + 0.3 * aux.noise)


def test_gradients_reach_both_networks_under_eq5():
    x0, eps, t, _ = batch()
    w_r = torch.tensor(0.5, requires_grad=True)
    w_f = torch.tensor(0.9, requires_grad=True)

    def r(x, tt):
        return w_r * torch.tanh(x)

    def f(x, tt):
        return w_f * x

    loss, _ = variant_loss(x0, t, eps, ABAR, f, r, BiasVariant(objective="eq5", lipschitz_weight=1.0))
    loss.backward()
    assert w_r.grad.abs() > 0 and w_f.grad.abs() > 0


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"objective": "eq7"}, "objective"),
        ({"self_bias": 1.5}, "self_bias"),
        ({"lipschitz_weight": -1.0}, "lipschitz_weight"),
        ({"input_blur": float("nan")}, "input_blur"),
        ({"lipschitz_bound": 0.0}, "lipschitz_bound"),
    ],
)
def test_bad_settings_are_refused(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        BiasVariant(**kwargs)


def test_trainer_options_name_the_variant():
    """The trainer's flat options reach the loss: the shapes recipe is Eq. 6, each flag sets its field."""
    from trainer.config import ConfigError, load_config
    from trainer.diffusion import bias_variant

    recipe = ["--config", "trainer/configs/shapes.yaml"]
    assert bias_variant(load_config(recipe)).is_paper
    flags = ["--objective", "eq5", "--self_bias", "0.5", "--lipschitz_weight", "2", "--lipschitz_bound", "3"]
    flags += ["--input_blur", "1.5", "--input_noise", "0.25"]
    cfg = load_config(recipe + flags)
    assert bias_variant(cfg) == BiasVariant("eq5", 0.5, 2.0, 3.0, 1.5, 0.25)
    assert {"objective": "eq5", "self_bias": 0.5}.items() <= cfg.to_dict().items()  # stored in the file
    with pytest.raises(ConfigError, match="self_bias"):
        load_config(recipe + ["--self_bias", "1.5"])
