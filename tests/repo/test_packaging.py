"""The pack is installable: Comfy Registry metadata, the requirements files and the imports agree.

pyproject.toml declares the dependencies once; requirements*.txt are written from it by
scripts/sync_requirements.py for ComfyUI-Manager and ``pip install -r``.
"""

import ast
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What the pack ships: ComfyUI loads __init__.py (and nodes/), users run python -m trainer.train and the
# README's analysis CLIs (CLIP metrics of a video, ...); with them every package of this repository they
# import (shipped_files follows the imports). bench/, scripts/ and tests/ are development tools.
ENTRY_POINTS = ["__init__.py", "nodes", "trainer", "analysis"]
# Modules the ComfyUI host brings (its own tree, and torch with what torch requires).
HOST_MODULES = {
    "comfy",
    "comfy_api",
    "comfy_execution",
    "comfy_extras",
    "folder_paths",
    "latent_preview",
    "node_helpers",
    "scipy",  # in ComfyUI's requirements.txt (the shapes judge uses its connected components)
    "torch",
    "torchvision",
    "typing_extensions",
}
FIRST_PARTY = {d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file()}


def requirement_set(lines: list[str]) -> dict[str, str]:
    """Canonical distribution name -> specifier of each requirement line (comments and blanks skipped)."""
    reqs = [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]
    out = {canonicalize_name(r.name): str(r.specifier) for r in reqs}
    assert len(out) == len(reqs), f"a dependency is declared twice in {lines}"
    return out


def file_requirements(name: str) -> dict[str, str]:
    return requirement_set((ROOT / name).read_text().splitlines())


def top_level_imports(path: Path) -> set[str]:
    """The top-level names ``path`` imports; relative imports resolved against the repository root."""
    inside = path.is_relative_to(ROOT)
    package = list(path.relative_to(ROOT).parts[:-1]) if inside else []
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (inside or not node.level):
            base = package[: len(package) - node.level + 1] if node.level else []
            parts = base + (node.module.split(".") if node.module else [a.name for a in node.names][:1])
            tops.add(parts[0])
    return tops


def shipped_files() -> list[Path]:
    """The entry points' files and those of every first-party package they import, transitively."""
    todo, seen = list(ENTRY_POINTS), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        target = ROOT / name
        for f in [target] if target.is_file() else target.rglob("*.py"):
            todo += sorted(top_level_imports(f) & FIRST_PARTY)
    return sorted(f for name in seen for f in ([ROOT / name] if name.endswith(".py") else (ROOT / name).rglob("*.py")))


def third_party_imports(files: list[Path]) -> dict[str, set[str]]:
    """Top-level module imported -> files importing it, outside the standard library and this repository."""
    found: dict[str, set[str]] = {}
    for f in files:
        where = str(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f)
        for top in top_level_imports(f) - FIRST_PARTY:
            if top not in sys.stdlib_module_names:
                found.setdefault(top, set()).add(where)
    return found


def distribution_of(module: str) -> str | None:
    dists = packages_distributions().get(module)
    return canonicalize_name(dists[0]) if dists else None


def test_pyproject_is_registry_ready():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,98}", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert (ROOT / project["license"]["file"]).is_file()
    assert project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    version = re.fullmatch(r">=\s*(\d+)\.(\d+)\.(\d+)", comfy["requires-comfyui"])
    assert version and tuple(map(int, version.groups())) >= (0, 3, 75)


def comfy_node_validate(folder: Path, home: Path) -> str:
    """The output of ``comfy node validate`` (comfy-cli, a development dependency) run in ``folder``, offline and
    without telemetry; it exits 0 even when it warns, so the caller reads the output."""
    if importlib.util.find_spec("comfy_cli") is None:
        pytest.fail("comfy-cli is a development dependency: pip install -r requirements-dev.txt")
    command = [sys.executable, "-m", "comfy_cli", "--skip-prompt", "--no-enable-telemetry", "node", "validate"]
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"))
    run = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def test_the_registry_validation_passes(tmp_path):
    """The Comfy Registry's check before publishing: pyproject.toml's fields parse without a warning, and ruff's
    security rules (exec, eval, several statements on one line) find nothing in the repository."""
    out = comfy_node_validate(ROOT, tmp_path)
    assert "All validation checks passed" in out and "Warning" not in out and "Security warnings" not in out, out


def test_the_registry_validation_sees_bad_metadata_and_eval(tmp_path):
    """What the check above relies on: comfy-cli reports a malformed version range and an eval, exiting 0."""
    pack = tmp_path / "pack"
    pack.mkdir()
    text = (ROOT / "pyproject.toml").read_text()
    (pack / "pyproject.toml").write_text(re.sub(r'requires-comfyui = ".*"', 'requires-comfyui = ">=0.3"', text))
    (pack / "bad.py").write_text('x = eval("1")\n')
    out = comfy_node_validate(pack, tmp_path)
    assert "Warning: Invalid requires-comfyui" in out and "Security warnings" in out and "S307" in out, out


def test_version_is_single_sourced():
    import contextdiff

    assert contextdiff.__version__ == PYPROJECT["project"]["version"]


@pytest.mark.parametrize(
    "filename, declared",
    [
        ("requirements.txt", PYPROJECT["project"]["dependencies"]),
        ("requirements-dev.txt", PYPROJECT["project"]["optional-dependencies"]["dev"]),
    ],
)
def test_requirements_files_agree_with_pyproject(filename, declared):
    assert file_requirements(filename) == requirement_set(declared), (
        f"{filename} and pyproject.toml disagree: edit pyproject.toml, then run python scripts/sync_requirements.py"
    )


def test_dev_tools_do_not_repeat_runtime_dependencies():
    runtime = requirement_set(PYPROJECT["project"]["dependencies"])
    dev = requirement_set(PYPROJECT["project"]["optional-dependencies"]["dev"])
    assert not runtime.keys() & dev.keys()


def test_sync_script_reports_a_stale_requirements_file(tmp_path):
    """The generator's output parses back to pyproject's lists, and it sees a difference."""
    from scripts.sync_requirements import rendered

    texts = rendered()
    assert requirement_set(texts["requirements.txt"].splitlines()) == file_requirements("requirements.txt")
    changed = tmp_path / "pyproject.toml"
    changed.write_text((ROOT / "pyproject.toml").read_text().replace('"tqdm>=4.66"', '"tqdm>=9"'))
    assert rendered(changed)["requirements.txt"] != texts["requirements.txt"]


def test_every_shipped_import_is_declared():
    """A module the pack imports is a runtime dependency, or the ComfyUI host brings it."""
    runtime = set(requirement_set(PYPROJECT["project"]["dependencies"]))
    undeclared = {}
    for module, files in third_party_imports(shipped_files()).items():
        if module in HOST_MODULES:
            continue
        dist = distribution_of(module)
        if dist is None or dist not in runtime:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"


def test_import_scan_sees_an_undeclared_module(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("import os\nimport hypothesis.strategies\nfrom .sibling import x\nfrom contextdiff import bias\n")
    found = third_party_imports([source])
    assert set(found) == {"hypothesis"}
    # Relative imports resolve against the repository root: the pack's __init__.py reaches nodes/.
    assert "nodes" in top_level_imports(ROOT / "__init__.py")
    assert any(f.parts[-2:] == ("nodes", "samplers.py") for f in shipped_files())
    assert distribution_of("hypothesis") not in set(requirement_set(PYPROJECT["project"]["dependencies"]))


def test_the_pack_imports_none_of_the_research_tooling():
    """devkit/, bench/, scripts/ and tests/ are development tools: nothing the pack runs imports them."""
    tooling = {"devkit", "bench", "scripts", "tests"}
    reached = sorted(str(f.relative_to(ROOT)) for f in shipped_files() if f.relative_to(ROOT).parts[0] in tooling)
    assert not reached, f"the pack's imports reach development tools: {reached}"
    assert "devkit" in FIRST_PARTY and "devkit" in top_level_imports(ROOT / "bench" / "sampler_overhead.py")


def test_every_runtime_dependency_is_used():
    """A declared dependency that nothing imports only costs users an install."""
    imported = {distribution_of(m) for m in third_party_imports(shipped_files())}
    unused = set(requirement_set(PYPROJECT["project"]["dependencies"])) - imported
    assert not unused, f"declared in pyproject.toml but never imported by the pack: {sorted(unused)}"
