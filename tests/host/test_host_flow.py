"""Flow-matching files in the real host: tiny SD3 and Wan 2.1 t2v files (tests/comfy_models.py, the real key
layouts) in models/diffusion_models, loaded by the core UNETLoader (ComfyUI's detection names the family), sampled
by the core KSampler (euler) and the ContextDiff KSampler. Conditioning: random tensors at the real widths (no
T5-XXL / umT5-XXL at test size; ``ContextDiffTest_FamilyConditioning``); latents: EmptySD3LatentImage and
EmptyHunyuanLatentVideo (Wan's 16-channel video latent). Flux (3072 wide) is tested in-process only
(tests/host/test_flow_families.py). Strength 0 equals the core euler to 1e-5 relative (float32)."""

from __future__ import annotations

import pytest
import torch
from helpers import inversion_node, rel_err
from test_host_families import identify, run_latent

from devkit.comfy_host import PromptError

FILES = {"sd3": "tiny_sd3.safetensors", "wan": "tiny_wan21_t2v.safetensors"}
POOLED = {"sd3": 2048, "wan": 0}
FAMILY = {"sd3": "sd3", "wan": "wan21"}


@pytest.fixture(scope="module")
def flow_files(server, adapters):
    """The tiny files in models/diffusion_models and a live adapter per family (4096 wide, 16 channels)."""
    from devkit import comfyui

    comfyui()
    from comfy_models import save_flow_model

    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from contextdiff.adapter_io import save_adapter

    folder = server.models_dir / "diffusion_models"
    folder.mkdir(exist_ok=True)
    for kind, name in FILES.items():
        if not (folder / name).exists():
            save_flow_model(folder / f".{name}.tmp", kind)
            (folder / f".{name}.tmp").rename(folder / name)
        torch.manual_seed(7)
        live = ContextAdapter(AdapterConfig(dim=64, depth=1, context_dim=4096, latent_channels=16, video=kind == "wan"))
        torch.nn.init.normal_(live.patch_out.weight, std=0.3)
        torch.nn.init.normal_(live.patch_out.bias, std=0.3)
        save_adapter(live, adapters / f"live_{FAMILY[kind]}.safetensors", FAMILY[kind])
    return folder


def graph(kind: str) -> dict:
    latent = (
        {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9, "batch_size": 1}}
        if kind == "wan"
        else {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    )
    conds = {
        name: {
            "class_type": "ContextDiffTest_FamilyConditioning",
            "inputs": {"seed": seed, "context_dim": 4096, "pooled_dim": POOLED[kind], "tokens": 8},
        }
        for name, seed in (("pos", 1), ("neg", 2))
    }
    model = {"class_type": "UNETLoader", "inputs": {"unet_name": FILES[kind], "weight_dtype": "default"}}
    return {"model": model, **conds, "latent": latent}


def sampler(kind: str, method: str = "ddim", strength: float = 1.0) -> dict:
    inputs = {
        "model": ["model", 0],
        "positive": ["pos", 0],
        "negative": ["neg", 0],
        "latent_image": ["latent", 0],
        "seed": 3,
        "steps": 3,
        "cfg": 4.0,
        "scheduler": "simple",
        "denoise": 1.0,
    }
    if kind == "core":
        return {"class_type": "KSampler", "inputs": {**inputs, "sampler_name": "euler"}}
    return {
        "class_type": "ContextDiffKSampler",
        "inputs": {**inputs, "method": method, "eta": 0.0, "adapter_strength": strength},
    }


@pytest.mark.parametrize("kind", ["sd3", "wan"])
def test_unet_loader_file_is_its_family_and_strength_zero_is_core_euler(server, flow_files, kind):
    found = identify(server, graph(kind)["model"])
    assert (found["family"], found["prediction"]) == (FAMILY[kind], "flow")
    core = run_latent(server, graph(kind), sampler("core"))
    adapter = f"live_{FAMILY[kind]}.safetensors"
    off = run_latent(server, graph(kind), sampler("ours", strength=0.0), adapter=adapter)
    assert core.abs().max() > 0 and core.shape == off.shape and (kind != "wan" or core.dim() == 5)
    assert rel_err(off, core) <= 1e-5
    live = run_latent(server, graph(kind), sampler("ours"), adapter=adapter)
    assert torch.isfinite(live).all() and rel_err(live, core) > 1e-3
    server.post("/free", {"unload_models": True, "free_memory": True})


def test_refusals_name_what_works(server, flow_files):
    """DDPM on a flow model, and an adapter of another flow family, stop with one sentence each."""
    with pytest.raises(PromptError) as err:
        run_latent(server, graph("sd3"), sampler("ours", "ddpm"))
    assert "method ddpm is the DDPM posterior" in str(err.value)
    with pytest.raises(PromptError) as err:
        run_latent(server, graph("sd3"), sampler("ours"), adapter="live_wan21.safetensors")
    assert "trained for Wan 2.x, but this model is SD3/SD3.5" in str(err.value)


def test_edit_nodes_refuse_a_flow_model_by_name(server, flow_files):
    """Editing fuses UNet attention; on the SD3 file the inversion node stops with one sentence, naming what
    runs on flow models."""
    prompt = dict(graph("sd3"))
    prompt["inv"] = inversion_node(steps=3)
    prompt["inv"]["inputs"].update(latent=["latent", 0], positive=["pos", 0], scheduler="simple")
    prompt["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["inv", 0], "filename_prefix": "flowinv"}}
    with pytest.raises(PromptError) as err:
        server.run(prompt)
    assert "on flow-matching models (SD3, Flux, Wan) it is not implemented yet" in str(err.value)
    assert "ContextDiff KSampler" in str(err.value)
