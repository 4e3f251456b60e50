"""The method (``contextdiff/``) imports nothing from ComfyUI at run time, nor anything of the layers above it.

``contextdiff/`` is the paper in plain PyTorch; what builds, reads or calls ComfyUI objects lives in
``hostside/`` (shared by ``nodes/`` and ``trainer/``). Imports under ``if TYPE_CHECKING:`` are for
annotations only and never run. Read from the source (``ast``): nothing is imported.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# ComfyUI's top-level modules a pack could import, and this repository's layers above the method.
COMFYUI = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "latent_preview", "node_helpers"}
ABOVE = {"nodes", "hostside", "trainer", "bench", "analysis", "scripts", "tests"}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def run_time_imports(source: str, package_depth: int = 1) -> list[tuple[int, str]]:
    """``(line, top-level name)`` of each import that runs, skipping ``if TYPE_CHECKING:`` blocks.

    A relative import that climbs out of the package (``from ..nodes import x`` in a module
    ``package_depth`` folders deep) names the sibling it reaches.
    """
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.append((node.lineno, node.module.split(".")[0]))
            elif node.level > package_depth:
                names = node.module.split(".")[:1] if node.module else [a.name for a in node.names]
                found.extend((node.lineno, n) for n in names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def forbidden_imports(folder: str) -> list[str]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        depth = len(path.relative_to(ROOT).parts) - 1
        for line, name in run_time_imports(path.read_text(), depth):
            if name in COMFYUI | ABOVE:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return out


def test_scan_sees_run_time_imports_only():
    source = """
import torch
import comfy.model_management
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from comfy.sd import CLIP
else:
    import folder_paths
def build():
    from comfy_api.latest import io
    from ..nodes import types
    from .adapter import ContextAdapter
    from .. import hostside
"""
    assert run_time_imports(source) == [
        (2, "torch"),
        (3, "comfy"),
        (4, "typing"),
        (8, "folder_paths"),
        (10, "comfy_api"),
        (11, "nodes"),
        (13, "hostside"),
    ]


def test_method_imports_no_comfyui_and_nothing_above_it():
    assert forbidden_imports("contextdiff") == []


def test_host_side_reaches_the_method_through_one_module():
    """ComfyUI imports ``hostside`` as ``<pack>.hostside``, the trainer as ``hostside``: only ``method.py``
    decides how ``contextdiff/`` is reached, so no other module can import the method under a second name."""
    found = []
    for path in sorted((ROOT / "hostside").glob("*.py")):
        if path.name != "method.py":
            found += [
                f"{path.name}:{line}" for line, name in run_time_imports(path.read_text()) if name == "contextdiff"
            ]
    assert found == []
    # method.py itself: the pack-relative import (ComfyUI) and the top-level one (trainer, tools), nothing else.
    assert [name for _, name in run_time_imports((ROOT / "hostside" / "method.py").read_text())] == ["contextdiff"] * 2
