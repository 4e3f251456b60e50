"""The training loop shared by every mode: optimiser, schedule, DDP, logging, checkpoints.

Each step draws its batch, timesteps and noise from a generator seeded by (seed, step, rank),
so a resumed run replays exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import checkpoint, plots
from .runtime import EMA, Dist, autocast


def lr_lambda(cfg):
    def f(step):
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63))


def train(cfg, task_factory) -> dict:
    """Run ``cfg.steps`` steps of the task built by ``task_factory(cfg, device)``; returns a summary."""
    env = Dist(cfg.device)
    out = Path(cfg.output_dir)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    exported: list[Path] = []
    task = task_factory(cfg, env.device)
    params = {
        f"{name}.{k}": p for name, m in task.trainable.items() for k, p in m.named_parameters() if p.requires_grad
    }
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    scaler = torch.amp.GradScaler("cuda", enabled=env.device.type == "cuda" and cfg.precision == "fp16")
    ema = EMA(params, cfg.ema_decay) if cfg.ema_decay > 0 else None
    start = 0
    if cfg.resume:
        state = checkpoint.load_state(out)
        if state is not None:
            weights, extra, info = state
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(weights[k].to(p.device))
            optimizer.load_state_dict(extra["optimizer"])
            scheduler.load_state_dict(extra["scheduler"])
            scaler.load_state_dict(extra["scaler"])
            if ema is not None and "ema" in extra:
                ema.shadow = {k: v.to(params[k].device) for k, v in extra["ema"].items()}
            checkpoint.set_rng_state(extra["rng"])
            start = info["step"]
            if env.main:
                print(f"[trainer] resumed from step {start} in {out / 'state'}")
    model = DistributedDataParallel(task) if env.world > 1 else task
    log_path = out / "log.jsonl"
    if env.main and log_path.exists():
        # A fresh run starts a new log; a resumed one drops what was logged after its checkpoint.
        kept = [line for line in log_path.read_text().splitlines() if start and json.loads(line)["step"] <= start]
        log_path.write_text("".join(line + "\n" for line in kept))

    def save(step):
        if env.main:
            extra = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": checkpoint.rng_state(),
            }
            if ema is not None:
                extra["ema"] = ema.shadow
            checkpoint.save_state(
                out, step, {k: p.detach() for k, p in params.items()}, extra, {"mode": cfg.mode, "steps": cfg.steps}
            )
            ctx = ema.swapped() if ema is not None else _nullcontext()
            with ctx:
                exported[:] = task.export(out)
                plots.loss_curve(log_path, out / "loss.png", f"{cfg.mode}: Eq. 6 loss")
                if cfg.preview_count:
                    task.sample_grid(out / "samples.png")
        env.barrier()

    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        disable=not env.main,
        desc=f"train {cfg.mode}",
        dynamic_ncols=True,
    )
    t0, last = time.time(), None
    val_every = getattr(cfg.options, "val_every", 0)  # the from-scratch modes have a validation loss
    for step in bar:
        gen = step_generator(cfg.seed, step, env.rank)
        with autocast(env.device, cfg.precision):
            loss = model(gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at step {step}; lower --lr or use --precision fp32 "
                f"(the last good checkpoint is in {out / 'state'})"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params.values(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update()
        last = loss.item()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            mean_loss = env.mean(last)
            if env.main:
                rec = {
                    "step": step + 1,
                    "loss": mean_loss,
                    "lr": scheduler.get_last_lr()[0],
                    "elapsed_s": round(time.time() - t0, 3),
                }
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{mean_loss:.4f}")
        if val_every and env.main and ((step + 1) % val_every == 0 or step + 1 == cfg.steps):
            val = getattr(task, "validation_loss", lambda: None)()
            if val is not None:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step + 1, "val_loss": val}) + "\n")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save(step + 1)
    bar.close()
    # Each rank records a checksum of its weights: under DDP the replicas must agree.
    checksum = float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(params.values())))
    (out / f"rank-{env.rank}.json").write_text(json.dumps({"rank": env.rank, "world": env.world, "checksum": checksum}))
    summary = {
        "steps": cfg.steps,
        "final_loss": last,
        "output_dir": str(out),
        "seconds": time.time() - t0,
        "exported": [str(p) for p in exported],
    }
    if env.main:
        for path in exported:
            print(f"[trainer] wrote {path}", flush=True)
    env.close()
    return summary


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
