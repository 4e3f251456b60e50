"""What the checkpoint loader nodes share: a file of ``models/contextdiff/`` picked by name, the display name
the checkpoint registry gives the node that reads its format, and a cache key that follows the file's content."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..contextdiff.checkpoint import Format, content_hash
from .paths import FOLDER

LOADERS = "loaders/contextdiff"  # the menu of every loader node (PackNode category)


def file_input(name: str, tooltip: str) -> io.Combo.Input:
    """A file in models/contextdiff/, listed when the node's definition is read."""
    return io.Combo.Input(name, options=folder_paths.get_filename_list(FOLDER), tooltip=tooltip)


def file_fingerprint(name: str) -> str:
    """The content decides: a file rewritten with the same size and mtime (even in place) still reloads."""
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        return name
    try:
        return content_hash(path)
    except OSError:
        return name  # vanished or unreadable: execute() names the problem


def file_path(name: str, fmt: Format) -> str:
    """The full path of ``name``, or the sentence saying it is not there."""
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"'{name}' is not in models/contextdiff/; copy {fmt.what} there and refresh the page.")
    return path
