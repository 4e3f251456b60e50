"""Training cost of each bias variant of issue 20 against the paper's Eq. 6, per step, on this CPU.

The shapes recipe (trainer/configs/shapes.yaml) with each variant's options (analysis/bias_leak.py's
VARIANTS), built once each; then the variants take turns, one optimisation step each, ``--repeats``
rounds, so that a busy machine slows them alike. Each step is timed in CPU seconds on one thread
(waiting for a core is not CPU time); the least of the repeats is the step's cost. Issue 20 allows
a variant at most 1.5x Eq. 6.

    python -m bench.bias_variant_cost [--repeats 5]

Writes docs/bench/bias_variant_cost.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.report import load_after, quiet_machine
from devkit import ROOT

LIMIT = 1.5  # issue 20: at most 1.5x the paper's Eq. 6 per step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "bias_variant_cost.json")
    args = p.parse_args(argv)
    loads = quiet_machine(args.out)

    import torch

    from analysis.bias_leak import RECIPE, VARIANTS
    from trainer.comfy_env import ensure_comfy_importable
    from trainer.config import load_config
    from trainer.loop import step_generator

    ensure_comfy_importable(cpu=True)
    from trainer.shapes_mode import ShapesTask

    torch.set_num_threads(1)
    runs = {}
    for name, (_, options) in VARIANTS.items():
        cfg = load_config(["--config", str(RECIPE), "--device", "cpu", *options])
        task = ShapesTask(cfg, torch.device("cpu"))
        params = [q for m in task.trainable.values() for q in m.parameters() if q.requires_grad]
        runs[name] = (cfg, task, torch.optim.AdamW(params, lr=cfg.lr), [])
    for step in range(args.repeats + 1):
        for cfg, task, optimizer, times in runs.values():
            batch = task.make_batch(step_generator(cfg.seed, step, 0))  # the loop makes it ahead, off the step
            c0 = time.process_time()
            loss = task(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step:  # the first step allocates and warms caches
                times.append(time.process_time() - c0)
    base = min(runs["Eq. 6 (paper)"][3])
    rows = [
        {
            "variant": name,
            "options": VARIANTS[name][1],
            "cpu_s_per_step": round(min(times), 4),
            "ratio_to_eq6": round(min(times) / base, 3),
            "within_limit": min(times) / base <= LIMIT,
        }
        for name, (_, _, _, times) in runs.items()
    ]
    result = {"repeats": args.repeats, "threads": 1, "limit": LIMIT, **load_after(loads), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| variant | CPU s / step | vs Eq. 6 |\n|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['cpu_s_per_step']:.3f} | {r['ratio_to_eq6']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
