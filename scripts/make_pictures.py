"""Pictures for the README from a trained digits model: an inversion reconstruction with class
edits, and a video-edit frame strip. Real data (scikit-learn's digits), real method, CPU, seconds.

    .venv/bin/python -m scripts.make_pictures [--checkpoint runs/digits/digits-contextdiff.safetensors]
"""

from __future__ import annotations

import argparse
import importlib
import shutil
from pathlib import Path

import torch

from devkit import ROOT, import_pack

OUT = ROOT / "docs" / "images"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "runs" / "digits" / "digits-contextdiff.safetensors"))
    args = ap.parse_args()
    pack = import_pack()
    runtime = importlib.import_module(pack.__name__ + ".nodes.edit_runs")
    types_ = importlib.import_module(pack.__name__ + ".nodes.types")
    import comfy.model_patcher

    from hostside.joint_checkpoints import load_joint
    from trainer.joint import load_digits_tensor
    from trainer.plots import image_grid

    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise SystemExit("train the digits model first: bash scripts/run.sh")
    model, adapter, classes, meta = load_joint(ckpt)
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=torch.device("cpu"), offload_device=torch.device("cpu")
    )
    loaded = types_.LoadedAdapter(adapter, meta, ckpt.name)
    images, labels = load_digits_tensor()
    OUT.mkdir(parents=True, exist_ok=True)

    def cond(lbls):
        with torch.no_grad():
            return [[classes(torch.as_tensor(lbls)), {}]]

    # 1. Inversion -> reconstruction -> class edit, on real held-out digits.
    pick = torch.tensor([1700 + i for i in range(8)])
    x0, y = images[pick], labels[pick]
    target = (y + 1) % 10
    settings = runtime.InversionSettings(steps=30, scheduler="simple", refine_steps=4, store_dtype=torch.float32)
    source = runtime.invert(runtime.Guide(patcher, cond(y), adapter=loaded), {"samples": x0}, settings)
    plain, fused = (
        runtime.plan_edit(runtime.EditSettings(cfg=c, fuse=f), source.settings) for c, f in ((1.0, False), (4.0, True))
    )
    rec = runtime.edit(runtime.Guide(patcher, cond(y), cond([10] * 8), loaded), source, plain).samples
    edited = runtime.edit(runtime.Guide(patcher, cond(target), cond([10] * 8), loaded), source, fused).samples
    err = ((rec - x0).norm() / x0.norm()).item()
    image_grid(torch.cat([x0, rec, edited]), rows=3, out_path=OUT / "inversion_digits.png", scale=8)
    print(f"inversion reconstruction: relative error {err:.4f}; edit rows: class +1")

    # 2. A 'video': one digit morphing into another of the same class; edited as a clip (sparse-causal).
    a, b = images[labels == 3][0], images[labels == 3][5]
    frames = torch.stack([a + (b - a) * t for t in torch.linspace(0, 1, 8)])
    settings = runtime.InversionSettings(steps=30, scheduler="simple", store_dtype=torch.float32)
    source = runtime.invert(runtime.Guide(patcher, cond([3] * 8), adapter=loaded), {"samples": frames}, settings, 8)
    edited = runtime.edit(runtime.Guide(patcher, cond([8] * 8), cond([10] * 8), loaded), source, fused).samples
    image_grid(torch.cat([frames, edited]), rows=2, out_path=OUT / "video_edit_digits.png", scale=8)
    grid = ROOT / "out" / "digits_grid.png"
    if grid.exists():
        shutil.copy(grid, OUT / "digits_grid.png")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
