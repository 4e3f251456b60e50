"""The pack is installable: Comfy Registry metadata and requirements agree."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_is_registry_ready():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,98}", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert (ROOT / project["license"]["file"]).is_file()
    assert project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    version = re.fullmatch(r">=\s*(\d+)\.(\d+)\.(\d+)", comfy["requires-comfyui"])
    assert version and tuple(map(int, version.groups())) >= (0, 3, 75)
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert sorted(r for r in reqs if r) == sorted(project["dependencies"])


def test_version_is_single_sourced():
    import contextdiff
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert contextdiff.__version__ == data["project"]["version"]
