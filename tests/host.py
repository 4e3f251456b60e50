"""Where the ComfyUI host is, and how to import it in-process (CPU only)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainer.comfy_env import ensure_comfy_importable  # noqa: E402


def import_comfy_cpu() -> Path:
    """Put ComfyUI on sys.path with ``--cpu`` set before ``comfy.model_management`` loads."""
    return ensure_comfy_importable(cpu=True)


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
