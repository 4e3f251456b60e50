"""Adapter files: ``.safetensors`` with the architecture and provenance in the header metadata.

Metadata keys (all strings, as safetensors requires): ``format`` (``contextdiff-adapter``),
``format_version``, ``config`` (JSON of :class:`AdapterConfig`), ``latent_channels``,
``context_dim``, ``base_model`` (``sd15``, ``sd2``, ``sdxl``, ``joint``, ...), ``training``
(JSON of the trainer's config) and ``producer`` (what wrote the file). Pickles are refused:
loading one runs arbitrary code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .adapter import AdapterConfig, ContextAdapter
from .atomic_file import atomic_path
from .errors import PackError

FORMAT = "contextdiff-adapter"
FORMAT_VERSION = 1
PRODUCER = f"contextdiff-comfyui {__version__}"
# safetensors refuses headers over 100 MB itself; an adapter's is a few kB.
MAX_HEADER_BYTES = 100 * 2**20
# Bytes per element of the floating-point dtypes an adapter may store (safetensors' names).
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
# Largest weight accepted: the adapter runs under fp16/bf16 autocast on GPUs, and fp16 ends at 65504.
MAX_WEIGHT = 65504.0


class AdapterFileError(PackError):
    """An adapter file that cannot be used; the message says what is wrong and what to do."""


def atomic_save_file(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """``safetensors.save_file`` to a temporary file beside ``path``, fsync, then rename.

    A crash or kill mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    with atomic_path(path) as tmp:  # the file gets the umask's mode, like the trainer's other outputs
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def save_adapter(
    adapter: ContextAdapter,
    path: str | os.PathLike,
    base_model: str,
    training: dict | None = None,
    producer: str = PRODUCER,
) -> Path:
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


def sniff(head: bytes, size: int) -> str:
    """What a file is, from its first 9 bytes and its size: ``safetensors``, ``pickle``, ``zip`` or ``unknown``.

    safetensors: a little-endian u64 header length that fits the file, then ``{``. This is tested
    first: the length's low byte is 0x80 for 1 in 32 headers, and 'PK' for some. A pickle of
    protocol 2-5 (old ``torch.save``) starts with 0x80, the protocol and an opcode (never 0x00,
    which every plausible header length has there); a zip (``torch.save`` since torch 1.6) with
    ``PK\x03\x04``.
    """
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= min(size - 8, MAX_HEADER_BYTES) and head[8:9] == b"{":
            return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2] != 0:
        return "pickle"
    return "unknown"


def read_header(path: str | os.PathLike) -> dict:
    """The safetensors JSON header of ``path``; pickles, zips and other files are refused by what they are."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise AdapterFileError(f"Adapter file {name} does not exist; put adapters in models/contextdiff/.")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(9)
        kind = sniff(head, size)
        if kind in ("pickle", "zip"):
            raise AdapterFileError(
                f"{name} is a pickle/torch.save file, which is refused because loading it can run code; "
                "convert it to .safetensors with the trainer or save_adapter()."
            )
        if len(head) < 9:
            raise AdapterFileError(f"{name} is empty or truncated; re-download or re-export the adapter.")
        if kind != "safetensors":
            if head[8:9] == b"{" or struct.unpack("<Q", head[:8])[0] > size - 8:
                raise AdapterFileError(
                    f"{name} is not a safetensors file (bad header length); re-export it as .safetensors."
                )
            raise AdapterFileError(f"{name} has a corrupt safetensors header; re-download or re-export it.")
        (n,) = struct.unpack("<Q", head[:8])
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise AdapterFileError(f"{name} has a corrupt safetensors header; re-download or re-export it.") from None
    if not isinstance(header, dict):
        raise AdapterFileError(f"{name} has a corrupt safetensors header; re-download or re-export it.")
    return header


def _parse_metadata(header: dict, path: Path) -> dict:
    """The adapter metadata of a header, validated: format, version and a bounded architecture."""
    if path.suffix.lower() != ".safetensors":
        raise AdapterFileError(f"{path.name}: adapters must be .safetensors files (got '{path.suffix}'); rename it.")
    meta = header.get("__metadata__") or {}
    name = path.name
    if not isinstance(meta, dict):
        raise AdapterFileError(f"{name} has a corrupt safetensors header; re-download or re-export it.")
    meta = dict(meta)
    if meta.get("format") != FORMAT:
        raise AdapterFileError(
            f"{name} is a safetensors file but not a ContextDiff adapter "
            f"(metadata format={meta.get('format')!r}); pick an adapter trained with trainer.train."
        )
    try:
        version = int(meta.get("format_version", "?"))
    except (ValueError, TypeError):
        version = -1
    if version != FORMAT_VERSION:
        raise AdapterFileError(
            f"{name} has adapter format version {meta.get('format_version')}, this pack reads "
            f"version {FORMAT_VERSION}; update the node pack or re-export the adapter."
        )
    try:
        meta["config"] = AdapterConfig.from_dict(json.loads(meta["config"]))
        meta["training"] = json.loads(meta.get("training", "{}"))
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise AdapterFileError(f"{name} has invalid adapter metadata ({e}); re-export the adapter.") from None
    return meta


def read_metadata(path: str | os.PathLike) -> dict:
    """Validated metadata of an adapter file, without loading its tensors."""
    path = Path(path)
    return _parse_metadata(read_header(path), path)  # sniffs the content first: a pickle is refused whatever its name


def expected_shapes(cfg: AdapterConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of an adapter with ``cfg``, built on the meta device: nothing is allocated."""
    with torch.device("meta"):
        module = ContextAdapter(cfg)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_tensor_table(
    path: str | os.PathLike, header: dict, expected: dict[str, tuple[int, ...]], prefix: str = ""
) -> None:
    """The header's tensor table against the architecture's shapes and the bytes the file holds.

    Run before any tensor is read: after it, loading allocates no more than the file's own size.
    ``prefix`` selects one part of a file holding several modules (``"adapter."`` in a joint checkpoint).
    """
    path = Path(path)
    name, data_bytes = path.name, _data_bytes(path)
    table = {k[len(prefix) :]: v for k, v in header.items() if k != "__metadata__" and k.startswith(prefix)}
    missing, extra = sorted(set(expected) - set(table)), sorted(set(table) - set(expected))
    if missing or extra:
        raise AdapterFileError(
            f"{name} does not match its own architecture metadata "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); re-export the adapter."
        )
    for key in sorted(table):
        entry = table[key]
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(shape, list)
            and all(type(d) is int and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
        ):
            raise AdapterFileError(
                f"{name} is corrupt (tensor {key} has no valid shape or offsets); re-download or re-export it."
            )
        dtype = entry.get("dtype")
        if dtype not in FLOAT_DTYPES:
            raise AdapterFileError(
                f"{name}: tensor {key} has dtype {dtype}, adapters store floating-point "
                "weights; the file is damaged or not an adapter, re-export it."
            )
        if tuple(shape) != expected[key]:
            raise AdapterFileError(
                f"{name}: tensor {key} has shape {tuple(shape)}, the architecture "
                f"needs {expected[key]}; re-export the adapter."
            )
        start, end = offsets
        if not 0 <= start <= end <= data_bytes or end - start != math.prod(shape) * FLOAT_DTYPES[dtype]:
            raise AdapterFileError(
                f"{name} is corrupt (tensor {key}'s data does not fit the file); re-download or re-export it."
            )


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes: a cache key that follows the content, whatever its size and mtime say."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _data_bytes(path: Path) -> int:
    """Size of the tensor data after a safetensors header (which :func:`read_header` validated)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return os.fstat(f.fileno()).st_size - 8 - n


def load_adapter(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[ContextAdapter, dict]:
    """Load and validate an adapter file; returns ``(adapter in eval mode, metadata)``.

    Every check that needs no tensor (format, bounded hyper-parameters, the tensor table against
    the declared architecture) runs before anything is read or allocated.
    """
    path = Path(path)
    name = path.name
    header = read_header(path)
    meta = _parse_metadata(header, path)
    check_tensor_table(path, header, expected_shapes(meta["config"]))
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterFileError(f"{name} is corrupt ({e}); re-download or re-export it.") from None
    expected = expected_shapes(meta["config"])
    if set(state) != set(expected):  # the file changed since its header was checked
        raise AdapterFileError(f"{name} changed while it was read; run again.")
    for key, value in state.items():
        if not value.is_floating_point() or tuple(value.shape) != expected[key]:
            raise AdapterFileError(f"{name} changed while it was read; run again.")
        if not torch.isfinite(value).all():
            raise AdapterFileError(
                f"{name}: tensor {key} contains NaN or infinity; the training run diverged, use an earlier checkpoint."
            )
        peak = value.abs().max().item() if value.numel() else 0.0
        if peak > MAX_WEIGHT:
            raise AdapterFileError(
                f"{name}: tensor {key} holds values up to {peak:.3g}, where an adapter's weights "
                f"stay below {MAX_WEIGHT:g}; the training run diverged or the file is damaged: "
                "use an earlier checkpoint."
            )
    with torch.device("meta"):
        adapter = ContextAdapter(meta["config"], source=f"ContextDiff adapter '{name}'")
    # assign: the loaded tensors become the parameters (no second copy, no random initialisation).
    adapter.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return adapter.eval().requires_grad_(False), meta
