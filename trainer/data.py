"""Image-caption data for ``adapter`` mode: a folder of images with same-name ``.txt`` captions,
or a JSONL file of ``{"image": path, "caption": text}`` lines (paths relative to the file).

The scan reads every file before any model is loaded: each image is decoded whole and converted as
:mod:`trainer.images` says (a damaged or truncated file, a decompression bomb and a mode that is not
converted faithfully are found here), and each caption is decoded as UTF-8 (a byte-order mark is
allowed; any other encoding is refused, naming the file and the byte offset, since guessing one
would read latin-1 and cp1252 captions as wrong words). Unusable items are skipped and named, or
stop the run with a clear message, as ``on_bad_data`` says. An empty data set always stops the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import ImageReadError, read_rgb

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CAPTION_RULE = "captions are read as UTF-8, with or without a byte-order mark: save the file as UTF-8"


class DataError(ValueError):
    pass


class _BadItem(ValueError):
    """One unusable item: its kind (a key of the skipped counts) and what is wrong with it."""

    def __init__(self, kind: str, what: str):
        super().__init__(what)
        self.kind = kind


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


def decode_utf8(data: bytes, where: str, offset: int = 0, kind: str = "bad_caption") -> str:
    """``data`` as UTF-8 text (a leading byte-order mark dropped); a :class:`_BadItem` of ``kind`` naming ``where``
    and the byte offset (``offset``: that of ``data`` in its file) otherwise."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _BadItem(
            kind, f"{where} is not UTF-8: byte 0x{data[e.start]:02x} at offset {offset + e.start} ({CAPTION_RULE})"
        ) from None


def _caption(text: str, missing: str) -> str:
    """``text`` stripped; a ``missing_caption`` :class:`_BadItem` saying ``missing`` when nothing is left."""
    if not text.strip():
        raise _BadItem("missing_caption", missing)
    return text.strip()


def _folder_items(path: Path) -> Iterator[tuple[Path, str] | _BadItem]:
    """A folder's ``(image, caption)`` pairs, and a :class:`_BadItem` for each unusable one."""
    for img in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        cap = img.with_suffix(".txt")
        try:
            text = decode_utf8(cap.read_bytes(), cap.name) if cap.is_file() else ""
            yield img, _caption(text, f"{img.name} has no caption file {cap.name}")
        except _BadItem as e:
            yield e


def _record(line: str, path: Path, n: int) -> tuple[Path, str]:
    """The pair of line ``n`` of the JSONL file ``path``."""
    try:
        rec = json.loads(line)
        img, cap = path.parent / rec["image"], str(rec["caption"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise _BadItem("bad_line", f'{path.name} line {n} is not {{"image": ..., "caption": ...}}') from None
    return img, _caption(cap, f"{path.name} line {n} has an empty caption")


def _jsonl_items(path: Path) -> Iterator[tuple[Path, str] | _BadItem]:
    """A JSONL file's ``(image, caption)`` pairs, and a :class:`_BadItem` for each unusable line."""
    offset = 0
    for n, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        start, offset = offset, offset + len(raw)
        try:
            line = decode_utf8(raw, f"{path.name} line {n}", start, kind="bad_line")
            if line.strip():
                yield _record(line, path, n)
        except _BadItem as e:
            yield e


def scan(source: str, on_bad_data: str = "skip") -> CaptionedImages:
    """The usable image-caption pairs of ``source``, every image decoded once (see the module's docstring)."""
    path = Path(source)
    if path.is_dir():
        found = list(_folder_items(path))
    elif path.is_file() and path.suffix == ".jsonl":
        found = list(_jsonl_items(path))
    else:
        raise DataError(f"dataset {source!r} is neither a folder of images nor a .jsonl file")
    skipped: dict[str, list[str]] = {}
    for e in (item for item in found if isinstance(item, _BadItem)):
        _problem(skipped, e.kind, str(e), on_bad_data)
    readable = []
    for img, cap in (item for item in found if not isinstance(item, _BadItem)):
        try:
            read_rgb(img)
            readable.append((img, cap))
        except ImageReadError as e:
            _problem(skipped, "unreadable_image", str(e), on_bad_data)
    if not readable:
        detail = "; ".join(f"{k}: {len(v)}" for k, v in skipped.items()) or "no image files"
        raise DataError(
            f"dataset {source!r} has no usable image-caption pairs ({detail}); add images with same-name .txt captions"
        )
    return CaptionedImages(readable, skipped)


def load_image(path: Path, size: int) -> torch.Tensor:
    """Center-crop to a square and resize to ``size``: (size, size, 3) float in [0, 1]."""
    im = read_rgb(path)
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
