"""The pack inside a real ComfyUI host on loopback: loading, samplers against the core ones and
against the pure-PyTorch reference, DDPM determinism, interrupts and bad adapter files."""

from __future__ import annotations

import math
import time

import pytest
import torch
from helpers import plain_edit_node, rel_err
from safetensors.torch import load_file

from contextdiff.adapter_io import load_adapter

STEPS = 8
SIZE = 128  # pixels: a 16x16 latent


_counter = [0]


def graph(sampler: dict, adapter: str | None = None, extra: dict | None = None, size: int = SIZE) -> tuple[dict, str]:
    """API-format prompt: tiny model, random conditionings, empty latent, ``sampler`` -> SaveLatent."""
    _counter[0] += 1
    prefix = f"t{_counter[0]}"
    prompt = {
        "model": {
            "class_type": "ContextDiffTest_TinyModel",
            "inputs": {"seed": 0, "model_channels": 32, "context_dim": 768},
        },
        "pos": {
            "class_type": "ContextDiffTest_RandomConditioning",
            "inputs": {"seed": 1, "context_dim": 768, "tokens": 77},
        },
        "neg": {
            "class_type": "ContextDiffTest_RandomConditioning",
            "inputs": {"seed": 2, "context_dim": 768, "tokens": 77},
        },
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "sampler": sampler,
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}},
    }
    if adapter is not None:
        prompt["adapter"] = {"class_type": "ContextDiffAdapterLoader", "inputs": {"adapter_name": adapter}}
        sampler["inputs"]["adapter"] = ["adapter", 0]
    prompt.update(extra or {})
    return prompt, prefix


def common(seed=3):
    return {
        "model": ["model", 0],
        "positive": ["pos", 0],
        "negative": ["neg", 0],
        "latent_image": ["latent", 0],
        "seed": seed,
        "steps": STEPS,
        "cfg": 4.0,
        "scheduler": "normal",
        "denoise": 1.0,
    }


def ours(method="ddim", strength=1.0, eta=0.0, **kw):
    return {
        "class_type": "ContextDiffKSampler",
        "inputs": {**common(**kw), "method": method, "eta": eta, "adapter_strength": strength},
    }


def core(sampler_name="ddim", **kw):
    return {"class_type": "KSampler", "inputs": {**common(**kw), "sampler_name": sampler_name}}


def run_latent(server, prompt_prefix) -> torch.Tensor:
    prompt, prefix = prompt_prefix
    server.run(prompt)
    files = sorted(server.output_dir.glob(f"{prefix}_*.latent"))
    assert files, f"SaveLatent wrote nothing for {prefix}"
    return load_file(str(files[-1]))["latent_tensor"]


def test_pack_loads_without_import_failure(server):
    info = server.get("/object_info")
    for node in ("ContextDiffAdapterLoader", "ContextDiffKSampler", "ContextDiffSampler"):
        assert node in info, f"{node} missing from /object_info"
    log = server.log()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and "ContextDiff" in line]
    assert not failed, failed
    assert "ContextDiff-ComfyUI" in log  # ComfyUI listed the pack among loaded custom nodes
    options = info["ContextDiffAdapterLoader"]["input"]["required"]["adapter_name"][1]["options"]
    assert isinstance(options, list)


def test_zero_adapter_equals_core_ddim(server, adapters):
    base = run_latent(server, graph(core("ddim")))
    mine = run_latent(server, graph(ours("ddim"), adapter="zero.safetensors"))
    assert base.abs().max() > 0
    assert rel_err(mine, base) <= 1e-5
    no_adapter = run_latent(server, graph(ours("ddim")))
    assert rel_err(no_adapter, base) <= 1e-5
    # Strength 0 with a live adapter is the base sampler too.
    off = run_latent(server, graph(ours("ddim", strength=0.0), adapter="live.safetensors"))
    assert rel_err(off, base) <= 1e-5


def test_zero_adapter_ddpm_equals_core_ddpm(server, adapters):
    base = run_latent(server, graph(core("ddpm")))
    mine = run_latent(server, graph(ours("ddpm"), adapter="zero.safetensors"))
    assert rel_err(mine, base) <= 1e-5
    other_seed = run_latent(server, graph(ours("ddpm", seed=4), adapter="zero.safetensors"))
    assert rel_err(other_seed, base) > 1e-2


def reference(adapter_path, method="ddim", strength=1.0, seed=3, scheduler="normal", start_has_bias=False):
    """The same run without the node pack: tiny model, hand-written CFG, contextdiff samplers."""
    import comfy.k_diffusion.sampling
    import comfy.sample
    import comfy.samplers
    from comfy_models import build_sd15, random_conditioning

    from contextdiff import sampling
    from contextdiff.bias import adapter_bias

    patcher = build_sd15(0, 32, 768)
    base = patcher.model
    ms = base.model_sampling
    pos = random_conditioning(1)[0][0]
    neg = random_conditioning(2)[0][0]
    latent = torch.zeros(1, 4, SIZE // 8, SIZE // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, STEPS)

    def denoiser(x, sigma, **_):
        with torch.no_grad():
            c = base.apply_model(x, sigma, c_crossattn=pos)
            u = base.apply_model(x, sigma, c_crossattn=neg)
        return u + 4.0 * (c - u)

    adapter, _ = load_adapter(adapter_path)
    bias = adapter_bias(adapter, pos, ms.timestep, float(ms.sigma_max), strength)
    at_max = math.isclose(float(sigmas[0]), float(ms.sigma_max), rel_tol=1e-5)  # ComfyUI's noise scaling
    x = noise * (torch.sqrt(1.0 + sigmas[0] ** 2) if at_max else sigmas[0])
    options = dict(bias=bias, disable=True, start_has_bias=start_has_bias)
    if method == "ddim":
        out = sampling.sample_contextdiff_ddim(denoiser, x, sigmas, **options)
    else:
        # The host's own noise for this seed, as the node draws it (its seeding differs between host versions).
        noise_sampler = comfy.k_diffusion.sampling.default_noise_sampler(x, seed=seed)
        out = sampling.sample_contextdiff_ddpm(denoiser, x, sigmas, noise_sampler=noise_sampler, **options)
    return base.process_latent_out(out)


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_live_adapter_matches_reference(server, adapters, comfy_inprocess, method):
    base = run_latent(server, graph(core(method)))
    mine = run_latent(server, graph(ours(method), adapter="live.safetensors"))
    assert rel_err(mine, base) > 1e-3, "a non-zero adapter must change the sample"
    ref = reference(adapters / "live.safetensors", method)
    assert rel_err(mine, ref) <= 1e-4
    half = run_latent(server, graph(ours(method, strength=0.5), adapter="live.safetensors"))
    assert rel_err(half, mine) > 1e-4 and rel_err(half, base) > 1e-4


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_start_below_T_takes_no_first_step_bias(server, adapters, comfy_inprocess, method):
    """ddim_uniform starts at t = 951 from ComfyUI's noise, which carries no b_t: the first step takes b_t = 0
    (as at T), then the bias as usual; subtracting k_951 r there would move the sample (see first_step_bias)."""
    node = ours(method)
    node["inputs"]["scheduler"] = "ddim_uniform"
    mine = run_latent(server, graph(node, adapter="live.safetensors"))
    path = adapters / "live.safetensors"
    assert rel_err(mine, reference(path, method, scheduler="ddim_uniform", start_has_bias=False)) <= 1e-4
    assert rel_err(mine, reference(path, method, scheduler="ddim_uniform", start_has_bias=True)) > 1e-3


def test_ddpm_fixed_seed_reproduces(server, adapters):
    first = run_latent(server, graph(ours("ddpm"), adapter="live.safetensors"))
    server.post("/free", {"free_memory": True})  # drop ComfyUI's cache so the sampler really re-runs
    time.sleep(0.5)
    second = run_latent(server, graph(ours("ddpm"), adapter="live.safetensors"))
    # Two runs: same seed, same noise; equal to rounding (no bitwise claim across runs).
    assert rel_err(second, first) <= 1e-6


def test_sampler_for_sampler_custom(server, adapters):
    def custom(sampler_ref):
        return {
            "class_type": "SamplerCustom",
            "inputs": {
                "model": ["model", 0],
                "add_noise": True,
                "noise_seed": 3,
                "cfg": 4.0,
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "sampler": sampler_ref,
                "sigmas": ["sigmas", 0],
                "latent_image": ["latent", 0],
            },
        }

    sigmas = {
        "sigmas": {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["model", 0], "scheduler": "normal", "steps": STEPS, "denoise": 1.0},
        }
    }
    core_sel = dict(sigmas, sel={"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}})
    base = run_latent(server, graph(custom(["sel", 0]), extra=core_sel))
    cd = {"class_type": "ContextDiffSampler", "inputs": {"method": "ddim", "eta": 0.0, "adapter_strength": 1.0}}
    zero = dict(
        sigmas,
        cd=dict(cd, inputs=dict(cd["inputs"], adapter=["ad", 0])),
        ad={"class_type": "ContextDiffAdapterLoader", "inputs": {"adapter_name": "zero.safetensors"}},
    )
    assert rel_err(run_latent(server, graph(custom(["cd", 0]), extra=zero)), base) <= 1e-5
    live = dict(zero, ad={"class_type": "ContextDiffAdapterLoader", "inputs": {"adapter_name": "live.safetensors"}})
    via_custom = run_latent(server, graph(custom(["cd", 0]), extra=live))
    via_ksampler = run_latent(server, graph(ours("ddim"), adapter="live.safetensors"))
    assert rel_err(via_custom, base) > 1e-3
    assert rel_err(via_custom, via_ksampler) <= 1e-5


@pytest.mark.parametrize(
    "name, expected",
    [
        ("corrupt.safetensors", "corrupt"),
        ("pickled.safetensors", "pickle/torch.save file, which is refused"),
        ("pickled.pt", "pickle/torch.save file, which is refused"),
        ("sdxl.safetensors", "trained for context dim 2048 (SDXL), but this model's conditioning gives 768 (SD1.x)"),
    ],
)
def test_bad_adapter_files_give_clear_errors(server, adapters, name, expected):
    from devkit.comfy_host import PromptError

    with pytest.raises(PromptError, match=None) as err:
        run_latent(server, graph(ours("ddim"), adapter=name))
    assert expected in str(err.value), str(err.value)
    # The server keeps serving.
    assert "ContextDiffKSampler" in server.get("/object_info/ContextDiffKSampler")
    assert run_latent(server, graph(ours("ddim", seed=11), adapter="zero.safetensors")).abs().max() > 0


def test_interrupt_stops_within_a_step(server, adapters):
    timed = server.run(graph(ours("ddim"), adapter="live.safetensors", size=256)[0] | {})
    prompt, _ = graph(ours("ddim", seed=21), adapter="live.safetensors", size=256)
    prompt["sampler"]["inputs"]["steps"] = 5000
    pid = server.queue(prompt)
    deadline = time.time() + 60
    while time.time() < deadline and not server.get("/queue")["queue_running"]:
        time.sleep(0.05)
    time.sleep(2.0)  # well into the sampling loop
    t_interrupt = time.time()
    server.post("/interrupt", {})
    entry = server.wait(pid, timeout=60)
    messages = dict((k, v) for k, v in entry["status"]["messages"])
    assert "execution_interrupted" in messages, entry["status"]
    latency = messages["execution_interrupted"]["timestamp"] / 1000.0 - t_interrupt
    stamps = dict((k, v["timestamp"]) for k, v in timed["status"]["messages"])
    # An upper bound on one step at this size: the whole timed run (model load included) / steps.
    step = (stamps["execution_success"] - stamps["execution_start"]) / 1000.0 / STEPS
    assert latency < max(1.0, 2 * step), (latency, step)
    assert run_latent(server, graph(ours("ddim", seed=12), adapter="zero.safetensors")).abs().max() > 0


def test_lora_patched_model_matches_core_and_differs_from_base(server, adapters, comfy_inprocess):
    from comfy_models import build_sd15

    from contextdiff.checkpoint import atomic_save_file
    from trainer.lora import add_lora, lora_state_dict

    unet = build_sd15(0, 32, 768).model.diffusion_model
    loras = add_lora(unet, rank=4)
    g = torch.Generator().manual_seed(0)
    for m in loras.values():
        m.up.weight.data = torch.randn(m.up.weight.shape, generator=g) * 3.0
    (server.models_dir / "loras").mkdir(exist_ok=True)
    atomic_save_file(lora_state_dict(loras), server.models_dir / "loras" / "tiny_lora.safetensors")
    lora = {
        "lora": {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["model", 0], "lora_name": "tiny_lora.safetensors", "strength_model": 1.0},
        }
    }

    def on_lora(node):
        node["inputs"]["model"] = ["lora", 0]
        return node

    base = run_latent(server, graph(ours("ddim"), adapter="zero.safetensors"))
    core_lora = run_latent(server, graph(on_lora(core("ddim")), extra=lora))
    ours_lora = run_latent(server, graph(on_lora(ours("ddim")), adapter="zero.safetensors", extra=lora))
    assert rel_err(ours_lora, core_lora) <= 1e-5
    assert rel_err(ours_lora, base) > 1e-3, "the LoRA must change the model"
    live_lora = run_latent(server, graph(on_lora(ours("ddim")), adapter="live.safetensors", extra=lora))
    assert rel_err(live_lora, ours_lora) > 1e-3


def test_controlnet_conditioning_matches_core(server, adapters):
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).resize((SIZE, SIZE)).save(server.input_dir / "hint.png")
    control = {
        "cn": {"class_type": "ContextDiffTest_TinyControlNet", "inputs": {"seed": 0}},
        "hint": {"class_type": "LoadImage", "inputs": {"image": "hint.png"}},
        "apply": {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "control_net": ["cn", 0],
                "image": ["hint", 0],
                "strength": 1.0,
                "start_percent": 0.0,
                "end_percent": 1.0,
            },
        },
    }

    def controlled(node):
        node["inputs"]["positive"], node["inputs"]["negative"] = ["apply", 0], ["apply", 1]
        return node

    plain = run_latent(server, graph(ours("ddim"), adapter="zero.safetensors"))
    core_cn = run_latent(server, graph(controlled(core("ddim")), extra=control))
    ours_cn = run_latent(server, graph(controlled(ours("ddim")), adapter="zero.safetensors", extra=control))
    assert rel_err(ours_cn, core_cn) <= 1e-5
    assert rel_err(ours_cn, plain) > 1e-3, "the ControlNet must steer the sample"
    live_cn = run_latent(server, graph(controlled(ours("ddim")), adapter="live.safetensors", extra=control))
    assert rel_err(live_cn, ours_cn) > 1e-3


def unsampling(sampler: dict, adapter: str | None = None) -> tuple[dict, str]:
    """SamplerCustomAdvanced on FlipSigmas(normal): a random latent driven towards noise (core ddim's unsampling)."""
    extra = {
        "latent": {"class_type": "ContextDiffTest_RandomLatent", "inputs": {"channels": 4, "size": 16}},
        "sig": {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["model", 0], "scheduler": "normal", "steps": STEPS, "denoise": 1.0},
        },
        "flip": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sig", 0]}},
        "guider": {
            "class_type": "CFGGuider",
            "inputs": {"model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "cfg": 4.0},
        },
        "nonoise": {"class_type": "DisableNoise", "inputs": {}},
        "sel": sampler,
    }
    run = {
        "class_type": "SamplerCustomAdvanced",
        "inputs": {
            "noise": ["nonoise", 0],
            "guider": ["guider", 0],
            "sampler": ["sel", 0],
            "sigmas": ["flip", 0],
            "latent_image": ["latent", 0],
        },
    }
    prompt, prefix = graph(run, extra=extra)
    if adapter is not None:
        prompt["adapter"] = {"class_type": "ContextDiffAdapterLoader", "inputs": {"adapter_name": adapter}}
        sampler["inputs"]["adapter"] = ["adapter", 0]
    return prompt, prefix


def cd_sampler(method="ddim", eta=0.0, strength=1.0) -> dict:
    return {"class_type": "ContextDiffSampler", "inputs": {"method": method, "eta": eta, "adapter_strength": strength}}


def test_unsampling_flip_sigmas_matches_core_ddim_not_misleading(server, adapters):
    """FlipSigmas + SamplerCustomAdvanced: ContextDiff DDIM unsamples like core ddim (its Euler step run towards
    noise, from sigma 1e-4) instead of failing with a NaN blamed on fp16 (issue 12.6)."""
    core_run = run_latent(server, unsampling({"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}))
    assert torch.isfinite(core_run).all() and core_run.abs().max() > 0
    assert rel_err(run_latent(server, unsampling(cd_sampler())), core_run) <= 1e-5
    assert rel_err(run_latent(server, unsampling(cd_sampler(), adapter="zero.safetensors")), core_run) <= 1e-5
    assert (
        rel_err(run_latent(server, unsampling(cd_sampler(strength=0.0), adapter="live.safetensors")), core_run) <= 1e-5
    )
    live = run_latent(server, unsampling(cd_sampler(), adapter="live.safetensors"))
    assert torch.isfinite(live).all() and rel_err(live, core_run) > 1e-3  # the bias acts while unsampling


@pytest.mark.parametrize("method, eta", [("ddpm", 0.0), ("ddim", 0.5)])
def test_stochastic_unsampling_is_refused_by_name(server, adapters, method, eta):
    from devkit.comfy_host import PromptError

    with pytest.raises(PromptError) as err:
        run_latent(server, unsampling(cd_sampler(method, eta), adapter="live.safetensors"))
    text = str(err.value)
    assert "sigmas increase (unsampling, e.g. FlipSigmas)" in text and "method ddim with eta 0" in text, text
    assert "NaN" not in text


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("adapter_strength", float("nan"), "adapter_strength is nan, not a finite number"),
        ("eta", float("nan"), "eta is nan; it must be a number in [0, 1]"),
    ],
)
def test_nan_options_are_refused_by_name_not_misleading(server, adapters, field, value, expected):
    """A NaN adapter_strength / eta passes ComfyUI's range check (NaN compares false; infinity is refused there);
    the sampler names it instead of reporting a NaN prediction blamed on the model or fp16."""
    from devkit.comfy_host import PromptError

    for node in (ours("ddim"), cd_sampler()):
        node["inputs"][field] = value
        prompt = (
            graph(node, adapter="live.safetensors")
            if node["class_type"] == "ContextDiffKSampler"
            else unsampling(node, adapter="live.safetensors")
        )
        with pytest.raises(PromptError) as err:
            run_latent(server, prompt)
        text = str(err.value)
        assert expected in text and "fp16" not in text and "predicted" not in text, text


def test_nan_prediction_of_an_fp32_model_is_not_blamed_on_fp16_misleading(server, adapters):
    from devkit.comfy_host import PromptError

    node = ours("ddim")
    node["inputs"]["model"] = ["nan_model", 0]
    extra = {"nan_model": {"class_type": "ContextDiffTest_NaNPrediction", "inputs": {"model": ["model", 0]}}}
    with pytest.raises(PromptError) as err:
        run_latent(server, graph(node, adapter="gentle.safetensors", extra=extra))
    text = str(err.value)
    assert "the model predicted NaN or infinity at step 0" in text, text
    assert "computes in float32, so this is no fp16 overflow" in text and "usually an overflow" not in text, text


@pytest.mark.parametrize("scheduler", ["ddim_uniform", "normal"])
def test_inversion_node_is_exact_with_the_gaussian_denoiser(server, adapters, scheduler):
    """ContextDiff DDIM Inversion (50 refinements) then the Edit Sampler without fusion returns the latent,
    with a live adapter's bias in both, when the model is the exact Gaussian denoiser (issue 12.7)."""

    def round_trip(refine):
        p, prefix = graph(plain_edit_node(["gauss", 0]), adapter="gentle.safetensors")
        p["gauss"] = {
            "class_type": "ContextDiffTest_GaussianDenoiser",
            "inputs": {"model": ["model", 0], "mu": 0.0, "s": 1.0},
        }
        p["latent"] = {"class_type": "ContextDiffTest_RandomLatent", "inputs": {"channels": 4, "size": 16}}
        p["inv"] = {
            "class_type": "ContextDiffDDIMInversion",
            "inputs": {
                "model": ["gauss", 0],
                "latent": ["latent", 0],
                "positive": ["pos", 0],
                "steps": 20,
                "scheduler": scheduler,
                "cfg": 1.0,
                "fuse_start": 0.5,
                "refine_steps": refine,
                "store_precision": "fp32",
                "adapter_strength": 1.0,
                "adapter": ["adapter", 0],
            },
        }
        return run_latent(server, (p, prefix))

    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))  # what RandomLatent gives
    assert rel_err(round_trip(50), x0) <= 1e-4
    assert rel_err(round_trip(0), x0) > 1e-3  # classic inversion is not exact: the refinement is the fix


def test_ddpm_draws_the_hosts_noise_whatever_its_seeding(comfy_inprocess, monkeypatch):
    """Strength 0 DDPM = core ddpm follows the host's noise seeding, not a copy of one version's: ComfyUI 0.8 seeds
    its CPU noise generator with ``seed + 1``. Here the host's ``default_noise_sampler`` is replaced by one seeded
    with ``seed + 7`` (a host that changed it again); core ``ddpm`` and ours must still agree, on any host."""
    import importlib

    import comfy.k_diffusion.sampling as k_sampling
    import comfy.sample
    import comfy.samplers
    from comfy_models import build_sd15, random_conditioning

    from devkit import import_pack

    sampler_function = importlib.import_module(import_pack().__name__ + ".nodes.sampler_function")
    original = k_sampling.default_noise_sampler

    def reseeded(x, seed=None):
        return original(x, seed=None if seed is None else seed + 7)

    monkeypatch.setattr(k_sampling, "default_noise_sampler", reseeded)
    patcher = build_sd15(0, 32, 768)
    latent = torch.zeros(1, 4, SIZE // 8, SIZE // 8)

    def run(sampler):
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds(random_conditioning(1), random_conditioning(2))
        guider.set_cfg(4.0)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "normal", STEPS)
        noise = comfy.sample.prepare_noise(latent, 3)
        return guider.sample(noise, latent, sampler, sigmas, seed=3, disable_pbar=True)

    core = run(comfy.samplers.sampler_object("ddpm"))
    ours = run(sampler_function.contextdiff_ksampler(None, "ddpm"))
    assert rel_err(ours, core) <= 1e-5
    monkeypatch.setattr(k_sampling, "default_noise_sampler", original)
    assert rel_err(run(comfy.samplers.sampler_object("ddpm")), core) > 1e-2  # the reseeding did change the noise
