"""``scripts/gpu_check.sh`` rehearsed on the CPU (``--device cpu --quick``), as the session lent a GPU will run it on
the device (issue 30): every part runs and reports a figure, and the repository's docs are left alone.

A session has one prepared run and one rerun on the device; a part that breaks there (as ``bench.gpu_report edit``
did once, its arguments drifted from ``bench.edit_memory``'s) costs the GPU figure it was to measure. The figures of
a rehearsal say nothing about a GPU; the test checks that each one is there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = [
    "ContextDiffKSampler / core KSampler, time",
    "inversion + edit / plain sampling, time",
    "inversion + edit / plain sampling, peak memory",
    "shapes trainer, steps/s (batches made ahead)",
    "shapes data alone, batches/s",
]


def table(page: str) -> dict[str, str]:
    """The report's figure -> measured column."""
    rows = [line.split("|")[1:3] for line in page.splitlines() if line.startswith("| ") and line.count("|") == 4]
    return {name.strip(): value.strip() for name, value in rows}


@pytest.mark.slow
def test_the_gpu_check_rehearses_on_the_cpu_and_reports_every_figure(comfy_inprocess, tmp_path):
    docs = [ROOT / "docs" / "gpu.md", ROOT / "docs" / "benchmarks.md", *sorted((ROOT / "docs" / "bench").glob("*"))]
    before = {p: p.read_bytes() for p in docs if p.is_file()}
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, COMFYUI_DIR=str(comfy_inprocess))
    env.pop("CONTEXTDIFF_BENCH_DOCS", None)
    command = ["bash", "scripts/gpu_check.sh", "--device", "cpu", "--quick", "--tests", "tests/core/test_flow.py"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    page = (tmp_path / "docs" / "gpu.md").read_text()
    figures = table(page)
    assert "rehearsal on the CPU" in page
    assert re.fullmatch(r"\d+ passed in [\d.]+s", figures["host tests on this device"]), page
    for name in FIGURES:
        float(figures[name])  # a number, not "not measured": that part ran and left its result
    assert "## Failures\n\nnone\n" in page, page
    for log in ("pytest.log", "sampler_overhead.log", "edit.log", "train_throughput.log", "steps.log"):
        assert (tmp_path / "gpu-logs" / log).is_file(), log
    assert {p: p.read_bytes() for p in docs if p.is_file()} == before  # a rehearsal writes under $OUT only
