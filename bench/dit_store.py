"""The editing attention store of the DiT families (Flux, SD3/SD3.5) at their native resolution, counted on the
real layouts.

Each real-size model (the configs ComfyUI's detection gives the released files) is built on PyTorch's meta device
(shapes only); its joint-attention layers are listed by the editor's own walk (``nodes.dit_attention.joint_footprint``:
the blocks it patches, their width, the image tokens of a latent). The store per fused step and layer holds the image
tokens' queries and every token's keys, ``(2 N + T) C`` numbers in fp16 (``contextdiff.attention_store
.joint_store_bytes``); ``tests/host/test_dit_attention.py`` holds the count equal to a recorded store's bytes on the
tiny SD3 and Flux files. Text tokens: what ComfyUI's tokenizers give a prompt of up to 77 CLIP / 256 T5 tokens (Flux:
T5 padded to 256; SD3: CLIP-L/G's 77 and T5's 77); a longer prompt adds ``T C`` per layer and step.

    .venv/bin/python -m bench.dit_store
"""

from __future__ import annotations

import importlib

from bench.report import write_section
from devkit import import_pack, tiny_models

STEPS, FUSE_START = 20, 0.5
# name -> (ComfyUI config, the changes from the tiny file's config to the released model's, text tokens, family key)
REAL = {
    "Flux.1-dev": ("flux", {"depth": 19, "depth_single_blocks": 38}, 256, "flux"),
    "SD3.5-large": (
        "sd3",
        {
            "depth": 38,
            "context_embedder_config": {
                "target": "torch.nn.Linear",
                "params": {"in_features": 4096, "out_features": 64 * 38},
            },
            "num_patches": 36864,
            "pos_embed_max_size": 192,
            "qk_norm": "rms",
        },
        154,
        "sd3",
    ),
    "SD3.5-medium": (  # MMDiT-X: blocks 0-12 also run an image-only self-attention, counted as layers of their own
        "sd3",
        {
            "depth": 24,
            "context_embedder_config": {
                "target": "torch.nn.Linear",
                "params": {"in_features": 4096, "out_features": 64 * 24},
            },
            "num_patches": 147456,
            "pos_embed_max_size": 384,
            "qk_norm": "rms",
            "x_block_self_attn_layers": list(range(13)),
        },
        154,
        "sd3",
    ),
    "SD3-medium": (
        "sd3",
        {
            "depth": 24,
            "context_embedder_config": {
                "target": "torch.nn.Linear",
                "params": {"in_features": 4096, "out_features": 64 * 24},
            },
            "num_patches": 36864,
            "pos_embed_max_size": 192,
        },
        154,
        "sd3",
    ),
}


def meta_model(kind: str, changes: dict):
    import comfy.supported_models
    import torch

    models = tiny_models()
    name, cfg = models.FLOW_MODELS[kind]
    cfg = dict(cfg, **changes)
    cfg.update(models.host_flux_fields(cfg))
    model_config = getattr(comfy.supported_models, name)(cfg)
    model_config.set_inference_dtype(torch.float16, None)
    return model_config.get_model({}, device=torch.device("meta")).diffusion_model


def main():
    pack = import_pack()
    dit = importlib.import_module(pack.__name__ + ".nodes.dit_attention")

    from contextdiff import families
    from contextdiff.attention_store import joint_store_bytes
    from contextdiff.editing import fused_steps

    fused = len(fused_steps(STEPS, FUSE_START))
    rows, result = [], {"steps": STEPS, "fuse_start": FUSE_START, "fused_steps": fused, "models": {}}
    for name, (kind, changes, text, family_key) in REAL.items():
        family = families.family_of_key(family_key)
        side = family.native_size // 8
        model = meta_model(kind, changes)
        footprint = dit.joint_footprint(model, (side, side), text)
        total = joint_store_bytes(footprint, fused, 2)
        per_step = joint_store_bytes(footprint, 1, 2)
        _, tokens, width = footprint[0]
        result["models"][name] = {
            "native_size": family.native_size,
            "layers": len(footprint),
            "text_tokens": text,
            "image_tokens": tokens,
            "width": width,
            "bytes_per_fused_step": per_step,
            "store_bytes": total,
        }
        rows.append(
            f"| {name} | {family.native_size}x{family.native_size} | {len(footprint)} | {text} + {tokens} | {width} | "
            f"{per_step / 2**30:.2f} GiB | {total / 2**30:.1f} GiB |"
        )
    print(result)
    table = "\n".join(rows)
    write_section(
        "dit_store",
        result,
        f"""## Editing store of the DiT families (`bench/dit_store.py`)

The joint-attention store (the image tokens' queries and every token's keys, fp16, on the CPU) of one image at each
model's native resolution, {STEPS} steps, fuse_start {FUSE_START} ({fused} fused steps). Layers counted on the
real-size model built on the meta device with the editor's own walk of the blocks it patches (Flux: double and
single blocks; SD3: joint blocks); the count equals a recorded store's bytes on the tiny files
(`tests/host/test_dit_attention.py`). Text tokens as ComfyUI's tokenizers give a prompt up to 77 CLIP / 256 T5
tokens. Real-size speed is not measured here.

| model | resolution | joint layers | tokens (text + image) | width | per fused step | {fused} fused steps |
|---|---|---|---|---|---|---|
{table}
""",
    )


if __name__ == "__main__":
    main()
