"""``python -m bench``: run every benchmark under bench/ and rewrite docs/benchmarks.md, stamped with
the machine, the versions and the date. Each script also runs alone (``python -m bench.<name>``), from the
repository root like every development tool (see ``devkit``).

GPU-only figures (the paper's Table 2 protocol with real Stable Diffusion weights) are in
``bench/gpu_protocol.md``: they need weights and a GPU that this repository's CI does not have.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["sampler_overhead", "flow_overhead", "train_step", "edit_memory", "family_store"]
# Run only when named: trains seven small models (docs/quality.md); its options follow the name,
# e.g. ``python -m bench quality --quick``.
ON_REQUEST = ["quality"]


def stamp() -> str:
    import torch

    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, {platform.processor() or 'unknown CPU'}, "
        f"{__import__('os').cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA {'available: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not used'}",
    ]
    return "\n".join(lines)


def restamp() -> None:
    """Put the machine, versions and date at the top of docs/benchmarks.md."""
    page = HERE.parent / "docs" / "benchmarks.md"
    text = page.read_text()
    head, sep, rest = text.partition("\n<!--")
    head = head.split("\n\n## Run")[0]
    page.write_text(f"{head}\n\n## Run\n\n{stamp()}\n{sep}{rest}" if sep else text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "names",
        nargs="*",
        default=BENCHMARKS,
        help=f"subset of {BENCHMARKS + ON_REQUEST} (default: all but {ON_REQUEST}); options after "
        "the names go to each benchmark script",
    )
    args, options = ap.parse_known_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS + ON_REQUEST]
    if unknown:
        ap.error(f"unknown benchmark {unknown}: choose from {BENCHMARKS + ON_REQUEST}")
    failed = []
    for name in args.names:
        print(f"[bench] {name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}", *options], cwd=HERE.parent).returncode:
            failed.append(name)
    if set(args.names) & set(BENCHMARKS):  # quality stamps its own page
        restamp()
    if failed:
        print(f"[bench] failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
