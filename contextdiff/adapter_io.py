"""Adapter files: ``.safetensors`` with the architecture and provenance in the header metadata.

Metadata keys (all strings, as safetensors requires): ``format`` (``contextdiff-adapter``),
``format_version``, ``config`` (JSON of :class:`AdapterConfig`), ``latent_channels``,
``context_dim``, ``base_model`` (``sd15``, ``sd2``, ``sdxl``, ``joint``, ...), ``training``
(JSON of the trainer's config) and ``producer`` (what wrote the file). Pickles are refused:
loading one runs arbitrary code.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .adapter import AdapterConfig, ContextAdapter

FORMAT = "contextdiff-adapter"
FORMAT_VERSION = 1
PRODUCER = f"contextdiff-comfyui {__version__}"


class AdapterFileError(ValueError):
    """An adapter file that cannot be used; the message says what is wrong and what to do."""


def atomic_save_file(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """``safetensors.save_file`` to a temporary file beside ``path``, fsync, then rename.

    A crash or kill mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_adapter(adapter: ContextAdapter, path: str | os.PathLike, base_model: str,
                 training: dict | None = None, producer: str = PRODUCER) -> Path:
    """Write ``adapter`` atomically with the metadata the loader validates."""
    cfg = adapter.cfg
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "latent_channels": str(cfg.latent_channels),
        "context_dim": str(cfg.context_dim),
        "base_model": base_model,
        "training": json.dumps(training or {}, sort_keys=True, default=str),
        "producer": producer,
    }
    return atomic_save_file(adapter.state_dict(), path, meta)


def _read_header(path: Path) -> dict:
    """The safetensors JSON header, with a clear error for pickles and other non-safetensors files."""
    name = path.name
    if not path.is_file():
        raise AdapterFileError(f"Adapter file {name} does not exist; put adapters in models/contextdiff/.")
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise AdapterFileError(
                f"{name} is a pickle/torch.save file, which is refused because loading it can run code; "
                "convert it to .safetensors with the trainer or save_adapter().")
        if len(head) < 8:
            raise AdapterFileError(f"{name} is empty or truncated; re-download or re-export the adapter.")
        (n,) = struct.unpack("<Q", head)
        size = path.stat().st_size
        if n <= 1 or n > min(size - 8, 100 * 2**20):
            raise AdapterFileError(f"{name} is not a safetensors file (bad header length); "
                                   "re-export it as .safetensors.")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise AdapterFileError(f"{name} has a corrupt safetensors header; re-download or re-export it.") from None
    if not isinstance(header, dict):
        raise AdapterFileError(f"{name} has a corrupt safetensors header; re-download or re-export it.")
    return header


def read_metadata(path: str | os.PathLike) -> dict:
    """Validated metadata of an adapter file, without loading its tensors."""
    path = Path(path)
    header = _read_header(path)  # sniffs the content first: a pickle is refused whatever its name
    if path.suffix.lower() != ".safetensors":
        raise AdapterFileError(f"{path.name}: adapters must be .safetensors files (got '{path.suffix}'); rename it.")
    meta = header.get("__metadata__") or {}
    name = path.name
    if meta.get("format") != FORMAT:
        raise AdapterFileError(f"{name} is a safetensors file but not a ContextDiff adapter "
                               f"(metadata format={meta.get('format')!r}); pick an adapter trained with trainer.train.")
    try:
        version = int(meta.get("format_version", "?"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        raise AdapterFileError(f"{name} has adapter format version {meta.get('format_version')}, this pack reads "
                               f"version {FORMAT_VERSION}; update the node pack or re-export the adapter.")
    try:
        meta["config"] = AdapterConfig.from_dict(json.loads(meta["config"]))
        meta["training"] = json.loads(meta.get("training", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise AdapterFileError(f"{name} has invalid adapter metadata ({e}); re-export the adapter.") from None
    return meta


def load_adapter(path: str | os.PathLike, device="cpu") -> tuple[ContextAdapter, dict]:
    """Load and validate an adapter file; returns ``(adapter in eval mode, metadata)``."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterFileError(f"{path.name} is corrupt ({e}); re-download or re-export it.") from None
    adapter = ContextAdapter(meta["config"])
    expected = adapter.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise AdapterFileError(f"{path.name} does not match its own architecture metadata "
                               f"(missing {missing[:3]}, unexpected {extra[:3]}); re-export the adapter.")
    for key, value in state.items():
        if not value.is_floating_point():
            raise AdapterFileError(f"{path.name}: tensor {key} has dtype {value.dtype}, adapters store floating-point "
                                   "weights; the file is damaged or not an adapter, re-export it.")
        if value.shape != expected[key].shape:
            raise AdapterFileError(f"{path.name}: tensor {key} has shape {tuple(value.shape)}, the architecture "
                                   f"needs {tuple(expected[key].shape)}; re-export the adapter.")
        if not torch.isfinite(value).all():
            raise AdapterFileError(f"{path.name}: tensor {key} contains NaN or infinity; the training run diverged, "
                                   "use an earlier checkpoint.")
    adapter.load_state_dict(state)
    return adapter.eval().requires_grad_(False), meta
