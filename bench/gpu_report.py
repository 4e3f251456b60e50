"""The report of one ``scripts/gpu_check.sh`` run: ``docs/gpu.md`` (device, torch, each figure, every failure).

Two parts, both called by the script:

- ``python -m bench.gpu_report edit --size 512 --steps 20``: inversion + edit against plain sampling, each in a
  fresh process, alternated (``bench.edit_memory``'s measurement, without its store-size part, whose full-map
  store at 512x512 alone needs about 54 GB); writes ``docs/bench/edit_memory_<device>.json``.
- ``python -m bench.gpu_report write LOGDIR``: reads what the run left (the pytest log, the benchmarks' JSON)
  and writes the page. A figure that is missing is written "not measured", never estimated.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
from pathlib import Path

from bench import report


def edit(args: argparse.Namespace) -> None:
    from bench import edit_memory

    loads = report.quiet_machine()
    timing = edit_memory.peak_and_time(args)
    result = {k: v for k, v in timing.items() if k != "runs"} | {"size": args.size, "steps": args.steps}
    result |= report.load_after(loads)
    name = "edit_memory_cuda" if report.device_name(result) == "cuda" else "edit_memory_rehearsal"
    (report.DOCS / "bench").mkdir(parents=True, exist_ok=True)
    (report.DOCS / "bench" / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "time_ratio", "peak_ratio")}))


def _load(name: str) -> dict | None:
    path = report.DOCS / "bench" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value, spec: str = ".3g") -> str:
    return "not measured" if value is None else format(value, spec)


def pytest_summary(log: Path) -> tuple[str, list[str]]:
    """The final counts line and the FAILED/ERROR lines of a pytest log ("not run" when there is none). A run
    stopped at its time limit (SIGINT: pytest still prints its counts) says so."""
    if not log.exists():
        return "not run", []
    text = log.read_text(errors="replace")
    counts = [line for line in text.splitlines() if re.search(r"\b(passed|failed|error)", line) and " in " in line]
    failures = [line[:300] for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))]
    summary = counts[-1].strip("= ") if counts else "no summary"
    if "KeyboardInterrupt" in text:
        summary += " (stopped at its time limit: the tests after these did not run)"
    return summary, failures


def write(logdir: Path, device: str) -> Path:
    import torch

    cuda = device == "cuda" and torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else f"none (rehearsal on the CPU: {platform.machine()})"
    suffix = "_cuda" if cuda else ""
    overhead = _load(f"sampler_overhead{suffix}")
    edit_result = _load("edit_memory_cuda" if cuda else "edit_memory_rehearsal")
    throughput = _load("train_throughput")
    counts, failures = pytest_summary(logdir / "pytest.log")
    steps = (throughput or {}).get("devices", {}).get("cuda" if cuda else "cpu", {})
    lines = [
        "# CUDA check (`scripts/gpu_check.sh`)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- device: {gpu}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        f"| host tests on this device | {counts} | 0 failures |",
        f"| ContextDiffKSampler / core KSampler, time | {_fmt(overhead and overhead.get('median_ratio'))} | <= 1.03 |",
        f"| inversion + edit / plain sampling, time | {_fmt(edit_result and edit_result.get('time_ratio'))} | <= 1.6 |",
        f"| inversion + edit / plain sampling, peak memory | {_fmt(edit_result and edit_result.get('peak_ratio'))} "
        "| <= 1.1 |",
        f"| shapes trainer, steps/s (batches made ahead) | {_fmt(steps.get('train_steps_per_s_batches_ahead'))} "
        "| >= 4x the CPU's |",
        f"| shapes data alone, batches/s | {_fmt(steps.get('data_batches_per_s'))} | >= 10x the step rate |",
        "",
        "## Failures",
        "",
        *([f"- `{f}`" for f in failures] or ["none"]),
        "",
        f"Logs of the run: `{logdir.name}/` in the check's output (pytest.log, one log per benchmark).",
    ]
    page = report.DOCS / "gpu.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def main() -> None:
    from bench import edit_memory

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    e = sub.add_parser("edit", help="inversion + edit against plain sampling, alternated, fresh processes")
    edit_memory.add_run_arguments(e, size=512, steps=20, frames=1)
    w = sub.add_parser("write", help="write docs/gpu.md from a run's logs")
    w.add_argument("logdir", type=Path)
    w.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.part == "edit":
        edit(args)
    else:
        print(write(args.logdir, args.device))


if __name__ == "__main__":
    main()
