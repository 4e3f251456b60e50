"""The repository stands alone: its pointers to design notes resolve, and docs/notation.md names live code.

docs/notation.md maps each paper symbol to a code name and a file. Files move and names change; this
fails when a row names a file that is gone or a name its files no longer contain.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTATION = ROOT / "docs" / "notation.md"
SOURCES = [
    "__init__.py",
    "README.md",
    "analysis",
    "bench",
    "contextdiff",
    "docs",
    "hostside",
    "media",
    "nodes",
    "scripts",
    "shapesworld",
    "trainer",
    "tests",
]
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?:\(\))?")


def text_files() -> list[Path]:
    out = []
    for name in SOURCES:
        path = ROOT / name
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out += [f for f in sorted(path.rglob("*")) if f.suffix in {".py", ".md", ".sh", ".yaml"}]
    return out


def table_rows(markdown: str) -> list[list[str]]:
    """Cells of every table body row (header and separator rows left out); ``\\|`` is a pipe inside a cell."""
    rows, previous = [], ""
    for line in markdown.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|?", line):
            if previous.startswith("|"):  # a header row is the first row of its table
                rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
        previous = line if line.startswith("|") else ""
    return rows


def stale_entries(markdown: str, root: Path = ROOT) -> list[str]:
    """Rows whose file column names a missing file, or whose code names appear in none of the row's files.

    Columns: paper symbol | code name(s) | file(s); names and files in backticks. A code name is
    checked by its last dotted part, as a whole word.
    """
    problems = []
    for cells in table_rows(markdown):
        if len(cells) < 3:
            continue
        files = [root / f for f in re.findall(r"`([^`]+)`", cells[2])]
        if not files:
            continue
        missing = [str(f.relative_to(root)) for f in files if not f.is_file()]
        if missing:
            problems.append(f"{cells[0]}: no file {missing}")
            continue
        text = "\n".join(f.read_text() for f in files)
        for name in re.findall(r"`([^`]+)`", cells[1]):
            if not IDENTIFIER.fullmatch(name):
                continue  # a formula or an expression, not a name
            word = name.removesuffix("()").split(".")[-1]
            if not re.search(rf"\b{re.escape(word)}\b", text):
                problems.append(f"{cells[0]}: `{name}` is not in {[str(f.relative_to(root)) for f in files]}")
    return problems


def test_no_pointer_to_a_design_file_outside_the_repository():
    offenders = [str(f.relative_to(ROOT)) for f in text_files() if f != Path(__file__) and "DESIGN.md" in f.read_text()]
    assert not offenders, f"these point to a DESIGN.md that is not in the repository (use docs/design.md): {offenders}"


def test_every_docs_file_named_in_the_code_exists():
    named = {m for f in text_files() for m in re.findall(r"\bdocs/[\w./-]+\.md\b", f.read_text())}
    assert {"docs/design.md", "docs/notation.md"} <= named
    assert not [n for n in named if not (ROOT / n).is_file()]


def test_notation_table_names_live_code():
    markdown = NOTATION.read_text()
    rows = [r for r in table_rows(markdown) if len(r) >= 3 and "`" in r[2]]
    assert len(rows) >= 25, "docs/notation.md should map every symbol the code uses"
    assert not stale_entries(markdown)
    # The prose ("Where do I change ...") names files too.
    paths = set(re.findall(r"`([\w./-]+\.(?:py|md))`", markdown))
    assert paths and not [p for p in paths if not (ROOT / p).is_file()]


def test_stale_notation_rows_are_caught(tmp_path):
    (tmp_path / "m.py").write_text("def k_coefficient(abar):\n    return abar\n")
    markdown = """
| symbol | code | file |
|---|---|---|
| k_t | `k_coefficient()`, `sqrt(abar)` | `m.py` |
| b_t | `ContextBias` | `m.py` |
| r_phi | `ContextAdapter` | `gone.py` |
"""
    assert stale_entries(markdown, tmp_path) == [
        "b_t: `ContextBias` is not in ['m.py']",
        "r_phi: no file ['gone.py']",
    ]
