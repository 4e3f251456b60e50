"""Image-caption data for ``adapter`` mode: a folder of images with same-name ``.txt`` captions,
or a JSONL file of ``{"image": path, "caption": text}`` lines (paths relative to the file).

Unreadable images, missing captions and bad lines are skipped and counted, or stop the run with
a clear message, as ``on_bad_data`` says. An empty data set always stops the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class DataError(ValueError):
    pass


@dataclass
class CaptionedImages:
    items: list[tuple[Path, str]]
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self):
        return len(self.items)


def _problem(report: dict, kind: str, what: str, on_bad_data: str):
    if on_bad_data == "error":
        raise DataError(f"{what} (on_bad_data=error; use --on_bad_data skip to skip such items)")
    report.setdefault(kind, []).append(what)


def scan(source: str, on_bad_data: str = "skip") -> CaptionedImages:
    path = Path(source)
    skipped: dict[str, list[str]] = {}
    items: list[tuple[Path, str]] = []
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for img in images:
            cap = img.with_suffix(".txt")
            if not cap.is_file() or not cap.read_text(errors="replace").strip():
                _problem(skipped, "missing_caption", f"{img.name} has no caption file {cap.name}", on_bad_data)
                continue
            items.append((img, cap.read_text(errors="replace").strip()))
    elif path.is_file() and path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                img, cap = path.parent / rec["image"], str(rec["caption"]).strip()
            except (json.JSONDecodeError, KeyError, TypeError):
                _problem(
                    skipped, "bad_line", f'{path.name} line {n} is not {{"image": ..., "caption": ...}}', on_bad_data
                )
                continue
            if not cap:
                _problem(skipped, "missing_caption", f"{path.name} line {n} has an empty caption", on_bad_data)
                continue
            items.append((img, cap))
    else:
        raise DataError(f"dataset {source!r} is neither a folder of images nor a .jsonl file")
    readable = []
    for img, cap in items:
        try:
            with Image.open(img) as im:
                im.verify()
            readable.append((img, cap))
        except (OSError, UnidentifiedImageError, SyntaxError):
            _problem(skipped, "unreadable_image", f"{img.name} cannot be read as an image", on_bad_data)
    if not readable:
        detail = "; ".join(f"{k}: {len(v)}" for k, v in skipped.items()) or "no image files"
        raise DataError(
            f"dataset {source!r} has no usable image-caption pairs ({detail}); add images with same-name .txt captions"
        )
    return CaptionedImages(readable, skipped)


def load_image(path: Path, size: int) -> torch.Tensor:
    """Center-crop to a square and resize to ``size``: (size, size, 3) float in [0, 1]."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
