"""The ``models/contextdiff/`` folder, registered through ComfyUI's ``folder_paths``."""

from __future__ import annotations

import os

import folder_paths

FOLDER = "contextdiff"
# Pickle formats are listed too so that choosing one gives the clear refusal, not a silent omission.
EXTENSIONS = {".safetensors", ".pt", ".pth", ".ckpt", ".bin"}


def register_model_folder() -> None:
    """Add ``models/contextdiff`` without clobbering paths a user configured for the same key."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[FOLDER]
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | EXTENSIONS)
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], set(EXTENSIONS))
    os.makedirs(default, exist_ok=True)
