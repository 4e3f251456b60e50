"""Finding ComfyUI for the trainer: ``COMFYUI_DIR``, the pack's place in ``custom_nodes/``, or the
host that ``scripts/bootstrap.sh`` unpacked into ``.cache/comfyui``."""

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
    path = find_comfyui()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    return path
