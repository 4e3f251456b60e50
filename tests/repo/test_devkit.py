"""One way in (devkit/): the import path is edited in one module outside tests/ and one inside; the pack is
loaded once, under one name; ComfyUI's ``nodes`` is never shadowed by the pack's ``nodes/``; every tool
module imports from the repository root."""

import ast
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".cache", ".git", "out", "runs", "__pycache__"}
TOOLS = ("bench", "scripts", "analysis")


def python_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if not SKIP & set(p.relative_to(ROOT).parts))


def edits_import_path(source: str) -> bool:
    """Code (not text) that reads or changes the import path or adds a site directory."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in {("sys", "path"), ("site", "addsitedir")}:
                return True
        if isinstance(node, ast.ImportFrom) and node.module in {"sys", "site"}:
            if {a.name for a in node.names} & {"path", "addsitedir"}:
                return True
    return False


def test_the_scan_sees_an_import_path_edit():
    assert edits_import_path("import sys\nsys.path.insert(0, 'x')\n")
    assert edits_import_path("from sys import path\npath.append('x')\n")
    assert edits_import_path("import site\nsite.addsitedir('x')\n")
    assert not edits_import_path('"""Put ComfyUI on sys.path."""\nimport sys\nsys.exit(0)\n')


def test_one_module_outside_tests_and_one_inside_edit_the_import_path():
    found = [p.relative_to(ROOT) for p in python_files() if edits_import_path(p.read_text())]
    inside = [str(p) for p in found if p.parts[0] == "tests"]
    outside = [str(p) for p in found if p.parts[0] != "tests"]
    assert len(outside) <= 1, (
        f"only trainer/comfy_env.py may edit the import path outside tests/ (see devkit): {outside}"
    )
    assert len(inside) <= 1, f"only the test node pack may edit the import path inside tests/: {inside}"


PROBE = r"""
import importlib, json, pkgutil, sys
import devkit  # found in the current directory, the repository root: first on the import path
comfy = devkit.comfyui()
import nodes
pack = devkit.import_pack()
for info in pkgutil.iter_modules([str(devkit.ROOT / "nodes")]):
    importlib.import_module(f"{pack.__name__}.nodes.{info.name}")
import contextdiff.editing
by_file = {}
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None) or ""
    if path.startswith(str(devkit.ROOT)) and not {".venv", ".cache"} & set(path.split("/")):
        by_file.setdefault(path, {}).setdefault(id(module), []).append(name)
print(json.dumps({
    "nodes": nodes.__file__,
    "comfy": str(comfy),
    "twice": {f: list(m.values()) for f, m in by_file.items() if len(m) > 1},
    "same_object": sys.modules[pack.__name__ + ".contextdiff.editing"] is contextdiff.editing,
    "name": contextdiff.editing.__spec__.name,
    "pack_modules": sorted(n for n in sys.modules if n.startswith(pack.__name__ + ".nodes.")),
}))
"""


@pytest.fixture(scope="module")
def probe():
    """A fresh interpreter with ComfyUI's folder already on the import path but behind the repository root
    (a profiling script's set-up that once imported the pack's ``nodes/`` as ComfyUI's ``nodes``)."""
    from trainer.comfy_env import find_comfyui

    env = dict(os.environ, PYTHONPATH=str(find_comfyui()))
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_nodes_after_the_devkit_is_comfyuis_nodes(probe):
    assert Path(probe["nodes"]).resolve() == (Path(probe["comfy"]) / "nodes.py").resolve()


def test_the_pack_is_loaded_once_under_one_name(probe):
    assert len(probe["pack_modules"]) >= 10, probe["pack_modules"]  # the nodes were imported
    assert probe["twice"] == {}, f"files loaded as two modules: {probe['twice']}"
    assert probe["same_object"] and probe["name"] == "contextdiff.editing"


def test_comfy_setup_refuses_after_a_foreign_nodes_module(monkeypatch):
    from trainer.comfy_env import ensure_comfy_importable

    fake = types.ModuleType("nodes")
    fake.__file__ = str(ROOT / "nodes" / "__init__.py")
    monkeypatch.setitem(sys.modules, "nodes", fake)
    with pytest.raises(RuntimeError, match="before ComfyUI's nodes.py"):
        ensure_comfy_importable(cpu=True)


def test_every_tool_module_imports_from_the_repository_root():
    """bench/, scripts/ and analysis/ run as ``python -m <package>.<name>`` from the root: each of their modules
    imports there without editing the import path (their work is behind ``if __name__ == "__main__"``)."""
    modules = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for tool in TOOLS
        for p in sorted((ROOT / tool).glob("*.py"))
        if p.name not in {"__init__.py", "__main__.py"}
    ]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    out = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
