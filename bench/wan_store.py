"""The Video Edit's attention store on Wan 2.x at its native size, counted on the real layouts (docs/design.md 1.3).

The released models' configs (as ComfyUI's detection gives them) are built on PyTorch's meta device (shapes only);
the editor's own count (``nodes.wan_attention.wan_footprint``: the blocks it patches, their width, the video tokens of
a latent) gives the store per fused step and block, ``(3 N + T) C`` numbers in fp16 (self-attention q and k over all
video tokens, cross-attention q and the T5 keys: ``contextdiff.attention_store.wan_store_bytes``), which
``tests/host/test_wan_video_edit.py`` holds equal to a recorded store's bytes on the tiny file. 832x480, 81 frames:
a latent of 21 frames of 60x104, 30x52 tokens per frame at patch 2; T5 text: 512 tokens (umT5's minimum length).

    .venv/bin/python -m bench.wan_store
"""

from __future__ import annotations

import importlib

from bench.dit_store import FUSE_START, STEPS, meta_model
from bench.report import write_section
from devkit import import_pack

# name -> the changes from the tiny file's config to the released model's
REAL = {
    "Wan 2.1/2.2 14B t2v": {"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40},
    "Wan 2.1 1.3B t2v": {"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30},
}
FRAMES, HEIGHT, WIDTH, TEXT = 81, 480, 832, 512


def main():
    pack = import_pack()
    wan = importlib.import_module(pack.__name__ + ".nodes.wan_attention")

    from contextdiff.attention_store import wan_store_bytes
    from contextdiff.editing import fused_steps

    fused = len(fused_steps(STEPS, FUSE_START))
    size = (1 + (FRAMES - 1) // 4, HEIGHT // 8, WIDTH // 8)
    rows, result = [], {"steps": STEPS, "fuse_start": FUSE_START, "fused_steps": fused, "latent": size, "models": {}}
    for name, changes in REAL.items():
        model = meta_model("wan", changes)
        footprint = wan.wan_footprint(model, size, TEXT)
        per_step = wan_store_bytes(footprint, 1, 2)
        per_block = per_step // len(footprint)
        _, tokens, width = footprint[0]
        result["models"][name] = {
            "blocks": len(footprint),
            "video_tokens": tokens,
            "width": width,
            "bytes_per_block_and_step": per_block,
            "bytes_per_fused_step": per_step,
            "store_bytes": per_step * fused,
        }
        rows.append(
            f"| {name} | {len(footprint)} | {tokens} + {TEXT} | {width} | {per_block / 2**30:.2f} GiB | "
            f"{per_step / 2**30:.1f} GiB | {per_step * fused / 2**30:.0f} GiB |"
        )
    print(result)
    write_section(
        "wan_store",
        result,
        f"""## The Video Edit's store on Wan (`bench/wan_store.py`)

{WIDTH}x{HEIGHT}, {FRAMES} frames (latent {size[0]} frames of {size[1]}x{size[2]}), fp16, {STEPS} steps, fuse_start
{FUSE_START} ({fused} fused steps); counted on the real-size model built on the meta device by the editor's own count
(equal to a recorded store's bytes on the tiny file, `tests/host/test_wan_video_edit.py`). Real-size speed is not
measured here.

| model | blocks | tokens (video + T5) | width | per block and step | per fused step | {fused} fused steps |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}
""",
    )


if __name__ == "__main__":
    main()
