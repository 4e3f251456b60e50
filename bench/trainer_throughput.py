"""Throughput of the shapes trainer (trainer/configs/shapes.yaml): steps per second of the trainer's own
step (:meth:`trainer.loop.Run.step`) with each batch made by the loop as the step needs it (``--prefetch sync``),
with the batches made ahead on a thread (``--prefetch ahead``: :class:`trainer.batches.Prefetcher`, pinned on
CUDA, one intra-op thread), and on a thread with torch's default threads (the trainer before issue 33, whose second
OpenMP team made the CPU training 2x slower), alternated in one run; and batches per second of the data alone
(rendering, captions to cached token ids, timesteps and noise; no model). Per device: the CPU, and CUDA where
there is one ("not measured" otherwise, never estimated). The load average is recorded before and after; the
benchmark refuses to write into docs/ at a load above the core count (:func:`bench.report.quiet_machine`).

Run as part of ``python -m bench train_step`` (``--part shapes`` runs it alone); writes the
``train_throughput`` section of docs/benchmarks.md and docs/bench/train_throughput.json.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time

from devkit import ROOT

RECIPE = ROOT / "trainer" / "configs" / "shapes.yaml"
TARGET_DATA_RATIO = 10  # issue 19: the data alone at least 10x the training step rate (on CUDA)
# pipeline -> its label in docs/benchmarks.md
PIPELINES = {
    "in_step": "the loop makes each batch (`--prefetch sync`)",
    "ahead": "batches made ahead on a thread (`--prefetch ahead`)",
    "ahead_all_threads": "ahead, the thread with torch's default threads (before issue 33)",
}


def measure(device_name: str, steps: int, repeats: int) -> dict:
    """Median rates over ``repeats`` alternated runs of ``steps`` steps each, after a warm-up."""
    import torch

    from trainer.batches import Prefetcher, made_ahead, step_generator, synchronous
    from trainer.config import load_config
    from trainer.loop import Run
    from trainer.train import task_factory

    cuda = device_name.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(["--config", str(RECIPE), "--device", device_name, "--output_dir", out])
        run = Run(cfg, task_factory)
        task, seed = run.task, cfg.seed

        def data_rate(first: int) -> float:
            start = time.perf_counter()
            for step in range(first, first + steps):
                batch = task.make_batch(step_generator(seed, step, 0))
                if cuda:
                    batch.pin_memory()
            return steps / (time.perf_counter() - start)

        def batches(pipeline: str, span: range):
            if pipeline == "in_step":
                return contextlib.nullcontext(synchronous(task.make_batch, seed, 0, span))
            return Prefetcher(task.make_batch, seed, 0, span, pin=cuda, threads=1 if pipeline == "ahead" else None)

        def train_rate(first: int, pipeline: str) -> float:
            span = range(first, first + steps)
            start = time.perf_counter()
            with batches(pipeline, span) as pairs:
                for step, batch in pairs:
                    run.step(task, batch, step)
            sync()
            return steps / (time.perf_counter() - start)

        for step, batch in synchronous(task.make_batch, seed, 0, range(3)):  # warm-up: allocations, caches
            run.step(task, batch, step)
        rates = {name: [] for name in (*PIPELINES, "data")}
        load_before, first = os.getloadavg()[0], 3
        order = list(PIPELINES)
        for i in range(repeats):
            # alternated order: a drift of the machine's load hits every pipeline alike
            for pipeline in order if i % 2 == 0 else order[::-1]:
                rates[pipeline].append(train_rate(first, pipeline))
                first += steps
            rates["data"].append(data_rate(first))
            first += steps
        load_after = os.getloadavg()[0]
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "device": device_name,
        "batch_size": cfg.batch_size,
        "image_size": cfg.options.image_size,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "steps_per_run": steps,
        "repeats": repeats,
        "load_before": round(load_before, 2),
        "load_after": round(load_after, 2),
        "train_steps_per_s_batches_in_step": median["in_step"],
        "train_steps_per_s_batches_ahead": median["ahead"],
        "train_steps_per_s_batches_ahead_all_threads": median["ahead_all_threads"],
        "data_batches_per_s": median["data"],
        "data_over_train": median["data"] / median["ahead"],
        "ahead_over_in_step": median["ahead"] / median["in_step"],
        "ahead_all_threads_over_in_step": median["ahead_all_threads"] / median["in_step"],
        "auto_makes_batches_ahead": made_ahead("auto", torch.device(device_name), True),
        "runs": rates,
    }


def run(steps: int = 20, repeats: int = 3) -> dict:
    import torch

    from bench.report import write_section

    rows = {"cpu": measure("cpu", steps, repeats)}
    if torch.cuda.is_available():
        rows["cuda"] = measure("cuda", steps, repeats)
    result = {
        "recipe": str(RECIPE.relative_to(ROOT)),
        "gpu": torch.cuda.get_device_name(0) if "cuda" in rows else None,
        "devices": rows,
    }
    print(result, flush=True)
    write_section("train_throughput", result, render(result))
    return result


def render(result: dict) -> str:
    """The docs/benchmarks.md section of a :func:`run` result."""
    rows = result["devices"]

    def cell(device: str, key: str, fmt: str) -> str:
        if device not in rows:
            return "not measured"
        return format(rows[device][key], fmt) + ("x" if key.endswith(("_over_train", "_over_in_step")) else "")

    cpu = rows["cpu"]
    gpu_name = result["gpu"] or "no GPU here"
    batch_s = 1 / cpu["data_batches_per_s"]
    share = 100 * batch_s * cpu["train_steps_per_s_batches_in_step"]
    lines = [
        (f"training, {label} (steps/s)", f"train_steps_per_s_batches_{name}", ".2f")
        for name, label in PIPELINES.items()
    ]
    lines += [
        ("ahead / the loop making each batch", "ahead_over_in_step", ".2f"),
        ("ahead with default threads / the loop making each batch", "ahead_all_threads_over_in_step", ".2f"),
        ("the data alone, no model (batches/s)", "data_batches_per_s", ".1f"),
        ("data alone / training with batches ahead", "data_over_train", ".1f"),
    ]
    table = "\n".join(f"| {label} | {cell('cpu', key, fmt)} | {cell('cuda', key, fmt)} |" for label, key, fmt in lines)
    loads = "; ".join(
        f"{device} {row['load_before']} before, {row['load_after']} after, on {row['cores']} cores"
        for device, row in rows.items()
    )
    busy = [device for device, row in rows.items() if row["load_before"] > row["cores"]]
    if busy:  # written elsewhere first (CONTEXTDIFF_BENCH_DOCS), then brought here by hand
        loads += (
            f". **Measured at a load above the core count ({', '.join(busy)})**: these figures measure the other "
            "jobs as much as the trainer; a quiet re-run is pending"
        )
    return f"""## Shapes trainer throughput (`bench/trainer_throughput.py`, part of `python -m bench train_step`)

The shapes recipe (`{result["recipe"]}`: batch {cpu["batch_size"]}, {cpu["image_size"]}x{cpu["image_size"]} pixels), the
trainer's own step (forward, backward, AdamW, EMA), {cpu["steps_per_run"]} steps per run, the three pipelines
alternated, {cpu["repeats"]} runs each, median. CPU: {cpu["threads"]} threads. CUDA: {gpu_name}. The benchmark
refuses to write here at a load average above the core count; load average: {loads}.

| shapes recipe | CPU | CUDA |
|---|---|---|
{table}

`--prefetch auto` makes the batches ahead on {"CUDA and the CPU" if cpu["auto_makes_batches_ahead"] else "CUDA only"}.
The data alone is what the batch thread has to keep up with: rendering the scenes, captions to token ids (each
caption BPE-tokenised once, then cached), timesteps and noise, pinned on CUDA. Target on CUDA: at least
{TARGET_DATA_RATIO}x the training step rate. On the CPU a batch costs {batch_s:.3f} s, {share:.1f}% of a
synchronous step: at most that is what making it ahead can save there, since the thread and the step share the
same cores. The thread with torch's default threads opens a second OpenMP team: libgomp then makes every waiting
thread sleep instead of spin, and each small parallel region of the step wakes one (issue 33: 2x slower on 2
quiet cores, yet faster on a machine so loaded that spinning threads wait for the cores they spin on).
"""
