"""The development kit: how the research tooling (``tests/``, ``bench/``, ``scripts/``, ``analysis/``) finds
ComfyUI and imports the pack. It is not part of the shipped pack.

One way in:

- **Run from the repository root, as modules**: ``python -m bench sampler_overhead``,
  ``python -m bench.quality``, ``python -m scripts.demo``, ``python -m analysis.toy_a4``,
  ``python -m trainer.train``; pytest puts the root on the import path from ``pyproject.toml``
  (``pythonpath``). The root holds the pack's own packages under their top-level names (``contextdiff``,
  ``hostside``, ``media``, ``shapesworld``, ``trainer``) and the tools' (``devkit``, ``bench``, ``scripts``,
  ``analysis``). No tool edits the import path itself.
- **ComfyUI** is :func:`comfyui`: found and set up by ``trainer.comfy_env``, the shipped trainer's own
  finder and the one module that edits the import path. It goes first, so ``import nodes`` is ComfyUI's
  ``nodes.py``, never the pack's ``nodes/`` folder.
- **The node pack** (``__init__.py`` and ``nodes/``, whose modules import ``..contextdiff``) is
  :func:`import_pack`: the repository as the package ``contextdiff_pack``, the way ComfyUI imports a
  custom node folder. Its other packages are not loaded a second time: ``contextdiff_pack.contextdiff.bias``
  *is* ``contextdiff.bias`` (:class:`SharedPackages`), so a test that builds an object through
  ``contextdiff`` hands the nodes the very class they check against.
- **The tests' tiny models** (``tests/comfy_models.py``) are :func:`tiny_models` for the benchmarks, under
  the same module name pytest gives them.
- **A ComfyUI server** on loopback with the pack loaded: :mod:`devkit.comfy_host`.

``tests/repo/test_devkit.py`` holds the repository to this.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .device import on_cpu

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
PACK = "contextdiff_pack"
# The pack's folders that only exist inside the pack package: ``nodes`` (ComfyUI owns the top-level name).
PACK_ONLY = {"nodes"}


def shared_packages() -> set[str]:
    """The repository's packages that are importable both at the top level and inside the pack."""
    return {p.parent.name for p in ROOT.glob("*/__init__.py")} - PACK_ONLY


def comfyui(cpu: bool | None = None) -> Path:
    """ComfyUI importable in this process, first on the import path, on the CPU unless ``cpu=False``
    (``None`` keeps what an earlier call chose, else the suite's device: ``CONTEXTDIFF_DEVICE``, see
    :mod:`devkit.device`); returns its folder."""
    from trainer.comfy_env import ensure_comfy_importable

    if cpu is None:
        configured = sys.modules.get("comfy.cli_args")
        cpu = configured.args.cpu if configured else on_cpu()
    return ensure_comfy_importable(cpu=cpu)


class SharedPackages(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``contextdiff_pack.<package>.<module>`` (what the relative imports of ``nodes/`` ask for) resolves to
    the top-level ``<package>.<module>``: one module object, executed once, under its top-level name."""

    def __init__(self) -> None:
        self._own_specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname, path=None, target=None):
        pack, _, name = fullname.partition(".")
        if pack != PACK or name.split(".")[0] not in shared_packages():
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(spec.name.partition(".")[2])
        self._own_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # Already executed under its top-level name; importlib stamped this alias's spec on it: undo that.
        module.__spec__ = self._own_specs.pop(module.__spec__.name)


def import_pack() -> ModuleType:
    """The repository imported as the node pack package ``contextdiff_pack``, ComfyUI set up first (on the
    CPU unless :func:`comfyui` chose otherwise before)."""
    if PACK in sys.modules:
        return sys.modules[PACK]
    comfyui(cpu=None)
    if not any(isinstance(f, SharedPackages) for f in sys.meta_path):
        sys.meta_path.insert(0, SharedPackages())
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return module


def tiny_models() -> ModuleType:
    """``tests/comfy_models.py`` (random tiny ComfyUI models, no weights) for the benchmarks, as the module
    ``comfy_models``: the name pytest imports it under, so a process never holds two copies."""
    if "comfy_models" in sys.modules:
        return sys.modules["comfy_models"]
    comfyui(cpu=None)
    spec = importlib.util.spec_from_file_location("comfy_models", TESTS / "comfy_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfy_models"] = module
    spec.loader.exec_module(module)
    return module
