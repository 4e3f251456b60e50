"""Model families in the real host: SD1.x, SD2.x (v-prediction), SDXL and its variants (SSD-1B, Vega,
KOALA), v-prediction with zero terminal SNR, and a UNet that ComfyUI's ModelSamplingSD3 patch makes a flow model
(the flow families themselves: tests/host/test_flow_families.py).

Single-file checkpoints keep what ComfyUI's detection reads (tests/comfy_models.py explains the
reduced layout) and load through the core CheckpointLoaderSimple; prompts go through CLIPTextEncode
on a tiny dual-encoder SDXL CLIP, so SDXL's pooled output and size embeddings (``y``) are ComfyUI's own.
At strength 0 the ContextDiff samplers must equal the core ddim/ddpm (the SD1.5 tolerance, 1e-5).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors.torch import load_file

from devkit.comfy_host import PromptError
from devkit.device import tolerance

STEPS = 3
SIZE = 64  # pixels: an 8x8 latent
TOKENS = 8  # random conditionings: the 2048 -> 320 key/value projections of 70 blocks dominate the cost
CHECKPOINTS = {  # file -> (ComfyUI class, v_pred, zsnr)
    "sd15.safetensors": ("SD15", False, False),
    "sd2_v.safetensors": ("SD20", True, False),
    "sdxl.safetensors": ("SDXL", False, False),
    "ssd1b.safetensors": ("SSD1B", False, False),
    "vega_v_zsnr.safetensors": ("Segmind_Vega", True, True),
    "koala_700m.safetensors": ("KOALA_700M", False, False),
    "koala_1b.safetensors": ("KOALA_1B", False, False),
}
# Under zero terminal SNR ComfyUI's float32 ddim/ddpm are ~2e-4 from their own float64 runs (the first step from
# sigma 4519 cancels); ours are within 1e-6 of those (tests/host/test_zsnr.py). So 1e-3 against the core there.
ZSNR_TOL = 1e-3
CONTEXT = {"SD15": (768, 768), "SD20": (1024, 1024)}  # (tokens, pooled) widths; SDXL family: (2048, 1280)
_ids = itertools.count()


def checkpoint(server, name: str) -> str:
    """Write the checkpoint into the host's models/checkpoints once (they are large: write lazily)."""
    from devkit import comfyui

    comfyui()
    from comfy_models import save_family_checkpoint

    folder = server.models_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    if not (folder / name).exists():
        config, v_pred, zsnr = CHECKPOINTS[name]
        tmp = folder / f".{name}.tmp"
        save_family_checkpoint(tmp, config, seed=0, v_pred=v_pred, zsnr=zsnr)
        tmp.rename(folder / name)
    return name


@pytest.fixture(scope="module")
def family_adapters(server, adapters):
    """Adapters whose output is live, one per context width (the conftest's 'zero' ones are SD1.5/SDXL)."""
    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from contextdiff.adapter_io import save_adapter

    for key, dim in (("sd2", 1024), ("sdxl", 2048)):
        torch.manual_seed(7)
        live = ContextAdapter(AdapterConfig(dim=64, depth=2, context_dim=dim))
        torch.nn.init.normal_(live.patch_out.weight, std=0.5)
        torch.nn.init.normal_(live.patch_out.bias, std=0.5)
        save_adapter(live, adapters / f"live_{key}.safetensors", key)
    return adapters


def widths(config: str) -> tuple[int, int]:
    return CONTEXT.get(config, (2048, 1280))


def base_graph(model: dict, config: str, clip_text: bool = False) -> dict:
    """Model node, positive/negative conditioning of the family's widths, an empty latent."""
    if clip_text:  # SDXL family: CLIPTextEncode on the tiny dual-encoder CLIP (pooled output + size embeddings)
        conds = {
            "clip": {"class_type": "ContextDiffTest_TinySDXLClip", "inputs": {"seed": 0}},
            **{
                name: {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": text}}
                for name, text in (("pos", "a red cube on grass"), ("neg", "blurry"))
            },
        }
    else:
        tokens, pooled = widths(config)
        conds = {
            name: {
                "class_type": "ContextDiffTest_FamilyConditioning",
                "inputs": {"seed": seed, "context_dim": tokens, "pooled_dim": pooled, "tokens": TOKENS},
            }
            for name, seed in (("pos", 1), ("neg", 2))
        }
    return {
        "model": model,
        **conds,
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
    }


def loader(name: str) -> dict:
    return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}}


def sampler_node(kind: str, method: str = "ddim", strength: float = 1.0, seed: int = 3, model=("model", 0)) -> dict:
    inputs = {
        "model": list(model),
        "positive": ["pos", 0],
        "negative": ["neg", 0],
        "latent_image": ["latent", 0],
        "seed": seed,
        "steps": STEPS,
        "cfg": 4.0,
        "scheduler": "normal",
        "denoise": 1.0,
    }
    if kind == "core":
        return {"class_type": "KSampler", "inputs": {**inputs, "sampler_name": method}}
    return {
        "class_type": "ContextDiffKSampler",
        "inputs": {**inputs, "method": method, "eta": 0.0, "adapter_strength": strength},
    }


def run_latent(server, graph: dict, sampler: dict, adapter: str | None = None) -> torch.Tensor:
    prefix = f"fam{next(_ids)}"
    prompt = dict(
        graph,
        sampler=sampler,
        save={"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}},
    )
    if adapter is not None:
        prompt["adapter"] = {"class_type": "ContextDiffAdapterLoader", "inputs": {"adapter_name": adapter}}
        sampler["inputs"]["adapter"] = ["adapter", 0]
    server.run(prompt, timeout=600)
    files = sorted(server.output_dir.glob(f"{prefix}_*.latent"))
    assert files, f"SaveLatent wrote nothing for {prefix}"
    return load_file(str(files[-1]))["latent_tensor"]


def identify(server, model: dict, extra: dict | None = None) -> dict:
    entry = server.run(
        {
            "model": model,
            **(extra or {}),
            "id": {"class_type": "ContextDiffTest_Identify", "inputs": {"model": ["model", 0]}},
        }
    )
    return {k: v[0] for k, v in entry["outputs"]["id"].items()}


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    "name, family, config, prediction, zsnr",
    [
        ("sd15.safetensors", "sd15", "SD15", "eps", False),
        ("sd2_v.safetensors", "sd2", "SD20", "v", False),
        ("sdxl.safetensors", "sdxl", "SDXL", "eps", False),
        ("ssd1b.safetensors", "sdxl", "SSD1B", "eps", False),
        ("vega_v_zsnr.safetensors", "sdxl", "Segmind_Vega", "v", True),
        ("koala_700m.safetensors", "sdxl", "KOALA_700M", "eps", False),
        ("koala_1b.safetensors", "sdxl", "KOALA_1B", "eps", False),
    ],
    ids=lambda v: v if isinstance(v, str) and v.endswith(".safetensors") else None,
)
def test_checkpoint_loads_as_its_family_and_zero_strength_is_core_ddim(
    server, family_adapters, name, family, config, prediction, zsnr
):
    """CheckpointLoaderSimple names the family as ComfyUI does; ContextDiff agrees and, at strength 0 with a
    live adapter of the family's width, samples exactly the core ddim."""
    found = identify(server, loader(checkpoint(server, name)))
    assert (found["family"], found["config"], found["prediction"], found["zsnr"]) == (family, config, prediction, zsnr)
    graph = base_graph(loader(name), config)
    core = run_latent(server, graph, sampler_node("core"))
    adapter = "live.safetensors" if family == "sd15" else f"live_{family}.safetensors"
    ours = run_latent(server, graph, sampler_node("ours", strength=0.0), adapter=adapter)
    assert core.abs().max() > 0 and torch.isfinite(ours).all()
    assert rel_err(ours, core) <= (ZSNR_TOL if zsnr else tolerance("same_unet_other_arithmetic"))
    server.post("/free", {"unload_models": True, "free_memory": True})


def test_sdxl_file_with_clip_text_equals_core(server, family_adapters):
    """The SDXL-format file, prompts through CLIPTextEncode (pooled output, size embeddings): the zero adapter
    gives the core ddim; a live 2048-wide adapter changes the sample (ddpm: see the v-prediction test)."""
    graph = base_graph(loader(checkpoint(server, "sdxl.safetensors")), "SDXL", clip_text=True)
    core = run_latent(server, graph, sampler_node("core"))
    zero = run_latent(server, graph, sampler_node("ours"), adapter="sdxl.safetensors")
    assert rel_err(zero, core) <= tolerance("same_unet_other_arithmetic")
    live = run_latent(server, graph, sampler_node("ours"), adapter="live_sdxl.safetensors")
    assert torch.isfinite(live).all() and rel_err(live, core) > 1e-3


def reference_sdxl(adapter_path, seed=3):
    """The host run of the next test without the pack: the same in-Python SDXL-shaped model, SDXL's ADM written
    out (pooled CLIP-G embedding + Timestep(256) of height, width, crop 0, 0, target height, width), CFG by hand,
    and the bias from the 2048-wide positive tokens."""
    import comfy.sample
    import comfy.samplers
    from comfy_models import build_family, family_conditioning

    from contextdiff import sampling
    from contextdiff.adapter_io import load_adapter
    from contextdiff.bias import adapter_bias

    base = build_family("SDXL", 0).model
    ms = base.model_sampling
    ((pos, pos_extra),) = family_conditioning(1, tokens=TOKENS)
    ((neg, neg_extra),) = family_conditioning(2, tokens=TOKENS)

    def adm(pooled):
        sizes = torch.tensor([SIZE, SIZE, 0, 0, SIZE, SIZE], dtype=torch.float32)
        return torch.cat([pooled, base.embedder(sizes).flatten().unsqueeze(0)], dim=1)

    latent = torch.zeros(1, 4, SIZE // 8, SIZE // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = comfy.samplers.calculate_sigmas(ms, "normal", STEPS)

    def denoiser(x, sigma, **_):
        with torch.no_grad():
            c = base.apply_model(x, sigma, c_crossattn=pos, y=adm(pos_extra["pooled_output"]))
            u = base.apply_model(x, sigma, c_crossattn=neg, y=adm(neg_extra["pooled_output"]))
        return u + 4.0 * (c - u)

    adapter, _ = load_adapter(adapter_path)
    bias = adapter_bias(adapter, pos, ms.timestep, float(ms.sigma_max), 1.0)
    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
    return base.process_latent_out(sampling.sample_contextdiff_ddim(denoiser, x, sigmas, bias=bias, disable=True))


def test_sdxl_bias_reads_the_2048_wide_tokens(server, family_adapters, comfy_inprocess):
    """A live SDXL adapter in the host equals the pure reference that feeds it the 2048-wide positive tokens."""
    model = {
        "class_type": "ContextDiffTest_FamilyModel",
        "inputs": {"config": "SDXL", "seed": 0, "prediction": "eps", "zsnr": False},
    }
    graph = base_graph(model, "SDXL")
    core = run_latent(server, graph, sampler_node("core"))
    mine = run_latent(server, graph, sampler_node("ours"), adapter="live_sdxl.safetensors")
    assert rel_err(mine, core) > 1e-3
    assert rel_err(mine, reference_sdxl(family_adapters / "live_sdxl.safetensors")) <= 1e-4


def test_sdxl_sampler_for_sampler_custom(server, family_adapters):
    """ContextDiffSampler in the core SamplerCustom on the SDXL-shaped model: strength 0 with a live adapter is the
    core ddim there too, and at strength 1 it equals the ContextDiff KSampler."""

    def custom(sampler_ref):
        inputs = {
            "model": ["model", 0],
            "add_noise": True,
            "noise_seed": 3,
            "cfg": 4.0,
            "positive": ["pos", 0],
            "negative": ["neg", 0],
            "sampler": sampler_ref,
            "sigmas": ["sigmas", 0],
            "latent_image": ["latent", 0],
        }
        return {"class_type": "SamplerCustom", "inputs": inputs}

    def ours(strength):
        return {
            "class_type": "ContextDiffSampler",
            "inputs": {"method": "ddim", "eta": 0.0, "adapter_strength": strength, "adapter": ["ad", 0]},
        }

    model = {
        "class_type": "ContextDiffTest_FamilyModel",
        "inputs": {"config": "SDXL", "seed": 0, "prediction": "eps", "zsnr": False},
    }
    graph = dict(
        base_graph(model, "SDXL"),
        sigmas={
            "class_type": "BasicScheduler",
            "inputs": {"model": ["model", 0], "scheduler": "normal", "steps": STEPS, "denoise": 1.0},
        },
        sel={"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        ad={"class_type": "ContextDiffAdapterLoader", "inputs": {"adapter_name": "live_sdxl.safetensors"}},
    )
    core = run_latent(server, dict(graph), custom(["sel", 0]))
    off = run_latent(server, dict(graph, cd=ours(0.0)), custom(["cd", 0]))
    assert rel_err(off, core) <= 1e-5
    on = run_latent(server, dict(graph, cd=ours(1.0)), custom(["cd", 0]))
    ksampler = run_latent(server, graph, sampler_node("ours"), adapter="live_sdxl.safetensors")
    assert rel_err(on, core) > 1e-3 and rel_err(on, ksampler) <= 1e-5


def test_sd15_adapter_on_sdxl_is_refused_by_name(server, adapters):
    graph = base_graph(loader(checkpoint(server, "sdxl.safetensors")), "SDXL")
    with pytest.raises(PromptError) as err:
        run_latent(server, graph, sampler_node("ours"), adapter="live.safetensors")
    assert "trained for context dim 768 (SD1.x), but this model's conditioning gives 2048 (SDXL)" in str(err.value)


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_sdxl_vpred_zsnr_equals_core_and_stays_finite(server, family_adapters, method):
    """An SDXL-shaped model through ComfyUI's ModelSamplingDiscrete node (v_prediction, zsnr: sigma_max 4519):
    strength 0 is the core sampler (ZSNR_TOL), a live adapter gives a finite, different sample."""
    tiny = {
        "class_type": "ContextDiffTest_FamilyModel",
        "inputs": {"config": "SDXL", "seed": 0, "prediction": "eps", "zsnr": False},
    }
    patched = {
        "class_type": "ModelSamplingDiscrete",
        "inputs": {"model": ["tiny", 0], "sampling": "v_prediction", "zsnr": True},
    }
    found = identify(server, patched, {"tiny": tiny})
    assert (found["config"], found["prediction"], found["zsnr"]) == ("SDXL", "v", True)
    graph = dict(base_graph(patched, "SDXL"), tiny=tiny)
    core = run_latent(server, graph, sampler_node("core", method))
    off = run_latent(server, graph, sampler_node("ours", method, strength=0.0), adapter="live_sdxl.safetensors")
    assert rel_err(off, core) <= ZSNR_TOL
    live = run_latent(server, graph, sampler_node("ours", method), adapter="live_sdxl.safetensors")
    assert torch.isfinite(live).all() and rel_err(live, core) > 1e-2


def test_sd2_vpred_live_adapter_reads_1024_wide_tokens(server, family_adapters):
    """The v-prediction SD2.x file: a 1024-wide adapter runs and changes the sample; strength 0 is core ddpm."""
    graph = base_graph(loader(checkpoint(server, "sd2_v.safetensors")), "SD20")
    core = run_latent(server, graph, sampler_node("core", "ddpm"))
    off = run_latent(server, graph, sampler_node("ours", "ddpm", strength=0.0), adapter="live_sd2.safetensors")
    assert rel_err(off, core) <= 1e-5
    live = run_latent(server, graph, sampler_node("ours", "ddpm"), adapter="live_sd2.safetensors")
    assert torch.isfinite(live).all() and rel_err(live, core) > 1e-3


def test_flow_sampling_patch_samples_as_flow_matching(server, adapters):
    """ComfyUI's ModelSamplingSD3 patch (discrete flow, shift 3) on a UNet: ComfyUI samples it as flow matching and
    so does ContextDiff: at strength 0 it is the core euler; method ddpm (the DDPM posterior) is refused by name."""
    flow = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["tiny", 0], "shift": 3.0}}
    graph = dict(
        base_graph(flow, "SD15"),
        tiny={
            "class_type": "ContextDiffTest_TinyModel",
            "inputs": {"seed": 0, "model_channels": 32, "context_dim": 768},
        },
    )
    assert identify(server, flow, {"tiny": graph["tiny"]})["prediction"] == "flow"
    core = run_latent(server, graph, sampler_node("core", "euler"))
    ours = run_latent(server, graph, sampler_node("ours", strength=0.0), adapter="live.safetensors")
    assert core.abs().max() > 0 and rel_err(ours, core) <= tolerance("same_unet_other_arithmetic")
    with pytest.raises(PromptError) as err:
        run_latent(server, graph, sampler_node("ours", "ddpm"), adapter="live.safetensors")
    assert "method ddpm is the DDPM posterior" in str(err.value)
