"""Seconds per training step of the shapes recipe (trainer/configs/shapes.yaml) on this CPU, and of variants.

A shared machine inflates wall-clock times, so each step is timed twice: the CPU time of a one-thread
step (the least of several repeats: waiting for a core is not CPU time, and the least is the run with the
least interference), and the wall time with the threads the trainer uses. The first is what sizes the
recipe; the second is what a run takes on this machine right now, and the load average says how busy it was.

    python -m bench.shapes_train [--variants] [--repeats 5]

Writes docs/bench/shapes_train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from bench.report import load_after, quiet_machine
from devkit import ROOT, comfyui

# name -> options changed from the recipe
VARIANTS = {
    "recipe": {},
    "attention from 16x16": {"attention_from_level": 1},
    "batch 32": {"batch_size": 32},
    "unet 64 channels": {"unet_channels": 64},
    "2 res blocks": {"unet_res_blocks": 2},
    "adapter 256x4 (paper depth)": {"adapter_dim": 256, "adapter_depth": 4},
    "no bias (use_bias false)": {"use_bias": "false"},
}


def step_times(cfg, repeats: int, threads: int) -> tuple[float, float]:
    """(least CPU seconds, median wall seconds) of one optimisation step of ``cfg``'s task."""
    import torch

    from trainer.loop import step_generator
    from trainer.shapes_mode import ShapesTask

    torch.set_num_threads(threads)
    task = ShapesTask(cfg, torch.device("cpu"))
    params = [p for m in task.trainable.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    cpu, wall = [], []
    for step in range(repeats + 1):
        c0, w0 = time.process_time(), time.perf_counter()
        loss = task(step_generator(cfg.seed, step, 0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:  # the first step allocates and warms caches
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    return min(cpu), statistics.median(wall)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", action="store_true", help="also time the variants (one option changed each)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "shapes_train.json"))
    args = ap.parse_args(argv)
    loads = quiet_machine(Path(args.out))
    comfyui()
    from trainer.config import load_config

    threads = os.cpu_count() or 1
    rows = []
    for name, change in VARIANTS.items() if args.variants else [("recipe", {})]:
        argv_cfg = ["--config", str(ROOT / "trainer" / "configs" / "shapes.yaml"), "--device", "cpu"]
        for key, value in change.items():
            argv_cfg += [f"--{key}", str(value)]
        cfg = load_config(argv_cfg)
        load_before = os.getloadavg()[0]
        cpu1, _ = step_times(cfg, args.repeats, threads=1)
        _, wall = step_times(cfg, args.repeats, threads=threads)
        row = {
            "variant": name,
            "change": change,
            "batch_size": cfg.batch_size,
            "cpu_s_per_step_1_thread": round(cpu1, 3),
            f"wall_s_per_step_{threads}_threads": round(wall, 3),
            "load_average": round((load_before + os.getloadavg()[0]) / 2, 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "cpu_count": threads,
                "recipe_steps": load_config(["--config", str(ROOT / "trainer" / "configs" / "shapes.yaml")]).steps,
                "rows": rows,
                **load_after(loads),
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
