"""Pixel-space latents shown as an IMAGE (a batch, or one grid), with sizes bounded by the batch they lay out
and an estimate that refuses, before allocating, an image that would not fit."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_SIDE = 16384  # ComfyUI's MAX_RESOLUTION (nodes.py): the largest side its own image nodes accept
BYTES = 4  # float32, ComfyUI's IMAGE


def layout(batch: int, height: int, width: int, scale: int, grid_columns: int) -> tuple[int, int, int, int]:
    """``(images, height, width, columns)`` of the IMAGE: ``grid_columns`` is capped at the batch (more columns
    would only add blank cells); 0 columns is a batch of images; cells are ``scale`` pixels apart."""
    columns = min(grid_columns, batch)
    if not columns:
        return batch, height * scale, width * scale, 0
    rows = -(-batch // columns)
    return 1, rows * (height + 1) * scale, columns * (width + 1) * scale, columns


def peak_bytes(shape: tuple[int, ...], scale: int, grid_columns: int) -> int:
    """Memory :func:`to_image` holds at once: the IMAGE, one enlarged latent and the latents as floats."""
    n, c, h, w = shape
    images, height, width, _ = layout(n, h, w, scale, grid_columns)
    return BYTES * (images * height * width * 3 + 3 * h * w * scale * scale + n * c * h * w)


def check_fits(shape: tuple[int, ...], scale: int, grid_columns: int, free_bytes: float) -> None:
    """Refuse, before allocating, an IMAGE over ComfyUI's side limit or over ``free_bytes``, saying what fits."""
    if len(shape) != 4:
        raise ValueError(
            f"samples of shape {tuple(shape)} are not pixel-space images (batch, channels, height, width): "
            "connect the latent of a joint or shapes model"
        )
    n, _, h, w = shape
    images, height, width, _ = layout(n, h, w, scale, grid_columns)
    need = peak_bytes(shape, scale, grid_columns)
    if max(height, width) <= MAX_SIDE and need <= free_bytes:
        return
    fits = [
        s
        for s in range(1, scale)
        if max(layout(n, h, w, s, grid_columns)[1:3]) <= MAX_SIDE and peak_bytes(shape, s, grid_columns) <= free_bytes
    ]
    advice = f"lower scale (at most {fits[-1]} fits)" if fits else "show fewer latents at once"
    what = f"{images} image{'s' if images > 1 else ''} of {width}x{height} pixels"
    if max(height, width) > MAX_SIDE:
        raise ValueError(
            f"Pixels To Image would make {what}, over ComfyUI's {MAX_SIDE}-pixel limit on a side: {advice}"
            + (" or set fewer grid_columns" if grid_columns else "")
        )
    raise MemoryError(
        f"Pixels To Image would make {what}, about {need / 1e9:.1f} GB, more than the {free_bytes / 1e9:.1f} GB "
        f"of free memory: {advice}"
    )


def to_image(samples: torch.Tensor, scale: int, grid_columns: int) -> torch.Tensor:
    """Latents in [-1, 1] as an IMAGE ``(images, H, W, 3)`` in [0, 1], enlarged ``scale`` times (nearest), as a
    batch or as one grid of ``grid_columns`` (capped at the batch) on white, filled one latent at a time."""
    x = samples.float().clamp(-1, 1).add(1).div(2)
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    n, _, h, w = x.shape
    images, height, width, columns = layout(n, h, w, scale, grid_columns)
    out = torch.ones(images, height, width, 3)
    hs, ws = h * scale, w * scale
    for i in range(n):
        img = F.interpolate(x[i : i + 1], scale_factor=scale, mode="nearest") if scale > 1 else x[i : i + 1]
        img = img[0].permute(1, 2, 0)
        if columns:
            r, c = divmod(i, columns)
            out[0, r * (hs + scale) : r * (hs + scale) + hs, c * (ws + scale) : c * (ws + scale) + ws] = img
        else:
            out[i] = img
    return out
