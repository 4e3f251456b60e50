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
    "bench.gpu_report": ["edit"],
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


def test_the_throughput_section_states_its_loads_and_flags_a_busy_measurement():
    from bench import trainer_throughput

    rates = {f"train_steps_per_s_batches_{name}": 2.0 for name in trainer_throughput.PIPELINES}
    row = {
        "batch_size": 16,
        "image_size": 32,
        "threads": 2,
        "cores": 2,
        "steps_per_run": 20,
        "repeats": 3,
        "load_before": 1.1,
        "load_after": 1.9,
        "data_batches_per_s": 10.0,
        "data_over_train": 5.0,
        "ahead_over_in_step": 1.0,
        "ahead_all_threads_over_in_step": 0.5,
        "auto_makes_batches_ahead": False,
        **rates,
    }
    result = {"recipe": "trainer/configs/shapes.yaml", "gpu": None, "devices": {"cpu": row}}
    quiet = trainer_throughput.render(result)
    assert "load average: cpu 1.1 before, 1.9 after, on 2 cores." in quiet and "above the core count (" not in quiet
    assert "| ahead with default threads / the loop making each batch | 0.50x | not measured |" in quiet
    busy = trainer_throughput.render({**result, "devices": {"cpu": {**row, "load_before": 9.5}}})
    assert "Measured at a load above the core count (cpu)" in busy and "quiet re-run is pending" in busy


def test_a_ratio_measured_above_the_core_count_carries_its_load():
    per_device = {"devices": {"cpu": {"load_before": 5.14, "cores": 2}, "cuda": {"load_before": 0.3, "cores": 16}}}
    assert report.busy_mark(per_device, "cpu") == " (load 5.14)" and report.busy_mark(per_device, "cuda") == ""
    assert report.busy_mark({"load_before": 1.5, "cores": 2}, "cpu") == ""
    assert report.busy_mark({"median_ratio": 1.02}, "cpu") == ""  # records from before the guard: no load known
