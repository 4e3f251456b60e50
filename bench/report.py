"""Benchmark results into docs/: one JSON per benchmark and a marked section of docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

REPO_DOCS = Path(__file__).resolve().parents[1] / "docs"
# CONTEXTDIFF_BENCH_DOCS sends results elsewhere (a rehearsal of scripts/gpu_check.sh must not overwrite docs/).
DOCS = Path(os.environ.get("CONTEXTDIFF_BENCH_DOCS") or REPO_DOCS)


def quiet_machine(out: Path | None = None) -> dict:
    """The load average at a timing benchmark's start, ``{"load_before": ..., "cores": ...}``. When its results go
    into the repository's docs/ (``out``, else :data:`DOCS`) and the load exceeds the core count, it exits non-zero
    and says why: its times would measure the other jobs, and not even their ratios hold there (a second OpenMP team
    made the shapes trainer 2x slower on 2 quiet cores and 3.6x faster at load 16.5, issue 33). Run it on a quiet
    machine, or give CONTEXTDIFF_BENCH_DOCS (or ``--out``) another folder."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    dest = Path(out if out is not None else DOCS).resolve()
    if load > cores and dest.is_relative_to(REPO_DOCS):
        sys.exit(
            f"[bench] not measured: the load average is {load:.2f} on {cores} cores; figures for {dest} must be "
            "measured on a quiet machine (load at most the core count). Wait for the other jobs, or write elsewhere "
            "with CONTEXTDIFF_BENCH_DOCS=<folder> (or --out where the benchmark has it)."
        )
    return {"load_before": round(load, 2), "cores": cores}


def load_after(record: dict) -> dict:
    """``record`` with the load average at the end of the measurement beside the one at its start."""
    return {**record, "load_after": round(os.getloadavg()[0], 2)}


# Every ratio the benchmarks report, for the side-by-side table: (what, benchmark, key, target).
RATIOS = [
    ("ContextDiffKSampler / core KSampler, time", "sampler_overhead", "median_ratio", "<= 1.03 (goal 1.01)"),
    (
        "one adapter call / one CFG UNet call",
        "sampler_overhead",
        "component_overhead_pct",
        "a percentage (the paper: +1.5%)",
    ),
    ("inversion + edit / plain sampling, time", "edit_memory", "time_ratio", "<= 1.6 on CUDA, <= 2.3 on CPU"),
    ("inversion + edit / plain sampling, peak memory", "edit_memory", "peak_ratio", "<= 1.1 on CUDA, <= 1.25 on CPU"),
    ("training step with adapter / without, time", "train_step", "time_ratio", ""),
    ("training step with adapter / without, peak memory", "train_step", "memory_ratio", ""),
    # One file for both devices: its ``devices`` holds a record per device.
    (
        "shapes trainer: data alone / training step rate",
        "train_throughput",
        "devices/{device}/data_over_train",
        ">= 10",
    ),
    (
        "shapes trainer: batches made ahead / in the step, steps/s",
        "train_throughput",
        "devices/{device}/ahead_over_in_step",
        "",
    ),
]


def sd15_shape() -> dict:
    """``build_sd15`` options of the benchmarks' UNet: SD1.5's real shape; ``CONTEXTDIFF_BENCH_SMALL=1`` gives a
    64-channel one, for rehearsing ``scripts/gpu_check.sh`` on a CPU (its figures then say nothing)."""
    return {"model_channels": 64} if os.environ.get("CONTEXTDIFF_BENCH_SMALL") == "1" else {"full_size": True}


def device_name(result: dict) -> str:
    """``cuda`` for a result measured on a CUDA device, else ``cpu``."""
    return "cuda" if str(result.get("device", "cpu")).startswith("cuda") else "cpu"


def ratio_value(result: dict, key: str, device: str = "cpu") -> float | None:
    if "/" in key:  # a path into the record, per device
        node = result
        for part in key.format(device=device).split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        return None if node is None else float(node)
    if key in result:
        return float(result[key])
    derived = {"time_ratio": "time_overhead_pct", "memory_ratio": "memory_overhead_pct"}.get(key)
    return 1 + float(result[derived]) / 100 if derived in result else None


def busy_mark(record: dict, device: str) -> str:
    """`` (load X)`` for a record measured at a load average above the core count (its own or its device's), else
    nothing: such a figure measures the other jobs too (:func:`quiet_machine`)."""
    row = record.get("devices", {}).get(device, record)
    load, cores = row.get("load_before"), row.get("cores")
    return f" (load {load})" if load is not None and cores and load > cores else ""


def ratio_table() -> str:
    """Every ratio, CPU beside CUDA, from the results in docs/bench (``<name>.json``, ``<name>_cuda.json``)."""
    rows = ["| ratio | CPU | CUDA | target |", "|---|---|---|---|"]
    for what, name, key, target in RATIOS:
        cells = []
        for suffix, dev in (("", "cpu"), ("_cuda", "cuda")):
            path = DOCS / "bench" / (f"{name}.json" if "/" in key else f"{name}{suffix}.json")
            record = json.loads(path.read_text()) if path.exists() else {}
            value = ratio_value(record, key, dev) if record else None
            cells.append("not measured" if value is None else f"{value:.3g}{busy_mark(record, dev)}")
        rows.append(f"| {what} (`{name}`) | {cells[0]} | {cells[1]} | {target} |")
    return (
        "## Every ratio, CPU and CUDA\n\nEach benchmark writes its CPU result as `docs/bench/<name>.json` and its CUDA "
        "result as `<name>_cuda.json` (its own section below); `scripts/gpu_check.sh` runs them on a GPU. "
        "'not measured' means no run on that device yet; nothing here is estimated.\n\n" + "\n".join(rows)
    )


def write_section(name: str, result: dict, markdown: str) -> None:
    """Write ``result`` and its section; a CUDA result gets its own (``<name>_cuda``), beside the CPU one."""
    if device_name(result) == "cuda":
        name, markdown = f"{name}_cuda", markdown.replace("## ", "## CUDA: ", 1)
    _write(name, result, markdown)
    _write_block("ratios", ratio_table())


def _write(name: str, result: dict, markdown: str) -> None:
    (DOCS / "bench").mkdir(parents=True, exist_ok=True)
    (DOCS / "bench" / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    _write_block(name, markdown)


def _write_block(name: str, markdown: str) -> None:
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
