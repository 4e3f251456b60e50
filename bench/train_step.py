"""Training-step cost of ContextDiff: one Eq. 6 step of a family-shaped UNet (trainable, random weights)
with the default adapter and its bias, against the identical step without the adapter; SD1.5- and
SDXL-shaped side by side in one run (SDXL with its full conditioning: 2048-wide tokens and ``y``).

Time: alternated repeats, median. Memory: on CUDA the allocator's peak; on the CPU the bytes of
parameters, gradients and AdamW state plus the activations autograd saves for backward (counted
with saved-tensor hooks), which is what a GPU's peak is made of.

``--model_channels 320`` is the families' real width (SD1.5 0.86B, SDXL 2.6B parameters); a smaller
width keeps every layer and depth and scales the channels (the CPU's figures in docs/benchmarks.md say
which). The SD1.5-only run at full width writes the ``train_step`` section, any other the
``train_step_families`` one.

It also measures the shapes trainer's throughput, with its batches made in the step and ahead of it, and
of the data alone (``bench/trainer_throughput.py``; ``--part shapes`` runs only that, ``--part families``
only the family-shaped steps).

    .venv/bin/python -m bench.train_step [--families sd15,sdxl] [--model_channels 320] [--size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.report import load_after, quiet_machine, write_section
from devkit import comfyui, tiny_models

CONFIGS = {"sd15": "SD15", "sdxl": "SDXL"}


def build(family: str, model_channels: int, device):
    """A trainable family-shaped ComfyUI model with every layer of the real one, ``model_channels`` wide."""
    import comfy.model_base
    import comfy.supported_models
    import torch

    models = tiny_models()
    randomize, sd15_unet_config, sdxl_unet_config = models.randomize, models.sd15_unet_config, models.sdxl_unet_config

    if family == "sd15":
        cfg = sd15_unet_config(full_size=True)
        cfg["model_channels"] = model_channels
        model_config = comfy.supported_models.SD15(cfg)
    else:
        model_config = comfy.supported_models.SDXL(sdxl_unet_config("SDXL", model_channels, (1, 2, 4)))
    model_config.set_inference_dtype(torch.float32, None)
    model = (comfy.model_base.SDXL if family == "sdxl" else comfy.model_base.BaseModel)(model_config)
    randomize(model.diffusion_model, 0, weight_scale=0.5)
    return model.to(device).train()


def measure(family: str, args, device) -> dict:
    import torch

    family_conditioning = tiny_models().family_conditioning

    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from contextdiff.objective import contextual_x0_loss
    from hostside import families
    from trainer.diffusion import training_schedule, x0_predictor

    model = build(family, args.model_channels, device)
    fam = families.identify(model).family
    adapter = ContextAdapter(AdapterConfig(context_dim=fam.context_dim)).to(device)
    torch.nn.init.normal_(adapter.patch_out.weight, std=0.02)
    sigmas, abar = training_schedule(model, device)
    ((tokens, extra),) = family_conditioning(1, fam.context_dim, fam.pooled_dim or fam.context_dim, batch=args.batch)
    x0 = torch.randn(args.batch, 4, args.size // 8, args.size // 8, device=device)
    cond = families.unet_conditioning(model, tokens.to(device), extra["pooled_output"].to(device), tuple(x0.shape))
    t = torch.full((args.batch,), 500, device=device)
    eps = torch.randn_like(x0)
    unet_params = sum(p.numel() for p in model.diffusion_model.parameters())

    def step(with_adapter: bool):
        params = list(model.diffusion_model.parameters()) + (list(adapter.parameters()) if with_adapter else [])
        opt = torch.optim.AdamW(params, lr=1e-6)
        denoise = x0_predictor(model, sigmas[t], cond)
        saved = [0]

        def pack(tensor):
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            relational = (lambda x, tt: adapter(x, cond["c_crossattn"], tt.float())) if with_adapter else None
            loss, _ = contextual_x0_loss(x0, t, eps, abar, denoise, relational)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        state = sum(p.numel() * p.element_size() * 4 for p in params)  # weights, grads, Adam m and v
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else state + saved[0]
        return seconds, peak, saved[0], cpu_seconds

    step(False), step(True)  # warm-up
    runs = {"base": [], "contextdiff": []}
    for i in range(args.repeats):
        # ABBA order: a slow drift of the machine hits both variants alike.
        for with_adapter in (False, True) if i % 2 == 0 else (True, False):
            runs["contextdiff" if with_adapter else "base"].append(step(with_adapter))
    # On the CPU the process's CPU time: other processes on a shared machine stretch wall time, not it.
    clock = 3 if device.type == "cpu" else 0
    ratios = [b[clock] / a[clock] for a, b in zip(runs["base"], runs["contextdiff"], strict=True)]
    mem_base, mem_cd = runs["base"][-1][1], runs["contextdiff"][-1][1]
    return {
        "family": fam.name,
        "unet_parameters": unet_params,
        "adapter_parameters": adapter.parameter_count(),
        "base_s": [r[0] for r in runs["base"]],
        "contextdiff_s": [r[0] for r in runs["contextdiff"]],
        "base_cpu_s": [r[3] for r in runs["base"]],
        "contextdiff_cpu_s": [r[3] for r in runs["contextdiff"]],
        "clock": "process CPU time" if clock == 3 else "wall time",
        "base_median_s": statistics.median(r[clock] for r in runs["base"]),
        "contextdiff_median_s": statistics.median(r[clock] for r in runs["contextdiff"]),
        "time_overhead_pct": 100 * (statistics.median(ratios) - 1),
        "ratio_range": [min(ratios), max(ratios)],
        "base_peak_bytes": mem_base,
        "contextdiff_peak_bytes": mem_cd,
        "memory_overhead_pct": 100 * (mem_cd / mem_base - 1),
        "activations_base_bytes": runs["base"][-1][2],
        "activations_contextdiff_bytes": runs["contextdiff"][-1][2],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="sd15", help="comma-separated: sd15, sdxl")
    ap.add_argument("--model_channels", type=int, default=320, help="UNet width (320: the real models)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size/8)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--part", choices=["all", "families", "shapes"], default="all", help="what to measure")
    ap.add_argument("--throughput_steps", type=int, default=20, help="shapes trainer: steps per timed run")
    args = ap.parse_args()
    names = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = set(names) - set(CONFIGS)
    if unknown or not names:
        ap.error(f"--families: choose from {sorted(CONFIGS)}")
    if args.model_channels % 64:
        ap.error("--model_channels must be a multiple of 64 (64-channel attention heads, 32-group norms)")
    loads = quiet_machine()
    import torch

    comfyui(cpu=not torch.cuda.is_available())  # as the trainer configures ComfyUI (--device auto)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part in ("all", "shapes"):
        from bench import trainer_throughput

        trainer_throughput.run(args.throughput_steps, args.repeats)
    if args.part == "shapes":
        return
    rows = {name: measure(name, args, device) for name in names}
    result = {
        "device": str(device),
        "latent": [args.size // 8] * 2,
        "batch": args.batch,
        "repeats": args.repeats,
        "model_channels": args.model_channels,
        "threads": torch.get_num_threads(),
        "families": rows,
        **load_after(loads),
    }
    if names == ["sd15"]:  # the keys of the SD1.5-only record, as before
        result.update({k: v for k, v in rows["sd15"].items() if k not in ("family",)})
    print(result)
    table = "\n".join(
        f"| {r['family']}-shaped, {r['unet_parameters'] / 1e6:.0f}M (adapter {r['adapter_parameters'] / 1e6:.1f}M) | "
        f"{r['base_median_s']:.2f} | "
        f"{r['contextdiff_median_s']:.2f} | **{r['time_overhead_pct']:+.1f}%** ({r['ratio_range'][0]:.2f} to "
        f"{r['ratio_range'][1]:.2f}) | {r['base_peak_bytes'] / 2**30:.2f} | "
        f"{r['contextdiff_peak_bytes'] / 2**30:.2f} | **{r['memory_overhead_pct']:+.1f}%** |"
        for r in rows.values()
    )
    full = args.model_channels == 320
    section = "train_step" if names == ["sd15"] and full else "train_step_families"
    width = (
        "the real widths"
        if full
        else f"model_channels {args.model_channels} (the real models: 320; every "
        "layer, depth and the conditioning widths kept)"
    )
    title = "Training step" if section == "train_step" else "Training step, per family"
    write_section(
        section,
        result,
        f"""## {title} (`bench/train_step.py`)

One Eq. 6 step of each family-shaped UNet (trainable, random weights; SDXL with its 2048-wide tokens and
`y`), {width}, latent {args.size // 8}x{args.size // 8}, batch {args.batch}, on {device}
(threads: {torch.get_num_threads()}); with and without the default adapter alternated (ABBA), {args.repeats} repeats
each. Seconds: {rows[names[0]]["clock"]}, median.

| UNet | seconds, alone | with adapter | time overhead (per-pair ratios) | GiB, alone | with adapter | memory overhead |
|---|---|---|---|---|---|---|
{table}

Time overhead: median of the per-pair ratios (target at most +10%, the paper: +5%). On the CPU, peak memory is
weights + gradients + AdamW state + the activations saved for backward; on CUDA it is the allocator's peak. The
adapter has a fixed size (its text projections follow the family's token width), so its share of time and memory
falls as the UNet grows: at reduced width it is an upper bound of what it costs beside the real UNets.
""",
    )


if __name__ == "__main__":
    main()
