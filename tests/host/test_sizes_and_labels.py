"""Issue 22.5 (sizes bounded by the data they lay out, refused before allocating when they would not fit) and
22.6 (class labels parse to what they say, or are refused naming the part; the node's text says how the labels
meet the latent batch), through the real host where it can express the case."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
CKPT = "labels-sizes-test.safetensors"


def _pixel_grid():
    """nodes/pixel_grid.py on its own (it imports torch only), without loading the pack into ComfyUI."""
    spec = importlib.util.spec_from_file_location("pixel_grid_under_test", ROOT / "nodes" / "pixel_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _previous_to_image(samples: torch.Tensor, scale: int, grid_columns: int) -> torch.Tensor:
    """The node's implementation before issue 22.5 (whole batch enlarged, then placed), the reference for every
    input it handled sensibly (grid_columns up to the batch)."""
    x = samples.float().clamp(-1, 1).add(1).div(2)
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    if grid_columns:
        n, c, h, w = x.shape
        rows = -(-n // grid_columns)
        canvas = torch.ones(c, rows * (h + scale), grid_columns * (w + scale))
        for i in range(n):
            r, col = divmod(i, grid_columns)
            canvas[:, r * (h + scale) : r * (h + scale) + h, col * (w + scale) : col * (w + scale) + w] = x[i]
        x = canvas[None]
    return x.permute(0, 2, 3, 1).contiguous()


# --- 22.5: Pixels To Image -------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_pixels_to_image_matches_previous_output_within_bounds(channels):
    """Batch and grid layouts at scales that include 41, 47 and 55, where nearest interpolation's float index
    rounding moves pixel rows (so only the same per-latent interpolation gives the same pixels): the same
    output as before, bit for bit; more columns than latents now give the one-row grid, not blank cells."""
    pg = _pixel_grid()
    x = torch.randn(5, channels, 6, 7, generator=torch.Generator().manual_seed(channels)) * 1.5
    for scale in (1, 2, 3, 8, 41, 47, 55, 64):
        for columns in (0, 1, 2, 5):
            assert torch.equal(pg.to_image(x, scale, columns), _previous_to_image(x, scale, columns)), (scale, columns)
        assert torch.equal(pg.to_image(x, scale, 256), _previous_to_image(x, scale, 5)), scale


def test_pixels_to_image_estimate_names_what_fits():
    """Refused before allocating: over ComfyUI's side limit, or over the free memory; the scale it names fits."""
    pg = _pixel_grid()
    pg.check_fits((4, 3, 32, 32), 64, 256, free_bytes=1e12)  # the case at scale 64: one row, 8448 wide
    with pytest.raises(ValueError) as err:
        pg.check_fits((64, 3, 256, 256), 64, 8, free_bytes=1e15)
    message = str(err.value)
    assert "1 image of 131584x131584 pixels, over ComfyUI's 16384-pixel limit on a side" in message, message
    assert "lower scale (at most 7 fits) or set fewer grid_columns" in message, message
    assert max(pg.layout(64, 256, 256, 7, 8)[1:3]) <= pg.MAX_SIDE < max(pg.layout(64, 256, 256, 8, 8)[1:3])
    with pytest.raises(MemoryError) as err:
        pg.check_fits((64, 3, 32, 32), 64, 0, free_bytes=2e9)
    message = str(err.value)
    assert "64 images of 2048x2048 pixels, about 3.3 GB, more than the 2.0 GB of free memory" in message, message
    fits = int(message.split("at most ")[1].split(" fits")[0])
    assert pg.peak_bytes((64, 3, 32, 32), fits, 0) <= 2e9 < pg.peak_bytes((64, 3, 32, 32), fits + 1, 0)


def _png(server, prefix):
    return np.asarray(Image.open(sorted(server.output_dir.glob(f"{prefix}_*.png"))[-1]))


def test_pixels_to_image_grid_capped_by_the_batch(server, labels_checkpoint):
    """The issue's case: grid_columns 256 on a batch of four 32x32 latents at scale 4 was a 33792x132 image of
    blank cells; it is the four cells in one row, the same picture as grid_columns 4."""
    p = _digits(labels_checkpoint, "0-3", 4, size=256)
    for name, columns in (("grid256", 256), ("grid4", 4)):
        p[f"img_{name}"] = {
            "class_type": "ContextDiffPixelsToImage",
            "inputs": {"samples": ["sampler", 0], "scale": 4, "grid_columns": columns},
        }
        p[f"save_{name}"] = {
            "class_type": "SaveImage",
            "inputs": {"images": [f"img_{name}", 0], "filename_prefix": name},
        }
    server.run(p)
    wide, four = _png(server, "grid256"), _png(server, "grid4")
    assert wide.shape == (132, 4 * 33 * 4, 3), wide.shape
    assert np.array_equal(wide, four)


def _vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.mark.parametrize(
    "scale, columns, expected",
    [
        (64, 0, "64 images of 16384x16384 pixels, about 209.4 GB, more than the"),
        (64, 8, "1 image of 131584x131584 pixels, over ComfyUI's 16384-pixel limit on a side"),
    ],
)
def test_pixels_to_image_refuses_huge_before_allocating(server, scale, columns, expected):
    """64 latents of 256x256 at scale 64: refused in one sentence, the host's peak memory stays put (the
    empty latent itself is 67 MB)."""
    p = {
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 2048, "height": 2048, "batch_size": 64}},
        "img": {
            "class_type": "ContextDiffPixelsToImage",
            "inputs": {"samples": ["latent", 0], "scale": scale, "grid_columns": columns},
        },
        "save": {"class_type": "SaveImage", "inputs": {"images": ["img", 0], "filename_prefix": "never_huge"}},
    }
    peak = _vm_kb(server.proc.pid, "VmHWM")
    with pytest.raises(RuntimeError) as err:
        server.run(p)
    assert expected in str(err.value), str(err.value)
    assert "lower scale" in str(err.value)
    assert (_vm_kb(server.proc.pid, "VmHWM") - peak) / 1024 < 200, "memory was allocated before the refusal"
    assert not list(server.output_dir.glob("never_huge*"))


def test_video_decode_refused_before_allocating(server):
    """Video Edit at size 2048 of a 2,000-frame clip: the frames alone would take about 224 GB; decoding is refused
    before it starts (it used to decode until memory ran out), whatever the machine's memory."""
    from helpers import video_prompt

    from media.video import write_video

    frames = torch.rand(2000, 36, 64, 3, generator=torch.Generator().manual_seed(0))
    write_video(server.input_dir / "long_small.mp4", frames, 25.0)
    p = video_prompt("long_small.mp4", 8, prefix="never_decoded")
    p["edit"]["inputs"].update(size=2048, max_frames=4096)
    peak = _vm_kb(server.proc.pid, "VmHWM")
    with pytest.raises(RuntimeError) as err:
        server.run(p)
    message = str(err.value)
    assert "reading this video needs" in message and "for 2000 frames at 3640x2048" in message, message
    assert "lower max_frames or size" in message, message
    assert (_vm_kb(server.proc.pid, "VmHWM") - peak) / 1024 < 200, "frames were decoded before the refusal"
    assert not list(server.output_dir.glob("never_decoded*"))


# --- 22.6: Class Conditioning ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labels_checkpoint(server, comfy_inprocess):
    """A small class-conditional pixel-space checkpoint (10 classes, 3 channels)."""
    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from contextdiff.joint_model import ClassEmbedding
    from hostside.joint_checkpoints import save_joint
    from hostside.pixel_unet import build_joint_model, joint_unet_config

    torch.manual_seed(0)
    cfg = joint_unet_config(channels=3, model_channels=32, context_dim=32)
    adapter = ContextAdapter(AdapterConfig(latent_channels=3, context_dim=32, dim=32, depth=1, heads=4))
    torch.nn.init.normal_(adapter.patch_out.weight, std=0.1)
    save_joint(server.adapters_dir / CKPT, build_joint_model(cfg, 0), adapter, ClassEmbedding(10, 32), cfg)
    return CKPT


def _digits(ckpt: str, labels: str, batch: int, *, size: int = 64, latent_link: bool = False) -> dict:
    pos = {"classes": ["joint", 2], "labels": labels, "repeat": 1}
    if latent_link:
        pos["latent"] = ["latent", 0]
    return {
        "joint": {"class_type": "ContextDiffJointLoader", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "ContextDiffClassConditioning", "inputs": pos},
        "neg": {
            "class_type": "ContextDiffClassConditioning",
            "inputs": {"classes": ["joint", 2], "labels": "-1", "repeat": 1},
        },
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "sampler": {
            "class_type": "ContextDiffKSampler",
            "inputs": {
                "model": ["joint", 0],
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["latent", 0],
                "seed": 0,
                "steps": 3,
                "cfg": 3.0,
                "scheduler": "simple",
                "method": "ddim",
                "eta": 0.0,
                "adapter_strength": 1.0,
                "denoise": 1.0,
                "adapter": ["joint", 1],
            },
        },
    }


_n = [0]


def _sample(server, ckpt, labels, batch, latent_link=False) -> tuple[torch.Tensor, str]:
    """The sampled latents and the Class Conditioning node's text."""
    _n[0] += 1
    prefix = f"labels{_n[0]}"
    p = _digits(ckpt, labels, batch, latent_link=latent_link)
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}}
    entry = server.run(p)
    latent = load_file(str(sorted(server.output_dir.glob(f"{prefix}_*.latent"))[-1]))["latent_tensor"]
    return latent, "\n".join(entry["outputs"].get("pos", {}).get("text", []))


def _rel(a, b):
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max().item()


def test_reversed_range_samples_what_it_says(server, labels_checkpoint):
    """'3-1, 0' is the classes 3, 2, 1, 0 (it said 'no class given', and inside a list was dropped)."""
    reversed_, _ = _sample(server, labels_checkpoint, "3-1, 0", 4)
    explicit, _ = _sample(server, labels_checkpoint, "3, 2, 1, 0", 4)
    ascending, _ = _sample(server, labels_checkpoint, "1-3, 0", 4)
    assert _rel(reversed_, explicit) <= 1e-6  # the same graph on the same CPU: only summation order could differ
    assert _rel(ascending[:1], explicit[:1]) > 1e-3, "classes 1 and 3 must give different samples for the test"


@pytest.mark.parametrize(
    "labels, named",
    [
        ("seven", "'seven' in labels 'seven' is not a class, a range or -1"),
        ("0, 3-x", "'3-x' in labels '0, 3-x'"),
        ("0, 5-12", "range '5-12' in '0, 5-12' goes past the last class, 9"),
        ("11", "label '11' in '11' is not a class"),
    ],
)
def test_bad_labels_refused_naming_the_part(server, labels_checkpoint, labels, named):
    with pytest.raises(RuntimeError) as err:
        _sample(server, labels_checkpoint, labels, 2)
    assert named in str(err.value), str(err.value)
    assert "invalid literal" not in str(err.value)


@pytest.mark.parametrize("batch", [10, 20, 4])
def test_label_count_against_latent_batch_stated(server, labels_checkpoint, comfy_inprocess, batch):
    """The node's text says which label each sample gets, as ComfyUI's tiling applies it, and the samples agree:
    '0-9' on the batch samples like the per-sample labels the text lists."""
    import comfy.utils

    tiled, text = _sample(server, labels_checkpoint, "0-9", batch, latent_link=True)
    per_sample = comfy.utils.repeat_to_batch_size(torch.arange(10), batch).tolist()
    assert "10 labels: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in text, text
    if batch == 10:
        assert "one per sample of the latent batch of 10" in text, text
    elif batch > 10:
        assert f"latent batch of {batch}: ComfyUI repeats them, sample i gets label i mod 10" in text, text
        assert ", ".join(map(str, per_sample)) in text, text
    else:
        assert f"keeps the first {batch} ({', '.join(map(str, per_sample))}) and ignores the other 6" in text, text
    explicit, _ = _sample(server, labels_checkpoint, ", ".join(map(str, per_sample)), batch)
    assert _rel(tiled, explicit) <= 1e-6


def test_label_text_without_latent_says_how_to_see_the_tiling(server, labels_checkpoint):
    _, text = _sample(server, labels_checkpoint, "2, 4", 2)
    assert "2 labels: 2, 4. On a latent batch of another size ComfyUI repeats them" in text, text


# --- 22.5: the inversion's attention store -----------------------------------------------------------------


@pytest.fixture(scope="module")
def inversion_env(comfy_inprocess):
    import importlib

    from comfy_models import build_sd15, build_tiny_clip

    from devkit import import_pack

    pack = import_pack()
    runs = importlib.import_module(pack.__name__ + ".nodes.edit_runs")
    budget = importlib.import_module(pack.__name__ + ".nodes.store_budget")
    clip = build_tiny_clip()
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a cat on the grass"), return_pooled=True)
    return runs, budget, build_sd15(0, 32, 768), [[cond, {"pooled_output": pooled}]]


@pytest.mark.parametrize("shape", [(1, 4, 16, 16), (2, 4, 24, 16)])
def test_inversion_store_estimate_matches_the_recording(inversion_env, shape):
    """The estimate the inversion node refuses by is the store's real size (within 10%: the text keys are
    estimated at 77 tokens), measured on an inversion; a budget just under it is refused, naming what fits."""
    from contextdiff.editing import InversionSettings

    runs, budget, model, positive = inversion_env
    settings = InversionSettings(steps=8, store_dtype=torch.float16)
    latent = {"samples": torch.randn(shape, generator=torch.Generator().manual_seed(0))}
    recorded = runs.invert(runs.Guide(model, positive), latent, settings).store.nbytes()
    fused = len(settings.fused_steps)
    estimate = budget.store_bytes_per_frame(budget.footprint(model, *shape[-2:]), fused, 2) * shape[0]
    assert abs(estimate - recorded) <= 0.1 * recorded, (estimate, recorded)
    budget.check_inversion_fits(model, shape, settings, budget_bytes=1.01 * estimate)
    with pytest.raises(MemoryError) as err:
        budget.check_inversion_fits(model, shape, settings, budget_bytes=0.99 * estimate)
    message = str(err.value)
    assert f"({fused} fused steps of {shape[0]} latent" in message and "lower steps, raise fuse_start" in message
    assert f"at most {fused - 1} fused steps fit" in message, message


def test_inversion_too_large_for_memory_refused_before_the_first_model_call(server):
    """1000 steps of a 512x512 latent (a 4096-pixel image) on the tiny model would record ~125 GB of attention:
    refused before any model call, the host's peak memory unmoved."""
    p = {
        "model": {
            "class_type": "ContextDiffTest_TinyModel",
            "inputs": {"seed": 0, "model_channels": 32, "context_dim": 768},
        },
        "pos": {
            "class_type": "ContextDiffTest_RandomConditioning",
            "inputs": {"seed": 1, "context_dim": 768, "tokens": 77},
        },
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 4096, "height": 4096, "batch_size": 1}},
        "inv": {
            "class_type": "ContextDiffDDIMInversion",
            "inputs": {
                "model": ["model", 0],
                "latent": ["latent", 0],
                "positive": ["pos", 0],
                "steps": 1000,
                "scheduler": "ddim_uniform",
                "cfg": 1.0,
                "fuse_start": 0.5,
                "refine_steps": 0,
                "store_precision": "fp16",
                "adapter_strength": 1.0,
            },
        },
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["inv", 0], "filename_prefix": "never_stored"}},
    }
    peak = _vm_kb(server.proc.pid, "VmHWM")
    with pytest.raises(RuntimeError) as err:
        server.run(p)
    message = str(err.value)
    assert "this inversion would record about" in message and "(500 fused steps of 1 latent of 512x512)" in message
    assert "fused steps fit; lower steps, raise fuse_start or invert a smaller image" in message, message
    assert (_vm_kb(server.proc.pid, "VmHWM") - peak) / 1024 < 200, "memory was allocated before the refusal"
