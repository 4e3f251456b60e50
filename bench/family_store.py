"""The editing attention store of each model family at its native resolution, from the measured layers.

Each family's real-size UNet (SD1.5, SD2.x, SDXL, SSD-1B, Vega, KOALA-700M) is built on PyTorch's meta
device (shapes only: no memory, no weights); its attention blocks are counted with their widths and
resolution levels, which give the tokens per block at a latent size. The count is checked against a
probe forward pass (the Video Edit node's ``attention_footprint``) on each family's reduced-width model
at a small latent: both lists must be equal. The store per frame is then
``contextdiff.attention_store.store_bytes_per_frame`` (queries and keys in fp16) for 20 DDIM steps with
fuse_start 0.5 (10 fused steps), what Video Edit checks before it starts.

    .venv/bin/python -m bench.family_store
"""

from __future__ import annotations

import importlib
import math

from bench.report import write_section
from devkit import import_pack, tiny_models

STEPS, FUSE_START = 20, 0.5


def real_config(name: str) -> dict:
    """The real UNet configs (as ComfyUI detects them from the released checkpoints)."""
    models = tiny_models()
    sd15_unet_config, sdxl_unet_config = models.sd15_unet_config, models.sdxl_unet_config

    if name == "SD15":
        return sd15_unet_config(full_size=True)
    if name == "SD20":
        return dict(sd15_unet_config(full_size=True), context_dim=1024, use_linear_in_transformer=True)
    return sdxl_unet_config(name, 320, (1, 2, 4))


def meta_unet(name: str, cfg: dict):
    import comfy.model_base
    import comfy.supported_models
    import torch

    model_config = getattr(comfy.supported_models, name)(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    cls = comfy.model_base.SDXL if cfg.get("adm_in_channels") == 2816 else comfy.model_base.BaseModel
    return cls(model_config, device=torch.device("meta")).diffusion_model


def structural_footprint(diffusion_model, latent_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """``(tokens, channels)`` of every attention block in forward order, from the module tree: the level of
    each block is the number of downsamplings before it minus the upsamplings (stride-2, rounding up)."""
    from comfy.ldm.modules.attention import BasicTransformerBlock
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

    level, out = 0, []
    for module in diffusion_model.modules():
        if isinstance(module, Downsample):
            level += 1
        elif isinstance(module, Upsample):
            level -= 1
        elif isinstance(module, BasicTransformerBlock):
            h, w = (math.ceil(n / 2**level) for n in latent_hw)
            out.append((h * w, module.attn1.to_q.in_features))
    return out


def main():
    pack = import_pack()
    attention_patch = importlib.import_module(pack.__name__ + ".nodes.attention_patch")
    build_family = tiny_models().build_family

    from contextdiff import families
    from contextdiff.attention_store import store_bytes_per_frame
    from contextdiff.editing import fused_steps

    fused = len(fused_steps(STEPS, FUSE_START))
    rows, result = [], {"steps": STEPS, "fuse_start": FUSE_START, "fused_steps": fused, "families": {}}
    for name in ("SD15", "SD20", "SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M"):
        small = build_family(name, 0)
        probe = attention_patch.attention_footprint(small, (12, 10))
        assert structural_footprint(small.model.diffusion_model, (12, 10)) == probe, name  # the count is right
        family = families.family_of_config(name)
        side = family.native_size // 8
        footprint = structural_footprint(meta_unet(name, real_config(name)), (side, side))
        per_frame = store_bytes_per_frame(footprint, fused, 2)
        result["families"][name] = {
            "family": family.name,
            "native_size": family.native_size,
            "attention_blocks": len(footprint),
            "store_bytes_per_frame": per_frame,
            "footprint": footprint,
        }
        rows.append(
            f"| {family.name} ({name}) | {family.native_size}x{family.native_size} | {len(footprint)} | "
            f"{per_frame / 2**20:,.0f} MiB | {24 * per_frame / 2**30:.1f} GiB |"
        )
    print(result)
    table = "\n".join(rows)
    write_section(
        "family_store",
        result,
        f"""## Editing store per model family (`bench/family_store.py`)

The attention store (queries and keys of self- and cross-attention, fp16, on the CPU) per frame at each family's
native resolution, {STEPS} DDIM steps, fuse_start {FUSE_START} ({fused} fused steps). Attention blocks counted on the
real-size UNet built on the meta device; the count is checked against a probe forward pass on each family's
reduced-width model (equal lists). SSD-1B, Vega and KOALA have their encoder depths as ComfyUI detects them and a
decoder that mirrors them (their real decoders are pruned differently), so their rows are estimates.

| family | resolution | attention blocks | store per frame | 24 frames |
|---|---|---|---|---|
{table}
""",
    )


if __name__ == "__main__":
    main()
