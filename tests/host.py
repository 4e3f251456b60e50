"""Where the ComfyUI host is, and how to import it in-process (CPU only)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def comfyui_dir() -> Path:
    path = Path(os.environ.get("COMFYUI_DIR", ROOT / ".cache" / "comfyui"))
    if not (path / "main.py").is_file():
        raise RuntimeError(f"No ComfyUI at {path}: run scripts/bootstrap.sh or set COMFYUI_DIR")
    return path


def import_comfy_cpu() -> Path:
    """Put ComfyUI on sys.path with ``--cpu`` set before ``comfy.model_management`` loads."""
    path = comfyui_dir()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    return path


def import_pack(name: str = "contextdiff_pack"):
    """Import the repository as the node pack package, the way ComfyUI imports a custom node folder."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    import_comfy_cpu()
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
