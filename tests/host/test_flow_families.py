"""Flow-matching families in ComfyUI, in-process: SD3/SD3.5, Flux (dev with guidance_in, schnell without) and
Wan 2.1/2.2 t2v, each a tiny random-weight state dict in the real key layout that ComfyUI's own detection
(``comfy.sd.load_diffusion_model_state_dict``, UNETLoader's path) names as that family.

No T5-XXL / umT5-XXL can be built at test size, so the conditioning is random tensors at the real widths
(``comfy_models.flow_conditioning``: 4096-wide tokens; SD3's 2048 and Flux's 768 pooled embeddings; Flux dev's
guidance 3.5 as FluxGuidance sets it), as the families' text encoders hand them to the sampler.

At strength 0 the ContextDiff sampler (DDIM, eta 0) is ComfyUI's ``euler`` (docs/design.md §1.1): same seed, same
sigmas, float32, 1e-5 relative. The Flux model is 3072 wide (detection fixes its heads), so its tests are slow.
"""

from __future__ import annotations

import importlib

import pytest
import torch

STEPS = 3
KINDS = [
    "sd3",
    "wan",
    pytest.param("flux", marks=pytest.mark.slow),
    pytest.param("flux_schnell", marks=pytest.mark.slow),
]
FAMILY = {"sd3": "sd3", "wan": "wan21", "flux": "flux", "flux_schnell": "flux"}
CONFIG = {"sd3": "SD3", "wan": "WAN21_T2V", "flux": "Flux", "flux_schnell": "FluxSchnell"}


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    from devkit import import_pack

    pack = import_pack()
    return {m: importlib.import_module(f"{pack.__name__}.nodes.{m}") for m in ("sampler_function", "types")}


_models: dict = {}


def model_of(kind: str):
    """One tiny model per kind per module (Flux's takes about a minute to fill on two cores)."""
    from comfy_models import build_flow

    if kind not in _models:
        _models[kind] = build_flow(kind, seed=0)
    return _models[kind]


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _models.clear()


def live_adapter(pack, family_key: str, video: bool = False):
    """A 4096-wide, 16-channel adapter with a live output (random output layer), recording its family."""
    from contextdiff.adapter import AdapterConfig, ContextAdapter

    torch.manual_seed(7)
    cfg = AdapterConfig(dim=64, depth=1, context_dim=4096, latent_channels=16, video=video)
    module = ContextAdapter(cfg).eval().requires_grad_(False)
    torch.nn.init.normal_(module.patch_out.weight, std=0.3)
    torch.nn.init.normal_(module.patch_out.bias, std=0.3)
    return pack["types"].LoadedAdapter(module, {"base_model": family_key}, f"live_{family_key}")


def run(model, kind, sampler, seed=3, cfg=1.0, steps=STEPS):
    """``sample_custom`` as SamplerCustom runs it: ComfyUI's noise for ``seed``, the model's ``simple`` sigmas."""
    import comfy.sample
    import comfy.samplers
    from comfy_models import flow_conditioning, flow_latent

    latent = flow_latent(kind)
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    pos, neg = flow_conditioning(kind, 1), flow_conditioning(kind, 2)
    return comfy.sample.sample_custom(
        model, noise, cfg, sampler, sigmas, pos, neg, latent, disable_pbar=True, seed=seed
    )


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", KINDS)
def test_detection_names_the_family_and_its_process(comfy_inprocess, kind):
    from contextdiff import families, schedule
    from hostside.families import identify

    model = model_of(kind)
    info = identify(model.model)
    assert info.config == CONFIG[kind] and info.family.key == FAMILY[kind]
    assert info.prediction == "flow" and info.context_dim == 4096
    assert families.process_of(model.get_model_object("model_sampling")) is schedule.FLOW
    assert float(model.get_model_object("model_sampling").sigma_max) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_strength_zero_is_core_euler_and_the_bias_runs(pack, kind):
    """ContextDiff DDIM at eta 0 with a live adapter at strength 0 equals the core euler (1e-5 relative, float32);
    at strength 1 the 4096-wide, 16-channel adapter changes the sample."""
    import comfy.samplers

    model = model_of(kind)
    adapter = live_adapter(pack, FAMILY[kind], video=kind == "wan")
    make = pack["sampler_function"].contextdiff_ksampler
    cfg = 1.0 if kind.startswith("flux") else 4.0  # Flux dev is guidance-distilled: cfg 1, as ComfyUI runs it
    core = run(model, kind, comfy.samplers.sampler_object("euler"), cfg=cfg)
    off = run(model, kind, make(adapter, "ddim", 0.0, 0.0), cfg=cfg)
    assert core.abs().max() > 0 and torch.isfinite(off).all()
    assert rel_err(off, core) <= 1e-5
    live = run(model, kind, make(adapter, "ddim", 0.0, 1.0), cfg=cfg)
    assert torch.isfinite(live).all() and rel_err(live, core) > 1e-3


@pytest.mark.parametrize("method, eta, words", [("ddpm", 0.0, "method ddpm"), ("ddim", 0.5, "eta 0.5")])
def test_ddpm_posterior_is_refused_by_name_before_any_model_call(pack, method, eta, words):
    model = model_of("sd3")
    calls = []
    model = model.clone()
    model.set_model_unet_function_wrapper(
        lambda apply, args: calls.append(1) or apply(args["input"], args["timestep"], **args["c"])
    )
    sampler = pack["sampler_function"].contextdiff_ksampler(None, method, eta, 1.0)
    with pytest.raises(ValueError, match=f"{words} is the DDPM posterior.*choose method ddim with eta 0"):
        run(model, "sd3", sampler)
    assert calls == []


def test_adapter_of_another_flow_family_is_refused_by_name(pack):
    """SD3, Flux and Wan share the widths (4096 tokens, 16 channels): the family the file records decides."""
    sampler = pack["sampler_function"].contextdiff_ksampler(live_adapter(pack, "wan21"), "ddim", 0.0, 1.0)
    with pytest.raises(ValueError, match="trained for Wan 2.x, but this model is SD3/SD3.5"):
        run(model_of("sd3"), "sd3", sampler)


def unsample(model, sampler, sigmas, x):
    """SamplerCustom without added noise on ``sigmas`` from the latent ``x``."""
    import comfy.sample
    from comfy_models import flow_conditioning

    pos, neg = flow_conditioning("sd3", 1), flow_conditioning("sd3", 2)
    return comfy.sample.sample_custom(
        model, torch.zeros_like(x), 1.0, sampler, sigmas, pos, neg, x, disable_pbar=True, seed=0
    )


def test_unsampling_on_flipped_flow_sigmas(pack):
    """The SAMPLER on FlipSigmas (1e-4 first) at strength 0 is the core euler run upwards. To sigma 1 itself
    ComfyUI's sampler divides the result by 1 - sigma = 0 (CONST.inverse_noise_scaling): refused, saying what to do."""
    import comfy.samplers

    model = model_of("sd3")
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 5).flip(0)
    sigmas[0] = 1e-4  # FlipSigmas
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    ours = pack["sampler_function"].contextdiff_ksampler(None, "ddim", 0.0, 1.0)
    core = unsample(model, comfy.samplers.sampler_object("euler"), sigmas[:-1], x)
    got = unsample(model, ours, sigmas[:-1], x)
    assert torch.isfinite(got).all() and rel_err(got, core) <= 1e-5 and rel_err(got, x) > 0.1
    with pytest.raises(ValueError, match="end the flipped sigmas below 1"):
        unsample(model, ours, sigmas, x)
