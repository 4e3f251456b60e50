"""Benchmark results into docs/: one JSON per benchmark and a marked section of docs/benchmarks.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def write_section(name: str, result: dict, markdown: str) -> None:
    (DOCS / "bench").mkdir(parents=True, exist_ok=True)
    (DOCS / "bench" / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    page = DOCS / "benchmarks.md"
    text = (
        page.read_text()
        if page.exists()
        else "# Benchmarks\n\nEach section is rewritten by its script under `bench/`.\n"
    )
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    page.write_text(text)
