"""Inversion on flow-matching models through the editing nodes' own route, in-process: ``edit_runs.invert`` (the
ContextDiff DDIM Inversion node's run: ComfyUI's ``sample_custom`` with the inversion SAMPLER, flipped sigmas to
sigma 1) then ``edit_runs.edit`` (the Edit Sampler's run, fuse_attention off: the inverted noise enters as ComfyUI's
noise, ``noise_scaling`` at sigma 1 being the noise itself). Not only the core loop: the host's guider, latent
format (SD3's shift and scale), schedule and noise handling are all on the way.

The model's prediction is the exact Gaussian denoiser (ComfyUI's model-function wrapper on the tiny random-weight
files of tests/comfy_models.py: the model itself is never run), so the exact answer is known: exact inversion then
sampling returns the input to 1e-4 relative, on the flow schedules ComfyUI ships: SD3 (shift 3), Flux (ComfyUI's
ModelSamplingFlux at 1024 x 1024, mu = 1.15, put on the SD3 file by the core node's own patch: the tiny Flux file is
3072 wide and the denoiser replaces the model anyway) and Wan 2.1 (shift 8, a 5-D video latent).
"""

from __future__ import annotations

import pytest
import torch

STEPS = 10
TOL = 1e-4  # issue 27's target for exact inversion with the Gaussian denoiser
SHAPES = {"sd3": (1, 16, 6, 6), "flux": (1, 16, 6, 6), "wan": (1, 16, 3, 6, 6)}
_models: dict = {}


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    import importlib

    from devkit import import_pack

    name = import_pack().__name__
    return {m: importlib.import_module(f"{name}.nodes.{m}") for m in ("edit_runs", "types", "sampler_function")}


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _models.clear()


def flow_model(kind: str):
    """The tiny file's model; for ``flux`` the SD3 file with Flux's schedule (the core ModelSamplingFlux node)."""
    from comfy_models import build_flow

    if kind not in _models:
        if kind == "flux":
            from comfy_extras.nodes_model_advanced import ModelSamplingFlux

            base = build_flow("sd3", seed=0)
            _models[kind] = ModelSamplingFlux().patch(base, 1.15, 0.5, 1024, 1024)[0]
        else:
            _models[kind] = build_flow(kind, seed=0)
    return _models[kind]


class FlowGaussian:
    """E[x0 | x_t] for x0 ~ N(mu, diag(v)) under x_t = (1 - sigma) x0 + sigma eps, in the model's latent space (after
    process_latent_in), as ComfyUI's model-function wrapper sees it (``timestep`` is sigma there); counts calls."""

    def __init__(self, shape, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(shape[1:], generator=g)
        self.v = (0.2 + 1.5 * torch.rand(shape[1:], generator=g)) ** 2
        self.calls = 0

    def sample(self, shape, seed=1):
        g = torch.Generator().manual_seed(seed)
        return self.mu + self.v.sqrt() * torch.randn(shape, generator=g)

    def __call__(self, apply_model, args):
        self.calls += 1
        x, sigma = args["input"], args["timestep"]
        s = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        a = 1 - s
        return self.mu + self.v * a / (a * a * self.v + s * s) * (x - a * self.mu)


def gaussian(kind: str):
    den = FlowGaussian(SHAPES[kind])
    model = flow_model(kind).clone()
    model.set_model_unet_function_wrapper(den)
    return model, den


def live_adapter(pack, kind: str):
    from contextdiff.adapter import AdapterConfig, ContextAdapter

    torch.manual_seed(7)
    module = ContextAdapter(AdapterConfig(dim=64, depth=1, context_dim=4096, latent_channels=16, video=kind == "wan"))
    torch.nn.init.normal_(module.patch_out.weight, std=0.3)
    torch.nn.init.normal_(module.patch_out.bias, std=0.3)
    key = {"sd3": "sd3", "flux": "sd3", "wan": "wan21"}[kind]  # the Flux-scheduled file is the SD3 file
    return pack["types"].LoadedAdapter(module.eval().requires_grad_(False), {"base_model": key}, f"live_{key}")


def round_trip(pack, kind, refine, adapter=None, scheduler="simple", steps=STEPS):
    """(reconstruction, input, inverted noise, source) through the nodes' runs, cfg 1, the same prompt."""
    from comfy_models import flow_conditioning

    from contextdiff.editing import EditSettings, InversionSettings

    edit_runs = pack["edit_runs"]
    model, den = gaussian(kind)
    latent = model.model.process_latent_out(den.sample(SHAPES[kind]))  # a latent as VAEEncode hands it over
    pos = flow_conditioning("sd3" if kind == "flux" else kind, seed=1)
    settings = InversionSettings(steps=steps, scheduler=scheduler, cfg=1.0, refine_steps=refine)
    source = edit_runs.invert(edit_runs.Guide(model, pos, None, adapter), {"samples": latent.clone()}, settings)
    plan = edit_runs.plan_edit(EditSettings(cfg=1.0, fuse=False), source.settings)
    result = edit_runs.edit(edit_runs.Guide(model, pos, None, adapter), source, plan)
    return result.samples, latent, source


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["sd3", "flux", "wan"])
def test_node_route_inverts_exactly_to_sigma_one(pack, kind):
    """Refined inversion to sigma 1 and the Edit Sampler's run return the input to 1e-4 (with a live, nonlinear
    context bias too); classic inversion (refine_steps 0) does not, so the refinement is what makes it exact. The
    schedule reaches 1, where the inverted latent is the noise itself (a = 0, k_T = 0)."""
    exact, x0, source = round_trip(pack, kind, refine=50)
    assert float(source.sigmas[0]) == 1.0 and source.store.entries == {} and torch.isfinite(source.noise).all()
    classic, _, _ = round_trip(pack, kind, refine=0)
    biased, _, with_bias = round_trip(pack, kind, refine=50, adapter=live_adapter(pack, kind))
    errs = {"exact": rel_err(exact, x0), "classic": rel_err(classic, x0), "biased": rel_err(biased, x0)}
    print(f"{kind} round trip, {STEPS} simple steps:", errs)
    assert exact.shape == x0.shape and errs["exact"] < TOL and errs["biased"] < TOL, errs
    assert rel_err(with_bias.noise, source.noise) > 1e-3  # the bias is live in both runs, not dropped
    assert errs["classic"] > 100 * errs["exact"] and errs["classic"] > TOL, errs


@pytest.mark.parametrize(
    "kind, scheduler", [("sd3", "ddim_uniform"), ("sd3", "beta"), ("flux", "normal"), ("wan", "simple")]
)
def test_node_route_at_50_steps_and_other_schedulers(pack, kind, scheduler):
    """Exact at 50 steps too, on other schedulers. ddim_uniform starts at sigma 0.9993 on SD3's schedule, not 1: the
    noise is then x_top / sigma_top, which the Edit Sampler's noise_scaling multiplies back."""
    back, x0, source = round_trip(pack, kind, refine=50, scheduler=scheduler, steps=50)
    assert (float(source.sigmas[0]) < 1.0) == (scheduler == "ddim_uniform")
    assert rel_err(back, x0) < TOL


def test_inverted_noise_at_sigma_one_is_the_ode_noise(pack):
    """Without bias, inversion to sigma 1 is the probability-flow ODE's noise for Gaussian data (closed form: the
    affine map between the marginals N(mu, v) and N(0, 1), per coordinate), up to Euler's first-order error: within
    2% at 500 steps through the node route. The noise is unit-variance noise, not a scaled latent."""
    model, den = gaussian("sd3")
    _, x0_latent, source = round_trip(pack, "sd3", refine=50, steps=500)
    x0 = model.model.process_latent_in(x0_latent)
    want = (x0 - den.mu) / den.v.sqrt()
    assert rel_err(source.noise, want) < 2e-2


@pytest.mark.parametrize("fuse, words", [(True, ""), (False, "cat")])
def test_fusion_accepted_on_every_flow_family_before_any_model_call(pack, fuse, words):
    """The Edit Sampler fuses SD3's and Flux's joint attention and Wan's video attention (and the inversion records
    it); the Video Edit refuses the image DiTs, whose frames it would have to rewire. No model call is made by any
    of these checks."""
    from contextdiff.editing import EditSettings

    edit_runs = pack["edit_runs"]
    wan, den = gaussian("wan")
    edit_runs.require_editable(wan, EditSettings(fuse=fuse, blend_words=words))
    edit_runs.require_video_edit(wan)  # a native video model
    assert edit_runs.fuses_attention(wan) and den.calls == 0
    for kind in ("sd3", "flux"):
        model, den_dit = gaussian(kind)
        edit_runs.require_editable(model, EditSettings(fuse=fuse, blend_words=words))
        assert edit_runs.fuses_attention(model)
        with pytest.raises(ValueError, match="the Video Edit .* needs attention fusion"):
            edit_runs.require_video_edit(model)
        assert den_dit.calls == 0
    assert den.calls == 0


def test_inversion_sampler_never_divides_by_one_minus_sigma(pack, monkeypatch):
    """ComfyUI's KSAMPLER ends with CONST.inverse_noise_scaling, 1 / (1 - sigma); the inversion's SAMPLER must never
    call it (at sigma 1 it would divide by 0), and the ContextDiff SAMPLER refuses flipped sigmas that reach 1."""
    import comfy.model_sampling

    calls = []
    original = comfy.model_sampling.CONST.inverse_noise_scaling
    monkeypatch.setattr(
        comfy.model_sampling.CONST,
        "inverse_noise_scaling",
        lambda self, sigma, latent: calls.append(float(sigma)) or original(self, sigma, latent),
    )
    _, _, source = round_trip(pack, "sd3", refine=0, steps=3)
    assert calls == [0.0]  # the edit's descent to 0 only
    assert torch.isfinite(source.noise).all()
