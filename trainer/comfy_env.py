"""Finding ComfyUI for the trainer: ``COMFYUI_DIR``, the pack's place in ``custom_nodes/``, or the
host that ``scripts/bootstrap.sh`` unpacked into ``.cache/comfyui``.

This is the one module of the repository that edits the import path (``sys.path``): the shipped trainer
runs outside ComfyUI and needs it, and the development tools reach ComfyUI through here too
(``devkit.comfyui``). ComfyUI goes first, because the pack's folder (the current directory of
``python -m trainer.train``) holds a ``nodes/`` package that would otherwise shadow ComfyUI's ``nodes.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_comfyui() -> Path:
    candidates = []
    if os.environ.get("COMFYUI_DIR"):
        candidates.append(Path(os.environ["COMFYUI_DIR"]))
    if ROOT.parent.name == "custom_nodes":
        candidates.append(ROOT.parent.parent)
    candidates.append(ROOT / ".cache" / "comfyui")
    for c in candidates:
        if (c / "comfy" / "model_management.py").is_file():
            return c
    raise SystemExit(
        "ComfyUI not found: set COMFYUI_DIR to your ComfyUI folder, install this pack in its "
        "custom_nodes/, or run scripts/bootstrap.sh"
    )


def ensure_comfy_importable(cpu: bool) -> Path:
    """Put ComfyUI first on the import path (moved there if it was further back) and configure it before
    ``comfy.model_management`` loads: no command-line parsing, ``--cpu`` if ``cpu``."""
    path = find_comfyui()
    if sys.path[:1] != [str(path)]:
        sys.path[:] = [str(path)] + [p for p in sys.path if p != str(path)]
    loaded = sys.modules.get("nodes")
    if loaded is not None and Path(getattr(loaded, "__file__", None) or "").resolve() != (path / "nodes.py").resolve():
        raise RuntimeError(
            f"a module 'nodes' from {getattr(loaded, '__file__', None)} was imported before ComfyUI's nodes.py "
            f"({path}); set ComfyUI up first (trainer.comfy_env.ensure_comfy_importable or devkit.comfyui)."
        )
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    return path
