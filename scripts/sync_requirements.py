"""Write requirements.txt and requirements-dev.txt from pyproject.toml, the one place dependencies are declared.

ComfyUI-Manager and ``pip install -r`` read the requirements files; the Comfy Registry reads pyproject.toml.
Edit pyproject.toml, then run ``python scripts/sync_requirements.py`` (``--check`` only reports a difference);
tests/repo/test_packaging.py fails while the files disagree.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HEADERS = {
    "requirements.txt": "Runtime dependencies of the node pack and the trainer (ComfyUI brings torch itself).",
    "requirements-dev.txt": "Test, lint and benchmark tools (not needed by ComfyUI users).",
}


def rendered(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """The text each requirements file should have, from ``[project]`` of ``pyproject``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lists = {
        "requirements.txt": project["dependencies"],
        "requirements-dev.txt": project["optional-dependencies"]["dev"],
    }
    note = "# Generated from pyproject.toml by scripts/sync_requirements.py: edit pyproject.toml, not this file."
    return {name: "\n".join([f"# {HEADERS[name]}", note, *reqs]) + "\n" for name, reqs in lists.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report files that differ, write nothing")
    args = parser.parse_args(argv)
    stale = [name for name, text in rendered().items() if (ROOT / name).read_text() != text]
    if args.check:
        for name in stale:
            print(f"{name} differs from pyproject.toml: run python scripts/sync_requirements.py")
        return 1 if stale else 0
    for name in stale:
        (ROOT / name).write_text(rendered()[name])
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
