"""Every public function of ``contextdiff/``, ``hostside/`` and ``nodes/`` has type hints on its parameters and
its return.

Public: a module-level function, or a method of a module-level class, whose name does not start with ``_``;
``__init__`` and ``__call__`` count too (``__init__`` needs no return hint). Nested functions are private.
Read from the source (``ast``), so nothing is imported and ComfyUI is not needed. Enforced together with
ruff by scripts/test.sh; ``CONTEXTDIFF_LINT=0`` (for work in progress) turns both off.
"""

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ["contextdiff", "hostside", "nodes"]
PUBLIC_DUNDERS = {"__init__", "__call__"}


def _missing_in(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    args = fn.args
    positional = args.posonlyargs + args.args
    is_static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if method and not is_static:
        positional = positional[1:]  # self / cls
    params = positional + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a is not None]
    missing = [a.arg for a in params if a.annotation is None]
    if fn.returns is None and fn.name != "__init__":
        missing.append("return")
    return missing


def missing_hints(source: str, where: str) -> list[str]:
    """``where:line name(what is missing)`` for each public function of ``source`` that lacks a hint."""
    found = []

    def visit(fn: ast.FunctionDef | ast.AsyncFunctionDef, owner: str | None) -> None:
        name = fn.name
        if name.startswith("_") and name not in (PUBLIC_DUNDERS if owner else set()):
            return
        missing = _missing_in(fn, method=owner is not None)
        if missing:
            qual = f"{owner}.{name}" if owner else name
            found.append(f"{where}:{fn.lineno} {qual}({', '.join(missing)})")

    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            visit(node, None)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    visit(item, node.name)
    return found


def missing_in_package() -> list[str]:
    out = []
    for folder in CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name.startswith("_") and path.name != "__init__.py":
                continue
            out += missing_hints(path.read_text(), str(path.relative_to(ROOT)))
    return out


def test_checker_finds_what_is_missing():
    source = """
def typed(x: int, *, y: float = 1.0) -> int: ...
def no_return(x: int): ...
def no_arg(x, y: int) -> None: ...
def _private(x): ...
async def entry(): ...
class Node:
    def __init__(self, n: int): ...
    def __call__(self, x) -> int: ...
    @classmethod
    def execute(cls, model, **kwargs) -> str: ...
    @staticmethod
    def helper(v) -> int: ...
    def _hidden(self, z): ...
    def __repr__(self): ...
class _Private:
    def run(self, x): ...
"""
    assert missing_hints(source, "m.py") == [
        "m.py:3 no_return(return)",
        "m.py:4 no_arg(x)",
        "m.py:6 entry(return)",
        "m.py:9 Node.__call__(x)",
        "m.py:11 Node.execute(model, kwargs)",
        "m.py:13 Node.helper(v)",
    ]


def test_public_functions_have_type_hints():
    missing = missing_in_package()
    if missing and os.environ.get("CONTEXTDIFF_LINT", "1") == "0":
        pytest.skip(f"{len(missing)} public functions in {CHECKED} lack type hints (CONTEXTDIFF_LINT=0)")
    assert not missing, "public functions without type hints:\n" + "\n".join(missing)
