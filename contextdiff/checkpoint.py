"""ContextDiff's checkpoint files: the registry of formats, and one way to write, identify and validate them.

Every file is a ``.safetensors`` whose header metadata (all strings, as safetensors requires) starts with
``format`` and ``format_version`` and ends with ``training`` (JSON of the trainer's config) and
``producer`` (what wrote the file); :func:`metadata` writes those, each format adds its own keys.
Reading runs the same checks for every format, in this order, before anything is allocated: the content
is a safetensors file (pickles are refused: loading one runs code), the name ends in ``.safetensors``,
the format is the one the loader reads (otherwise the message names the node that reads it) at this
pack's version, the architecture metadata is bounded, and the header's tensor table matches the
architecture (names, shapes, float dtypes, byte ranges inside the file). Reading the tensors then
refuses NaN, infinity and weights beyond fp16's range. What each format's modules are is decided where
they are built: ``adapter_io.py`` (adapters) and ``hostside/joint_checkpoints.py`` (the joint models).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .atomic_file import atomic_path
from .errors import PackError

PathLike = str | os.PathLike
PRODUCER = f"contextdiff-comfyui {__version__}"
# safetensors refuses headers over 100 MB itself; ours are a few kB.
MAX_HEADER_BYTES = 100 * 2**20
# Bytes per element of the floating-point dtypes a checkpoint may store (safetensors' names).
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
# Largest weight accepted: the models run under fp16/bf16 autocast on GPUs, and fp16 ends at 65504.
MAX_WEIGHT = 65504.0


class CheckpointError(PackError):
    """A checkpoint file that cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Format:
    """One kind of checkpoint: its ``format`` metadata, version, what it is, and the node that loads it."""

    key: str
    version: int  # bump for any change to the keys or the tensors
    what: str  # completes "<file> is ..."
    loader: str  # display name of the node that loads it
    make: str  # how to get one


ADAPTER = Format(
    "contextdiff-adapter",
    1,
    "a ContextDiff adapter",
    "Load ContextDiff Adapter",
    "pick an adapter trained with python -m trainer.train",
)
JOINT = Format(
    "contextdiff-joint",
    1,
    "a ContextDiff class-conditional joint checkpoint",
    "Load ContextDiff Joint Model",
    "train one with python -m trainer.train --mode joint",
)
TEXT_JOINT = Format(
    "contextdiff-text-joint",
    1,
    "a ContextDiff text-conditioned joint checkpoint",
    "Load ContextDiff Shapes Model",
    "train one with python -m trainer.train --config trainer/configs/shapes.yaml",
)
FORMATS = {f.key: f for f in (ADAPTER, JOINT, TEXT_JOINT)}


def metadata(fmt: Format, training: dict | None, producer: str = PRODUCER, **fields: str) -> dict[str, str]:
    """The header metadata of a ``fmt`` file: format and version, the format's own ``fields``, the training
    configuration and the producer."""
    return {
        "format": fmt.key,
        "format_version": str(fmt.version),
        **fields,
        "training": json.dumps(training or {}, sort_keys=True, default=str),
        "producer": producer,
    }


def atomic_save_file(tensors: Mapping[str, torch.Tensor], path: PathLike, metadata: dict | None = None) -> Path:
    """``safetensors.save_file`` to a temporary file beside ``path``, fsync, then rename.

    A crash or kill mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    with atomic_path(path) as tmp:  # the file gets the umask's mode, like the trainer's other outputs
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def save_modules(path: PathLike, parts: Mapping[str, torch.nn.Module], meta: dict[str, str]) -> Path:
    """One file with each module's state under its prefix (``unet.``, ``adapter.``, ...; ``""``: no prefix)."""
    tensors = {_key(prefix, k): v for prefix, module in parts.items() for k, v in module.state_dict().items()}
    return atomic_save_file(tensors, path, meta)


def expected_shapes(parts: Mapping[str, torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the modules a file should hold, under their prefixes (build them on the meta
    device: nothing is allocated)."""
    return {_key(prefix, k): tuple(v.shape) for prefix, module in parts.items() for k, v in module.state_dict().items()}


def sniff(head: bytes, size: int) -> str:
    """What a file is, from its first 9 bytes and its size: ``safetensors``, ``pickle``, ``zip`` or ``unknown``.

    safetensors: a little-endian u64 header length that fits the file, then ``{``. This is tested
    first: the length's low byte is 0x80 for 1 in 32 headers, and 'PK' for some. A pickle of
    protocol 2-5 (old ``torch.save``) starts with 0x80, the protocol and an opcode (never 0x00,
    which every plausible header length has there); a zip (``torch.save`` since torch 1.6) with
    ``PK\\x03\\x04``.
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


def read_header(path: PathLike) -> dict:
    """The safetensors JSON header of ``path``; pickles, zips and other files are refused by what they are."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise CheckpointError(f"{name} does not exist; put ContextDiff adapters and models in models/contextdiff/.")
    corrupt = CheckpointError(f"{name} has a corrupt safetensors header; re-download or re-export it.")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(9)
        kind = sniff(head, size)
        if kind in ("pickle", "zip"):
            raise CheckpointError(
                f"{name} is a pickle/torch.save file, which is refused because loading it can run code; "
                "convert it to .safetensors with the trainer or save_adapter()."
            )
        if len(head) < 9:
            raise CheckpointError(f"{name} is empty or truncated; re-download or re-export it.")
        if kind != "safetensors":
            if head[8:9] == b"{" or struct.unpack("<Q", head[:8])[0] > size - 8:
                raise CheckpointError(
                    f"{name} is not a safetensors file (bad header length); re-export it as .safetensors."
                )
            raise corrupt
        (n,) = struct.unpack("<Q", head[:8])
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise corrupt from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(header, dict) or not isinstance(meta or {}, dict):
        raise corrupt
    if any(not isinstance(v, str) for v in (meta or {}).values()):  # safetensors metadata is str -> str
        raise corrupt
    return header


def identify(path: PathLike) -> tuple[Format | None, dict]:
    """``(registered format or None, metadata)`` of a safetensors file, from its header alone."""
    meta = dict(read_header(path).get("__metadata__") or {})
    return FORMATS.get(meta.get("format")), meta


def check_format(name: str, meta: dict, want: Format) -> None:
    """Refuse a file of another format (naming the node that loads it) or of another version of ``want``."""
    key = meta.get("format")
    if key != want.key:
        got = FORMATS.get(key)
        if got is None:
            raise CheckpointError(
                f"{name} is a safetensors file but not {want.what} (metadata format={key!r}); {want.make}."
            )
        recipe = f" (recipe {meta['recipe']})" if meta.get("recipe") else ""
        raise CheckpointError(
            f"{name} is {got.what}{recipe}, which {want.loader} does not read: load it with {got.loader}."
        )
    if meta.get("format_version") != str(want.version):  # written as str(int) by metadata(), compared as written
        raise CheckpointError(
            f"{name} has {want.key} format version {meta.get('format_version')}, this pack reads version "
            f"{want.version}; update the node pack or re-export the file."
        )


def check_limits(name: str, what: str, config: Mapping[str, Any], limits: Mapping[str, tuple[int, int]]) -> None:
    """Each named integer (or list of 1 to 16 integers) of ``config`` within its inclusive limits; absent keys
    and ``None`` are left to the builder's defaults. Run before a module is built, even on the meta device."""
    for key, (low, high) in limits.items():
        if config.get(key) is None:
            continue
        value = config[key]
        items = value if isinstance(value, list) and 1 <= len(value) <= 16 else [value]
        if not all(type(v) is int and low <= v <= high for v in items):
            raise CheckpointError(
                f"{name} has invalid {what} metadata ({key}={value!r} must be integers in {low}..{high}); "
                "re-export the checkpoint."
            )


@dataclass
class Checkpoint:
    """An opened checkpoint file of a known format: its header, checked, and metadata; no tensor read yet."""

    path: Path
    format: Format
    header: dict
    meta: dict

    @property
    def name(self) -> str:
        return self.path.name

    def error(self, problem: str) -> CheckpointError:
        """``<file> <problem>; re-export the checkpoint.``"""
        return CheckpointError(f"{self.name} {problem}; re-export the checkpoint.")

    def json(self, key: str, default: str | None = None) -> Any:
        """The JSON value of metadata ``key`` (``default`` when absent), or the error that names the key."""
        try:
            raw = self.meta[key] if default is None else self.meta.get(key, default)
            return json.loads(raw)
        except (KeyError, TypeError, ValueError, RecursionError) as e:
            raise self.error(f"has invalid {key} metadata ({type(e).__name__}: {e})") from None

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int:
        """Metadata ``key`` as an integer in ``low..high`` (``default`` when absent), or the error naming it."""
        raw = self.meta.get(key, None if default is None else str(default))
        if not (isinstance(raw, str) and raw.isdigit() and low <= int(raw) <= high):
            raise self.error(f"has invalid {key} metadata ({raw!r} must be an integer in {low}..{high})")
        return int(raw)

    def check_table(self, expected: Mapping[str, tuple[int, ...]]) -> None:
        """The header's tensor table against the architecture's shapes and the bytes the file holds.

        Run before any tensor is read: after it, loading allocates no more than the file's own size.
        """
        name, data_bytes = self.name, _data_bytes(self.path)
        table = {k: v for k, v in self.header.items() if k != "__metadata__"}
        missing, extra = sorted(set(expected) - set(table)), sorted(set(table) - set(expected))
        if missing or extra:
            raise self.error(
                f"does not match its own architecture metadata (missing {missing[:3]}, unexpected {extra[:3]})"
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
                raise CheckpointError(
                    f"{name} is corrupt (tensor {key} has no valid shape or offsets); re-download or re-export it."
                )
            dtype = entry.get("dtype")
            if dtype not in FLOAT_DTYPES:
                raise CheckpointError(
                    f"{name}: tensor {key} has dtype {dtype}, where weights are floating-point; the file is "
                    "damaged, re-export the checkpoint."
                )
            if tuple(shape) != expected[key]:
                raise CheckpointError(
                    f"{name}: tensor {key} has shape {tuple(shape)}, the architecture needs {expected[key]}; "
                    "re-export the checkpoint."
                )
            start, end = offsets
            if not 0 <= start <= end <= data_bytes or end - start != math.prod(shape) * FLOAT_DTYPES[dtype]:
                raise CheckpointError(
                    f"{name} is corrupt (tensor {key}'s data does not fit the file); re-download or re-export it."
                )

    def load_into(self, parts: Mapping[str, torch.nn.Module], device: str | torch.device = "cpu") -> None:
        """Fill each module from its prefix, every tensor checked: finite and within fp16's range.

        Call :meth:`check_table` with the same modules' shapes first. A module built on the meta device gets
        the loaded tensors as its parameters (no second copy); any other is copied into. One module's
        tensors are in memory at a time.
        """
        try:
            with safe_open(str(self.path), framework="pt", device=str(device)) as f:
                for prefix, module in parts.items():
                    own = module.state_dict()
                    state = {k: self._checked(f.get_tensor(_key(prefix, k)), _key(prefix, k)) for k in own}
                    state = {k: v.to(own[k].dtype) for k, v in state.items()}
                    meta = any(t.is_meta for t in own.values())
                    module.load_state_dict(state, assign=meta)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{self.name} is corrupt ({e}); re-download or re-export it.") from None
        except RuntimeError as e:  # the file changed since its table was checked
            raise CheckpointError(
                f"{self.name} changed while it was read ({str(e).splitlines()[0]}); run again."
            ) from None

    def _checked(self, value: torch.Tensor, key: str) -> torch.Tensor:
        if not value.is_floating_point():
            raise CheckpointError(f"{self.name} changed while it was read; run again.")
        if not torch.isfinite(value).all():
            raise CheckpointError(
                f"{self.name}: tensor {key} contains NaN or infinity; the training run diverged, "
                "use an earlier checkpoint."
            )
        peak = value.abs().max().item() if value.numel() else 0.0
        if peak > MAX_WEIGHT:
            raise CheckpointError(
                f"{self.name}: tensor {key} holds values up to {peak:.3g}, where {self.format.what}'s weights "
                f"stay below {MAX_WEIGHT:g}; the training run diverged or the file is damaged: use an earlier "
                "checkpoint."
            )
        return value


def open_checkpoint(path: PathLike, want: Format) -> Checkpoint:
    """Open ``path`` as a ``want`` file: safetensors content, ``.safetensors`` name, format and version checked."""
    path = Path(path)
    header = read_header(path)  # the content first: a pickle is refused whatever its name
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(
            f"{path.name}: ContextDiff checkpoints must be .safetensors files (got '{path.suffix}'); rename it."
        )
    meta = dict(header.get("__metadata__") or {})
    check_format(path.name, meta, want)
    return Checkpoint(path, want, header, meta)


def content_hash(path: PathLike) -> str:
    """sha256 of the file's bytes: a cache key that follows the content, whatever its size and mtime say."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _data_bytes(path: Path) -> int:
    """Size of the tensor data after a safetensors header (which :func:`read_header` validated)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return os.fstat(f.fileno()).st_size - 8 - n
