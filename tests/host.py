"""Where the ComfyUI host is, and how to import it in-process (CPU only)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(ROOT / "scripts"))
from comfy_host import comfyui_dir  # noqa: E402


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
