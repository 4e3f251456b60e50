"""Adapters inside the real host (issue 12): conditioning batches tiled as ComfyUI tiles them,
cache keys that follow the file content, format sniffing, forged headers and diverged weights.

Every case runs the pack in ComfyUI through its HTTP API and compares with an independent run of
the same graph (tolerances stated), or checks the one-sentence error ComfyUI's history shows.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from itertools import count
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from contextdiff.adapter import AdapterConfig, ContextAdapter
from contextdiff.adapter_io import load_adapter, save_adapter

TOL = 1e-5  # same graph, same tensors per sample: only summation order may differ
_prefix = count()


def _sd_prompt(
    latent_batch: int,
    positive: dict,
    adapter: str | None = "live.safetensors",
    strength: float = 1.0,
    steps: int = 4,
    seed: int = 3,
) -> dict:
    """Tiny SD1.5-shaped model, random prompts, ContextDiff DDIM, SaveLatent."""
    prompt = {
        "model": {
            "class_type": "ContextDiffTest_TinyModel",
            "inputs": {"seed": 0, "model_channels": 32, "context_dim": 768},
        },
        "pos": {
            "class_type": "ContextDiffTest_RandomConditioning",
            "inputs": {"seed": 1, "context_dim": 768, "tokens": 77, **positive},
        },
        "neg": {
            "class_type": "ContextDiffTest_RandomConditioning",
            "inputs": {"seed": 2, "context_dim": 768, "tokens": 77},
        },
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": latent_batch}},
        "sampler": {
            "class_type": "ContextDiffKSampler",
            "inputs": {
                "model": ["model", 0],
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["latent", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 4.0,
                "scheduler": "normal",
                "method": "ddim",
                "eta": 0.0,
                "adapter_strength": strength,
                "denoise": 1.0,
            },
        },
    }
    if adapter is not None:
        prompt["adapter"] = {"class_type": "ContextDiffAdapterLoader", "inputs": {"adapter_name": adapter}}
        prompt["sampler"]["inputs"]["adapter"] = ["adapter", 0]
    return prompt


def _run(server, prompt: dict) -> str:
    """Run ``prompt`` with a SaveLatent of a fresh prefix (so a cached sampler still saves); the prefix."""
    prefix = f"hostadapter{next(_prefix)}"
    server.run(
        dict(
            prompt, save={"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}}
        )
    )
    return prefix


def _latent(server, prompt: dict) -> torch.Tensor:
    """Run ``prompt`` and return the latent it saved."""
    prefix = _run(server, prompt)
    files = sorted(server.output_dir.glob(f"{prefix}_*.latent"))
    assert files, f"SaveLatent wrote nothing for {prefix}"
    return load_file(str(files[-1]))["latent_tensor"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Relative L2 error per sample."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def _tiled(positive_batch: int, latent_batch: int) -> str:
    """ComfyUI's rule (comfy.utils.repeat_to_batch_size): tile the prompts, cut at the latent batch."""
    return ",".join(str(i % positive_batch) for i in range(latent_batch))


# --- 12.1: conditioning batch smaller or larger than the latent batch ----------------------------------


@pytest.mark.parametrize("latent_batch", [4, 3, 1])
def test_batch_mismatch_bias_follows_comfyui_tiling(server, adapters, latent_batch):
    """Positive of batch 2 on latent batches 4, 3, 1: each sample as if its prompt were given explicitly."""
    mismatched = _latent(server, _sd_prompt(latent_batch, {"batch": 2}))
    explicit = _latent(server, _sd_prompt(latent_batch, {"batch": 2, "pick": _tiled(2, latent_batch)}))
    without_bias = _latent(
        server, _sd_prompt(latent_batch, {"batch": 2, "pick": _tiled(2, latent_batch)}, strength=0.0)
    )
    assert mismatched.shape[0] == latent_batch
    assert (_rel(explicit, without_bias) > 1e-2).all(), "the adapter's bias must be visible for the test to mean much"
    errors = _rel(mismatched, explicit)
    assert (errors <= TOL).all(), f"per-sample relative error {errors.tolist()}: the bias used another prompt"


@pytest.fixture(scope="module")
def digits_checkpoint(server, comfy_inprocess):
    """A joint (class-conditional, pixel-space) checkpoint whose adapter gives a visible bias."""
    from contextdiff.joint_model import ClassEmbedding
    from hostside.joint_checkpoints import save_joint
    from hostside.pixel_unet import build_joint_model, joint_unet_config

    torch.manual_seed(0)
    cfg = joint_unet_config(model_channels=32, context_dim=32)
    adapter = ContextAdapter(AdapterConfig(latent_channels=1, context_dim=32, dim=32, depth=1, heads=4))
    torch.nn.init.normal_(adapter.patch_out.weight, std=0.5)
    name = "digits-batch-test.safetensors"
    save_joint(server.adapters_dir / name, build_joint_model(cfg, 0), adapter, ClassEmbedding(10, 32), cfg)
    return name


def _digits_prompt(ckpt: str, labels: str, batch: int = 20, strength: float = 1.0) -> dict:
    return {
        "joint": {"class_type": "ContextDiffJointLoader", "inputs": {"ckpt_name": ckpt}},
        "pos": {
            "class_type": "ContextDiffClassConditioning",
            "inputs": {"classes": ["joint", 2], "labels": labels, "repeat": 1},
        },
        "neg": {
            "class_type": "ContextDiffClassConditioning",
            "inputs": {"classes": ["joint", 2], "labels": "-1", "repeat": 1},
        },
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "sampler": {
            "class_type": "ContextDiffKSampler",
            "inputs": {
                "model": ["joint", 0],
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["latent", 0],
                "seed": 0,
                "steps": 4,
                "cfg": 3.0,
                "scheduler": "simple",
                "method": "ddim",
                "eta": 0.0,
                "adapter_strength": strength,
                "denoise": 1.0,
                "adapter": ["joint", 1],
            },
        },
    }


def test_batch_mismatch_digit_classes(server, digits_checkpoint):
    """Labels '0-9' on a batch of 20 are '0-9, 0-9' (ComfyUI tiles), bias included."""
    tiled = _latent(server, _digits_prompt(digits_checkpoint, "0-9"))
    explicit = _latent(server, _digits_prompt(digits_checkpoint, "0-9, 0-9"))
    without_bias = _latent(server, _digits_prompt(digits_checkpoint, "0-9, 0-9", strength=0.0))
    assert (_rel(explicit, without_bias) > 1e-2).all(), "the adapter's bias must be visible for the test to mean much"
    errors = _rel(tiled, explicit)
    assert (errors <= TOL).all(), f"per-sample relative error {errors.tolist()}: the bias used another class"


# --- 12.3: the cache key follows the file content --------------------------------------------------------


def test_stale_cache_replaced_adapter_same_size_and_mtime(server, adapters):
    """An adapter rewritten in place with the same size, mtime and inode is reloaded."""
    path = adapters / "swapped.safetensors"
    shutil.copy(adapters / "live.safetensors", path)
    first = _latent(server, _sd_prompt(1, {}, adapter="swapped.safetensors"))
    stat = path.stat()
    replacement = (adapters / "gentle.safetensors").read_bytes()
    assert len(replacement) == stat.st_size, "the test needs two adapters of the same size"
    with open(path, "r+b") as f:  # same inode
        f.write(replacement)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    second = _latent(server, _sd_prompt(1, {}, adapter="swapped.safetensors"))
    gentle = _latent(server, _sd_prompt(1, {}, adapter="gentle.safetensors"))
    assert _rel(first, gentle).item() > 1e-2, "the two adapters must give different samples"
    assert _rel(second, gentle).item() <= TOL, "the replaced adapter was not reloaded (stale cache)"


# --- 12.11: formats sniffed by what they are ---------------------------------------------------------------


def _with_header_length(module: ContextAdapter, path: Path, target: int) -> Path:
    """Save ``module`` with training metadata padded so that the safetensors header is ``target`` bytes.

    safetensors pads its JSON header with spaces to a multiple of 8; each padding character adds one byte.
    """
    save_adapter(module, path, "sd15", training={"pad": ""})
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    save_adapter(module, path, "sd15", training={"pad": "x" * (target - n)})
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n == target, (n, target)
    return path


@pytest.mark.parametrize("target, first_bytes", [(0x80 + 0x100 * 40, b"\x80"), (0x4B50, b"PK")])
def test_pickle_sniff_accepts_safetensors_that_look_like_pickles(server, adapters, target, first_bytes):
    """Header lengths whose first byte is 0x80 (a pickle's opcode) or 'PK' (a zip) load and sample like the original."""
    live, _ = load_adapter(adapters / "live.safetensors")
    name = f"lookalike-{first_bytes.hex()}.safetensors"
    path = _with_header_length(live, adapters / name, target)
    assert path.read_bytes().startswith(first_bytes)
    lookalike = _latent(server, _sd_prompt(1, {}, adapter=name))
    original = _latent(server, _sd_prompt(1, {}, adapter="live.safetensors"))
    assert _rel(lookalike, original).item() <= TOL


# --- 12.5 / 12.6: forged headers and diverged weights are named before anything is allocated -------------


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


def _forged(path: Path, **config) -> Path:
    """A few hundred bytes: adapter metadata declaring ``config`` and one tiny tensor."""
    meta = {
        "format": "contextdiff-adapter",
        "format_version": "1",
        "base_model": "sd15",
        "training": "{}",
        "config": json.dumps({**AdapterConfig().to_dict(), **config}),
        "latent_channels": "4",
        "context_dim": "768",
        "producer": "forged",
    }
    save_file({"patch_in.weight": torch.zeros(1)}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "config, message",
    [
        ({"dim": 4096, "depth": 2}, "does not match its own architecture"),  # ~2 GB if built before checking
        ({"heads": 0}, "heads"),
        ({"dim": 10**7}, "dim"),
        ({"mlp_ratio": 1e9}, "mlp_ratio"),
    ],
)
def test_forged_header_refused_before_allocating(server, adapters, config, message):
    """A tiny file declaring a huge or impossible architecture: one sentence, and the host's peak memory stays put."""
    from devkit.comfy_host import PromptError

    name = f"forged-{'-'.join(f'{k}{v}' for k, v in config.items())}.safetensors"
    path = _forged(adapters / name, **config)
    assert path.stat().st_size < 1024
    _run(server, _sd_prompt(1, {}, adapter="gentle.safetensors", seed=11))  # warm: the peak of ordinary work
    peak = _peak_rss_mb(server.proc.pid)
    with pytest.raises(PromptError) as err:
        _run(server, _sd_prompt(1, {}, adapter=name))
    text = str(err.value)
    assert name in text and message in text and "re-export" in text, text
    assert "ZeroDivisionError" not in text and "Traceback" not in text
    assert _peak_rss_mb(server.proc.pid) - peak < 200, "the forged architecture was allocated"
    _run(server, _sd_prompt(1, {}, adapter="gentle.safetensors", seed=12))  # still serving


def _diverged(path: Path, std: float) -> Path:
    torch.manual_seed(1)
    a = ContextAdapter(AdapterConfig(dim=64, depth=2))
    torch.nn.init.normal_(a.patch_out.weight, std=std)
    save_adapter(a, path, "sd15")
    return path


@pytest.mark.parametrize(
    "std, message",
    [
        (1e30, "holds values up to"),  # weights no fp16/bf16 run can hold: refused when loaded
        (5e3, "gave a bias of magnitude"),  # loadable weights whose output swamps the latent: refused at step 0
    ],
)
def test_huge_adapter_weights_are_blamed_on_the_adapter_not_misleading(server, adapters, std, message):
    """An adapter with huge weights: the message names the adapter file and the fix, not the model or fp16."""
    from devkit.comfy_host import PromptError

    name = f"diverged-{std:g}.safetensors"
    _diverged(adapters / name, std)
    with pytest.raises(PromptError) as err:
        _run(server, _sd_prompt(1, {}, adapter=name))
    text = str(err.value)
    assert name in text and message in text and "earlier checkpoint" in text, text
    assert "fp16" not in text and "model predicted" not in text, text
