"""Editing memory: the attention store per frame, queries+keys (ours) against full maps, at identical
output; the store for 1..N frames; and the speed of an edit on the SD1.5-shaped UNet.

1. Measured: a real inversion (ContextDiff DDIM Inversion, recording) with the SD1.5-shaped UNet at a
   small latent, store in each mode, the edits compared.
2. Per frame at 512x512 (64x64 latents), 20 steps, fuse_start 0.5: from the UNet's attention sizes
   (one probe pass), the same count the measured store matches.

    .venv/bin/python bench/edit_memory.py [--size 256] [--steps 6] [--frames 4]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from host import import_pack  # noqa: E402

from report import write_section  # noqa: E402


def full_map_bytes(footprint, fused, heads=8, text_tokens=77, video=True):
    """fp32 maps: self-attention N x (2N) (sparse-causal keys) or N x N, cross-attention N x 77, per head."""
    keys = 2 if video else 1
    return fused * sum(heads * n * (keys * n + text_tokens) * 4 for n, _ in footprint)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--frames", type=int, default=2)
    args = ap.parse_args()
    pack = import_pack()
    runtime = importlib.import_module(pack.__name__ + ".nodes.edit_runtime")
    video = importlib.import_module(pack.__name__ + ".nodes.video_edit")
    import torch
    from comfy_models import build_sd15, random_conditioning

    model = build_sd15(0, full_size=True, weight_scale=0.5)
    src, tgt, neg = random_conditioning(1), random_conditioning(3), random_conditioning(2)
    h = args.size // 8
    latent = {"samples": torch.randn(args.frames, 4, h, h, generator=torch.Generator().manual_seed(0))}
    measured = {}
    for store_maps in (False, True):
        t = time.perf_counter()
        source = runtime.invert(model, latent, src, steps=args.steps, store_maps=store_maps,
                                store_dtype=torch.float32 if store_maps else torch.float16, frames=args.frames)
        t_inv = time.perf_counter() - t
        t = time.perf_counter()
        out, _ = runtime.edit(model, source, tgt, neg, cfg=7.5)
        measured[store_maps] = {"bytes": source.store.nbytes(), "out": out, "invert_s": t_inv,
                                "edit_s": time.perf_counter() - t}
    same = (measured[False]["out"] - measured[True]["out"]).abs().max().item()
    scale = measured[True]["out"].abs().max().item()
    from contextdiff.editing import fused_steps
    fused = len(fused_steps(args.steps, 0.5))
    footprint = video.attention_footprint(model, (h, h))
    predicted_ours = video.store_bytes_per_frame(footprint, fused, 2) * args.frames
    fps = args.frames / (measured[False]["invert_s"] + measured[False]["edit_s"])

    fp512 = video.attention_footprint(model, (64, 64))
    per_frame_ours = video.store_bytes_per_frame(fp512, 10, 2)
    per_frame_maps = full_map_bytes(fp512, 10)
    rows = "\n".join(f"| {n} | {n * per_frame_ours / 2**30:.2f} GiB | {n * per_frame_maps / 2**30:.1f} GiB |"
                     for n in (1, 2, 4, 8, 16, 24))
    result = {"measured_latent": [h, h], "steps": args.steps, "frames": args.frames,
              "store_qk_fp16_bytes": measured[False]["bytes"], "store_maps_fp32_bytes": measured[True]["bytes"],
              "measured_ratio": measured[False]["bytes"] / measured[True]["bytes"],
              "predicted_qk_bytes": predicted_ours, "max_abs_output_difference": same, "output_scale": scale,
              "edit_frames_per_second": fps, "per_frame_512_ours_bytes": per_frame_ours,
              "per_frame_512_maps_bytes": per_frame_maps, "ratio_512": per_frame_ours / per_frame_maps}
    print(result)
    write_section("edit_memory", result, f"""## Editing memory (`bench/edit_memory.py`)

Measured (SD1.5-shaped UNet, random weights, latent {h}x{h}, {args.frames} frames, {args.steps} DDIM steps, fused
steps {fused}): the store of queries+keys in fp16 holds **{measured[False]['bytes'] / 2**20:.1f} MiB**, the store of
full fp32 maps **{measured[True]['bytes'] / 2**20:.1f} MiB**: ratio **1/{1 / result['measured_ratio']:.1f}**
(target at most 1/8). Identical output: max |difference| {same:.2e} against outputs of size {scale:.1f} (fp16
queries/keys). The count from the UNet's attention sizes predicts {predicted_ours / 2**20:.1f} MiB for ours.
Speed: inversion + edit {fps:.3f} frames/s on this CPU at {args.size}px, {args.steps} steps.

At 512x512, 20 steps, fuse_start 0.5 (10 fused steps), sparse-causal self-attention:
**{per_frame_ours / 2**20:.0f} MiB per frame** for ours against **{per_frame_maps / 2**30:.1f} GiB** for full maps
(1/{per_frame_maps / per_frame_ours:.0f}).

| frames | queries+keys, fp16 | full maps, fp32 |
|---|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
