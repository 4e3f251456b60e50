"""Issue 21.4: no function on the edit path takes more than 8 parameters (settings travel as typed objects,
``EditSettings``, ``InversionSettings``, ``VideoSettings``, built once from a node's inputs).

Read from the source (``ast``): ``self``/``cls`` are not counted, ``*args`` and ``**kwargs`` count one each, nested
functions count too. A node's ``execute`` collects its widgets as ``**widgets`` and builds its settings from them.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EDIT_PATH = [
    "nodes/editing.py",
    "nodes/edit_runs.py",
    "nodes/edit_graph.py",
    "nodes/model_identity.py",
    "nodes/prompt_tokens.py",
    "nodes/video_edit.py",
    "nodes/video_runs.py",
    "contextdiff/editing.py",
    "contextdiff/edit_plan.py",
    "contextdiff/inversion.py",
]
MAX_PARAMETERS = 8


def parameter_counts(source: str) -> dict[str, int]:
    """``name:line -> parameters`` of every function in ``source`` (methods without ``self``/``cls``)."""
    counts = {}

    def visit(node: ast.AST, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                n = (
                    len(a.posonlyargs)
                    + len(a.args)
                    + len(a.kwonlyargs)
                    + (a.vararg is not None)
                    + (a.kwarg is not None)
                )
                static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in child.decorator_list)
                counts[f"{child.name}:{child.lineno}"] = n - (in_class and not static and n > 0)
                visit(child, False)
            else:
                visit(child, isinstance(child, ast.ClassDef))

    visit(ast.parse(source), False)
    return counts


def test_counting_rule():
    counts = parameter_counts(
        "def f(a, b=1, *c, d, **e): pass\nclass K:\n    def m(self, x): pass\n    @staticmethod\n"
        "    def s(x, y): pass\n    @classmethod\n    def c(cls, **kw):\n        def inner(p, q, r): pass\n"
    )
    assert counts == {"f:1": 5, "m:3": 1, "s:5": 2, "c:7": 1, "inner:8": 3}, counts


@pytest.mark.parametrize("path", EDIT_PATH)
def test_edit_path_functions_take_at_most_eight_parameters(path):
    wide = {name: n for name, n in parameter_counts((ROOT / path).read_text()).items() if n > MAX_PARAMETERS}
    assert not wide, f"{path}: functions with more than {MAX_PARAMETERS} parameters: {wide}"
