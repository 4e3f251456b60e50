"""The benchmarks that time something into docs/ refuse to run on a busy machine (issue 33): at a load average above
the core count their figures measure the other jobs, and even the ratios measured side by side turn over."""

from __future__ import annotations

import importlib
import os
import sys

import pytest

from bench import report

# every benchmark that writes times into docs/, with the arguments it needs to get as far as its check
TIMED = {
    "bench.sampler_overhead": [],
    "bench.train_step": [],
    "bench.edit_memory": [],
    "bench.shapes_train": [],
    "bench.bias_variant_cost": [],
    "bench.gpu_protocol": ["--checkpoint", "none.safetensors", "--clip-weights", "none.bin"],
}


@pytest.fixture
def busy(monkeypatch):
    cores = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 0.5, 1.0, 1.0))
    monkeypatch.setattr(report, "DOCS", report.REPO_DOCS)  # as without CONTEXTDIFF_BENCH_DOCS
    return cores


def test_the_guard_refuses_docs_at_a_load_above_the_cores_and_records_it_otherwise(busy, monkeypatch, tmp_path):
    with pytest.raises(SystemExit) as refused:
        report.quiet_machine()
    assert refused.value.code not in (0, None)
    assert f"load average is {busy + 0.5:.2f} on {busy} cores" in str(refused.value.code)
    with pytest.raises(SystemExit):
        report.quiet_machine(report.REPO_DOCS / "bench" / "shapes_train.json")
    # another folder (a rehearsal, CONTEXTDIFF_BENCH_DOCS or --out) is measured, with its load
    assert report.quiet_machine(tmp_path / "x.json") == {"load_before": busy + 0.5, "cores": busy}
    monkeypatch.setattr(report, "DOCS", tmp_path)
    assert report.quiet_machine()["load_before"] == busy + 0.5
    monkeypatch.setattr(os, "getloadavg", lambda: (busy - 0.1, 9.0, 9.0))  # the last minute's load decides
    monkeypatch.setattr(report, "DOCS", report.REPO_DOCS)
    assert report.quiet_machine() == {"load_before": round(busy - 0.1, 2), "cores": busy}
    assert report.load_after({"a": 1})["load_after"] == round(busy - 0.1, 2)


@pytest.mark.parametrize("name", sorted(TIMED))
def test_every_timed_benchmark_refuses_before_measuring(busy, monkeypatch, name):
    """Each exits non-zero at its start, before it builds a model or writes anything."""
    module = importlib.import_module(name)
    written = []
    monkeypatch.setattr(report, "_write", lambda *a: written.append(a))
    monkeypatch.setattr(sys, "argv", [name, *TIMED[name]])
    before = set(sys.modules)
    with pytest.raises(SystemExit) as refused:
        module.main()  # the arguments from sys.argv, as from the command line
    assert refused.value.code not in (0, None) and "load average" in str(refused.value.code)
    assert not written and "comfy.model_management" not in set(sys.modules) - before
