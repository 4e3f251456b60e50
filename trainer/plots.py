"""Pictures a person reads faster than numbers: the loss curve and sample grids."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def loss_curve(log_path: Path, out_path: Path, title: str = "training loss") -> Path:
    steps, losses, val = [], [], []
    for line in Path(log_path).read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            steps.append(rec["step"])
            losses.append(rec["loss"])
        if "val_loss" in rec:
            val.append((rec["step"], rec["val_loss"]))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 5:
        k = max(1, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"moving mean ({k})")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", ms=3, lw=1.2, label="validation (uniform weighting)")
    ax.set_xlabel("step")
    ax.set_ylabel("Eq. 6 loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def image_grid(images: torch.Tensor, rows: int, out_path: Path, scale: int = 1, pad: int = 1) -> Path:
    """``images``: (N, C, H, W) in [-1, 1] (C = 1 or 3, or more: first three shown) -> one PNG."""
    images = images.detach().float().cpu().clamp(-1, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    images = images[:, :3]
    n, _, h, w = images.shape
    cols = (n + rows - 1) // rows
    canvas = torch.ones(3, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[:, top : top + h, left : left + w] = (images[i] + 1) / 2
    arr = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(out_path)
    return out_path
