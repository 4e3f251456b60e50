"""Editing memory and time on the SD1.5-shaped UNet (random weights), side by side in one run; with ``--family``
sd3, flux or wan, on that flow family's tiny file (tests/comfy_models.py) with its DiT attention fused.

1. Peak memory and time of inversion + edit against one plain sampling run of the same size (ComfyUI's
   own ``ddim`` sampler, same steps, cfg and latent), each in a fresh subprocess: the peak is the
   process's resident-set high-water mark (``VmHWM``), reset after the model is built and loaded, so
   torch's CPU tensors are counted (tracemalloc does not see them). Order plain, edit, edit, plain;
   medians. Targets: peak <= 1.25x plain sampling, time <= 2.3x (the floor is 2: one inversion and one
   edit pass; inversion runs at cfg 1, so it costs about half an edit pass).
2. The attention store: a real inversion with the store of queries+keys (fp16) and of full maps (fp32),
   the edits compared; per frame at 512x512 (64x64 latents), 20 steps, fuse_start 0.5, from the UNet's
   attention sizes (one probe pass), the same count the measured store matches.

On a flow family only part 1 runs (plain sampling: ComfyUI's ``euler`` on the ``simple`` schedule at the family's
cfg; the edit: inversion, then the edit fusing the joint attention of SD3's and Flux's blocks, or Wan's self- and
cross-attention as the Video Edit does), its section ``edit_memory_<family>``; the store at native sizes is
``bench/dit_store.py`` and ``bench/wan_store.py``. The tiny files are far smaller than the real models, so the ratios
say how the editing's own work compares with a small model's calls, not the real-size ones (not measured).

    .venv/bin/python -m bench.edit_memory [--size 256] [--steps 6] [--frames 2] [--family sd15|sd3|flux|wan]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import report
from bench.report import load_after, quiet_machine, write_section
from devkit import ROOT, import_pack, tiny_models

CFG = 7.5
# A flow family's cfg (Flux dev is guidance-distilled: cfg 1, one model batch a step) and its text tokens.
FLOW_CFG = {"sd3": 4.5, "flux": 1.0, "wan": 5.0}
FLOW_TOKENS = 16
NAMES = {"sd3": "SD3", "flux": "Flux", "wan": "Wan"}


def full_map_bytes(footprint, fused, heads=8, text_tokens=77, video=True):
    """fp32 maps: self-attention N x (2N) (sparse-causal keys) or N x N, cross-attention N x 77, per head."""
    keys = 2 if video else 1
    return fused * sum(heads * n * (keys * n + text_tokens) * 4 for n, _ in footprint)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets the resident-set high-water mark (VmHWM) to the current RSS.
    Path("/proc/self/clear_refs").write_text("5")


def _setup(size: int, frames: int, family: str = "sd15"):
    import torch

    models = tiny_models()
    if family != "sd15":
        return _setup_flow(family, size, frames)
    build_sd15, random_conditioning = models.build_sd15, models.random_conditioning

    pack = import_pack()
    runs = importlib.import_module(pack.__name__ + ".nodes.edit_runs")
    model = build_sd15(0, weight_scale=0.5, **report.sd15_shape())
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    h = size // 8
    latent = {"samples": torch.randn(frames, 4, h, h, generator=torch.Generator().manual_seed(0))}
    return runs, model, latent, random_conditioning(1), random_conditioning(3), random_conditioning(2)


def _setup_flow(kind: str, size: int, frames: int):
    """The family's tiny file loaded, a latent of ``size`` pixels (Wan: ``frames`` latent frames), three prompts."""
    import torch

    models = tiny_models()
    runs = importlib.import_module(import_pack().__name__ + ".nodes.edit_runs")
    model = models.build_flow(kind)
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    shape = models.flow_latent(kind, size=size // 8, frames=frames).shape
    latent = {"samples": torch.randn(shape, generator=torch.Generator().manual_seed(0))}
    conds = (models.flow_conditioning(kind, seed, tokens=FLOW_TOKENS) for seed in (1, 3, 2))
    return (runs, model, latent, *conds)


def edit_plan(runs, steps: int, family: str = "sd15"):
    """Self-attention fusion, the cross-attention of the shared tokens (all but one) and a blend word: the full
    edit."""
    from contextdiff.edit_plan import EditPlan

    plan = runs.plan_edit(runs.EditSettings(), runs.InversionSettings(steps=steps, fuse_start=0.5))
    tokens = 77 if family == "sd15" else FLOW_TOKENS
    return EditPlan(
        fuse=True,
        shared_tokens=[(i, i) for i in range(tokens) if i != 5],
        blend_target=[5],
        blend_source=[5],
        blend_threshold=0.3,
        warnings=plan.warnings,
        cfg=FLOW_CFG.get(family, CFG),
    )


def child(kind: str, size: int, steps: int, frames: int, family: str = "sd15") -> dict:
    """One measurement in this (fresh) process: ``plain`` sampling or ``edit`` (inversion + edit)."""
    runs, model, latent, src, tgt, neg = _setup(size, frames, family)  # puts ComfyUI on the path
    import comfy.model_management
    import comfy.sample
    import comfy.samplers
    import torch

    calls = {"calls": 0, "rows": 0}  # the diffusion model's forward passes and their batch rows, per job

    def count(module, args, kwargs):  # a torch hook on the network itself: every family, whatever wraps it
        calls["calls"] += 1
        calls["rows"] += int((args[0] if args else kwargs["x"]).shape[0])

    model.model.diffusion_model.register_forward_pre_hook(count, with_kwargs=True)

    cuda = comfy.model_management.get_torch_device().type == "cuda"
    if cuda:  # on a GPU the memory that matters is the device's: its allocator's peak
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _status_kib("VmRSS") * 1024
        _reset_peak()
    flow = family != "sd15"
    scheduler, cfg = ("simple", FLOW_CFG[family]) if flow else ("ddim_uniform", CFG)

    def job() -> None:
        if kind == "plain":
            sigmas = runs.schedule(model, scheduler, steps)
            noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(1))
            comfy.sample.sample_custom(
                model,
                noise,
                cfg,
                comfy.samplers.sampler_object("euler" if flow else "ddim"),
                sigmas,
                tgt,
                neg,
                torch.zeros_like(latent["samples"]),
                disable_pbar=True,
                seed=1,
            )
        elif flow:  # Wan's attention recorded as the Video Edit records it (a native video latent, no frames)
            settings = runs.InversionSettings(steps=steps, scheduler=scheduler)
            # recompute: no store, the source's branch run beside the target's (Wan where the store does not fit)
            recompute = kind == "recompute"
            source = runs.invert(runs.Guide(model, src), latent, settings, None, record=True, recompute=recompute)
            runs.edit(runs.Guide(model, tgt, neg), source, edit_plan(runs, steps, family))
        else:
            settings = runs.InversionSettings(steps=steps)
            source = runs.invert(runs.Guide(model, src), latent, settings, frames if frames > 1 else None)
            runs.edit(runs.Guide(model, tgt, neg), source, edit_plan(runs, steps))

    def timed() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            job()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    seconds = timed()
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
    # The same job again in the same process: its first run pays one-time costs (kernels for shapes not met yet,
    # lazy set-up), the second what a user's next run pays.
    calls.update(calls=0, rows=0)
    warm = timed()
    return {
        "device": str(comfy.model_management.get_torch_device()),
        "kind": kind,
        "seconds": seconds,
        "warm_seconds": warm,
        "model_calls": calls["calls"],
        "model_rows": calls["rows"],
        "baseline_bytes": baseline,
        "peak_bytes": peak,
        "working_bytes": peak - baseline,
    }


def run_child(kind: str, args) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            __spec__.name,
            "--child",
            kind,
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
            "--frames",
            str(args.frames),
            "--family",
            args.family,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(result, flush=True)
    return result


def add_run_arguments(ap: argparse.ArgumentParser, size: int = 256, steps: int = 6, frames: int = 2) -> None:
    """What :func:`peak_and_time` reads, for this script and ``bench.gpu_report edit`` alike (one list, so the two
    cannot drift apart)."""
    ap.add_argument("--size", type=int, default=size)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--frames", type=int, default=frames)
    ap.add_argument("--family", choices=["sd15", *FLOW_CFG], default="sd15", help="sd15: the SD1.5-shaped UNet")


def peak_and_time(args) -> dict:
    # On Wan also the edit without a store, the source's branch recomputed (docs/design.md 1.3).
    order = ("plain", "edit", "recompute", "recompute", "edit", "plain") if args.family == "wan" else None
    order = order or ("plain", "edit", "edit", "plain")
    runs = {kind: [] for kind in dict.fromkeys(order)}
    for kind in order:
        runs[kind].append(run_child(kind, args))
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "warm_seconds", "peak_bytes", "working_bytes")}
        for k, v in runs.items()
    }
    out = {
        "order": list(order),
        "device": runs["plain"][0].get("device", "cpu"),
        "runs": runs,
        "median": med,
        "peak_ratio": med["edit"]["peak_bytes"] / med["plain"]["peak_bytes"],
        "working_ratio": med["edit"]["working_bytes"] / med["plain"]["working_bytes"],
        "time_ratio": med["edit"]["seconds"] / med["plain"]["seconds"],
        "warm_time_ratio": med["edit"]["warm_seconds"] / med["plain"]["warm_seconds"],
    }
    if "recompute" in med:
        out["recompute_peak_ratio"] = med["recompute"]["peak_bytes"] / med["plain"]["peak_bytes"]
        out["recompute_time_ratio"] = med["recompute"]["seconds"] / med["plain"]["seconds"]
        out["recompute_warm_time_ratio"] = med["recompute"]["warm_seconds"] / med["plain"]["warm_seconds"]
    return out


def store_sizes(args) -> dict:
    import torch

    runs, model, latent, src, tgt, neg = _setup(args.size, args.frames)
    patch = importlib.import_module(runs.__name__.rsplit(".", 1)[0] + ".attention_patch")
    from contextdiff.attention_store import store_bytes_per_frame
    from contextdiff.editing import fused_steps

    measured = {}
    for store_maps in (False, True):
        settings = runs.InversionSettings(
            steps=args.steps, store_maps=store_maps, store_dtype=torch.float32 if store_maps else torch.float16
        )
        source = runs.invert(runs.Guide(model, src), latent, settings, args.frames)
        out = runs.edit(runs.Guide(model, tgt, neg), source, edit_plan(runs, args.steps)).samples
        measured[store_maps] = {"bytes": source.store.nbytes(), "out": out}
        del source
    h = args.size // 8
    fused = len(fused_steps(args.steps, 0.5))
    fp512 = patch.attention_footprint(model, (64, 64))
    return {
        "measured_latent": [h, h],
        "fused_steps": fused,
        "store_qk_fp16_bytes": measured[False]["bytes"],
        "store_maps_fp32_bytes": measured[True]["bytes"],
        "measured_ratio": measured[False]["bytes"] / measured[True]["bytes"],
        "predicted_qk_bytes": store_bytes_per_frame(patch.attention_footprint(model, (h, h)), fused, 2) * args.frames,
        "max_abs_output_difference": (measured[False]["out"] - measured[True]["out"]).abs().max().item(),
        "output_scale": measured[True]["out"].abs().max().item(),
        "per_frame_512_ours_bytes": store_bytes_per_frame(fp512, 10, 2),
        "per_frame_512_maps_bytes": full_map_bytes(fp512, 10),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ap)
    ap.add_argument("--child", choices=["plain", "edit", "recompute"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size, args.steps, args.frames, args.family)))
        return
    loads = quiet_machine()
    if args.family != "sd15":
        flow_section(args, loads)
        return
    timing = peak_and_time(args)  # first, before this process holds a model of its own
    store = store_sizes(args)
    result = {
        "device": timing.get("device", "cpu"),
        "size": args.size,
        "steps": args.steps,
        "frames": args.frames,
        "cfg": CFG,
        **timing,
        **store,
        "ratio_512": store["per_frame_512_ours_bytes"] / store["per_frame_512_maps_bytes"],
        **load_after(loads),
    }
    print({k: v for k, v in result.items() if k != "runs"})
    med, gib, mib = timing["median"], 2**30, 2**20
    ours, maps = store["per_frame_512_ours_bytes"], store["per_frame_512_maps_bytes"]
    rows = "\n".join(f"| {n} | {n * ours / gib:.2f} GiB | {n * maps / gib:.1f} GiB |" for n in (1, 2, 4, 8, 16, 24))
    h = args.size // 8
    plain, edit = med["plain"], med["edit"]
    table = "\n".join(
        [
            f"| peak resident memory | {plain['peak_bytes'] / gib:.2f} GiB | {edit['peak_bytes'] / gib:.2f} GiB "
            f"| **{timing['peak_ratio']:.2f}x** | <= 1.25x |",
            f"| above the loaded model | {plain['working_bytes'] / mib:.0f} MiB | "
            f"{edit['working_bytes'] / mib:.0f} MiB | {timing['working_ratio']:.2f}x | |",
            f"| time | {plain['seconds']:.1f} s | {edit['seconds']:.1f} s | **{timing['time_ratio']:.2f}x** "
            "| <= 2.3x |",
        ]
    )
    write_section(
        "edit_memory",
        result,
        f"""## Editing memory and time (`bench/edit_memory.py`)

SD1.5-shaped UNet (random weights, fp32 on the CPU), latent {h}x{h}, {args.frames} frames (sparse-causal),
{args.steps} DDIM steps, cfg {CFG}; the edit fuses self-attention, the cross-attention of 76 shared tokens and a
blend word over {store["fused_steps"]} steps. Each run in a fresh process, order plain, edit, edit, plain, medians.

| | plain sampling (ComfyUI `ddim`) | inversion + edit | ratio | target |
|---|---|---|---|---|
{table}

Peak: the resident-set high-water mark, reset once the model is loaded (the weights, {
            med["plain"]["peak_bytes"] / gib
            - med["plain"]["working_bytes"]
            / gib:.2f} GiB with the host, are in both). Above the model, editing holds the
attention store and the trajectory on top of the activations of one UNet call; self-attention fusion runs the fused
kernel on the stored queries and keys (`SDPA(q_src, k_src, v)`), so no `heads x N x 2N` map is built; only the
cross-attention maps (`N x 77`) are explicit. Inversion runs at cfg 1 (one UNet batch per step), the edit at cfg
{CFG} (two).

Store: queries+keys in fp16 hold **{store["store_qk_fp16_bytes"] / mib:.1f} MiB**, full fp32 maps
**{store["store_maps_fp32_bytes"] / mib:.1f} MiB**: ratio **1/{1 / store["measured_ratio"]:.1f}** (target at most
1/8); the same edit from both: max |difference| {store["max_abs_output_difference"]:.2e} against outputs of size
{store["output_scale"]:.1f} (fp16 queries/keys). The count from the UNet's attention sizes predicts
{store["predicted_qk_bytes"] / mib:.1f} MiB.

At 512x512, 20 steps, fuse_start 0.5 (10 fused steps), sparse-causal self-attention: **{ours / mib:.0f} MiB per
frame** for ours against **{maps / gib:.1f} GiB** for full maps (1/{maps / ours:.0f}).

| frames | queries+keys, fp16 | full maps, fp32 |
|---|---|---|
{rows}
""",
    )


def floor(result: dict) -> str:
    """What the time ratio cannot go below, from the model's forward passes counted in the second runs: plain
    sampling makes ``steps`` calls, the inversion ``steps + 1`` (one more at the top of the schedule, for the store)
    at cfg 1, the edit ``steps``; where a call costs about the same whatever its batch (a tiny model: fixed costs per
    call dominate), the calls' ratio is the floor."""
    runs, med = result["runs"], result["median"]
    if "model_calls" not in runs["plain"][0]:
        return ""
    line = []
    for kind in (k for k in ("plain", "edit", "recompute") if k in runs):
        calls, rows = runs[kind][0]["model_calls"], runs[kind][0]["model_rows"]
        per_call = 1e3 * med[kind]["warm_seconds"] / calls
        line.append(f"{kind} {calls} calls ({rows} batch rows, {per_call:.0f} ms a call)")
    ratio = runs["edit"][0]["model_calls"] / runs["plain"][0]["model_calls"]
    return (
        f"Forward passes of the model in the second runs: {'; '.join(line)}. The calls alone make the floor "
        f"**{ratio:.2f}x** where a call costs the same at any batch; the rest is the editing's own work (the store, "
        "the fused kernels, the blend)."
    )


def flow_section(args, loads: dict) -> None:
    """Part 1 on a flow family's tiny file: the section ``edit_memory_<family>``."""
    timing = peak_and_time(args)
    result = {
        "family": args.family,
        "size": args.size,
        "steps": args.steps,
        "frames": args.frames,
        "cfg": FLOW_CFG[args.family],
        "text_tokens": FLOW_TOKENS,
        **timing,
        **load_after(loads),
    }
    print({k: v for k, v in result.items() if k != "runs"})
    write_section(f"edit_memory_{args.family}", result, flow_markdown(result))


def flow_markdown(result: dict) -> str:
    """The section of a flow family's record (``flow_section``'s ``result``)."""
    from contextdiff.editing import fused_steps

    args = argparse.Namespace(**{k: result[k] for k in ("family", "size", "steps", "frames")})
    med, mib = result["median"], 2**20
    plain, edit = med["plain"], med["edit"]
    h = args.size // 16  # tokens per side: 8x latents, patches of 2
    what = {
        "sd3": "SD3's joint blocks (tiny file: depth 2)",
        "flux": "Flux's double and single blocks (tiny file: 0.4B parameters)",
        "wan": f"Wan's self- and cross-attention over {args.frames} latent frames, as the Video Edit fuses them",
    }[args.family]
    load = f"load average {result['load_before']} before, {result['load_after']} after, on {result['cores']} cores"
    if max(result["load_before"], result["load_after"]) > 2:
        load += " (**above 2: a shared machine, these figures are indicative only**)"
    return f"""## Editing on the tiny {NAMES[args.family]} file (`bench/edit_memory.py --family {args.family}`)

{what}; {h}x{h} image tokens, {FLOW_TOKENS} text tokens, {args.steps} steps (`simple`), cfg {FLOW_CFG[args.family]},
fp32 on the CPU; plain sampling is ComfyUI's `euler`, the edit a classic inversion (cfg 1) then the edit fusing
{len(fused_steps(args.steps, 0.5))} steps with a blend word. Each run in a fresh process, order \
{", ".join(result.get("order", ["plain", "edit", "edit", "plain"]))}, medians; {load}.

| | plain sampling (`euler`) | inversion + edit | ratio | target |
|---|---|---|---|---|
| peak resident memory | {plain["peak_bytes"] / mib:.0f} MiB | {edit["peak_bytes"] / mib:.0f} MiB | \
**{result["peak_ratio"]:.2f}x** | <= 1.1x |
| above the loaded model | {plain["working_bytes"] / mib:.0f} MiB | {edit["working_bytes"] / mib:.0f} MiB | \
{result["working_ratio"]:.2f}x | |
| time, first run in the process | {plain["seconds"]:.2f} s | {edit["seconds"]:.2f} s | \
**{result["time_ratio"]:.2f}x** | <= 2x |
| time, second run | {plain["warm_seconds"]:.2f} s | {edit["warm_seconds"]:.2f} s | \
**{result["warm_time_ratio"]:.2f}x** | <= 2x |
{recompute_rows(result)}
{floor(result)} Real-size speed and memory are not measured.
"""


def recompute_rows(result: dict) -> str:
    """Wan's edit without a store (the source's branch recomputed), beside the stored one: a table, or nothing."""
    if "recompute_time_ratio" not in result:
        return ""
    med, mib = result["median"], 2**20
    plain, edit = med["plain"], med["recompute"]
    return f"""
Without a store (what a Wan edit does where the store does not fit: the source's rows run beside the target's in
each fused step, docs/design.md 1.3), in the same run:

| | plain sampling (`euler`) | inversion + edit, source recomputed | ratio |
|---|---|---|---|
| peak resident memory | {plain["peak_bytes"] / mib:.0f} MiB | {edit["peak_bytes"] / mib:.0f} MiB | \
**{result["recompute_peak_ratio"]:.2f}x** |
| time, first run in the process | {plain["seconds"]:.2f} s | {edit["seconds"]:.2f} s | \
**{result["recompute_time_ratio"]:.2f}x** |
| time, second run | {plain["warm_seconds"]:.2f} s | {edit["warm_seconds"]:.2f} s | \
**{result["recompute_warm_time_ratio"]:.2f}x** |
"""


if __name__ == "__main__":
    main()
