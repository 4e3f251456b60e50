"""Atomic file writes whose results have the permissions a plain ``open()`` would give.

``tempfile.mkstemp``/``mkdtemp`` create 0600 files and 0700 folders; renamed into place, an
adapter would then be unreadable to the other users of a shared ComfyUI while the logs and plots
beside it follow the umask. Creating the temporary names with ``O_EXCL`` and the default modes
lets the kernel apply the umask as it does for every other output.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

_TRIES = 100
_TOKEN_BYTES = 6  # the random part of a temporary name: twice as many hex digits


def _fresh_name(parent: Path, prefix: str, suffix: str) -> Path:
    return parent / f"{prefix}{secrets.token_hex(_TOKEN_BYTES)}{suffix}"


def create_temp_file(parent: Path, prefix: str, suffix: str = "") -> Path:
    """An empty new file ``parent/<prefix><random><suffix>``, mode ``0o666 & ~umask``."""
    for _ in range(_TRIES):
        path = _fresh_name(parent, prefix, suffix)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {parent} after {_TRIES} tries")


def create_temp_dir(parent: Path, prefix: str) -> Path:
    """A new empty folder ``parent/<prefix><random>``, mode ``0o777 & ~umask``."""
    for _ in range(_TRIES):
        path = _fresh_name(parent, prefix, "")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {parent} after {_TRIES} tries")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success fsync it and rename it onto ``path``.

    A crash or kill mid-write leaves the previous file intact, never a truncated one; on an
    exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_temp_file(path.parent, f".{path.name}.", suffix)
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        os.chmod(tmp, mode)  # some writers (safetensors' save_file) recreate the file as 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def stale_temp_files(path: str | os.PathLike, suffix: str = ".tmp") -> list[Path]:
    """The temporary files :func:`atomic_path` left beside ``path`` (``.<name>.<random hex><suffix>``) when its
    writer was killed before the rename: only names of that exact pattern, only in ``path``'s folder."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}{re.escape(suffix)}")
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file())
