"""The training loop shared by every mode: optimiser, schedule, DDP, logging, checkpoints.

Each step draws its batch, timesteps and noise from a generator seeded by (seed, step, rank)
(:func:`trainer.batches.step_generator`), so a resumed run replays exactly the steps an uninterrupted
run would have taken. :func:`train` is the loop; :class:`Run` holds a run's state and its four parts:
:meth:`Run.resume`, :meth:`Run.step`, :meth:`Run.log` and :meth:`Run.save`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import checkpoint, plots
from .batches import Prefetcher, made_ahead, step_generator, synchronous
from .runtime import EMA, Dist, autocast

__all__ = ["Run", "lr_lambda", "step_generator", "train"]


def lr_lambda(cfg):
    def f(step):
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _due(step: int, every: int, last: int) -> bool:
    """Whether something done every ``every`` steps (and at the end) is done after ``step`` steps."""
    return step % every == 0 or step == last


class Run:
    """One training run: the task built by ``task_factory(cfg, device)``, its optimiser, learning-rate
    schedule, gradient scaler and EMA, and the folder it writes (``config.json``, ``log.jsonl``, ``state/``,
    the exported checkpoint, ``loss.png``, ``samples.png``)."""

    def __init__(self, cfg, task_factory):
        self.cfg = cfg
        self.env = env = Dist(cfg.device)
        self.out = Path(cfg.output_dir)
        if env.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in checkpoint.remove_stale_temp_files(cfg):
                print(f"[trainer] removed {stale}, a temporary file of a run killed while writing it")
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        self.log_path = self.out / "log.jsonl"
        self.exported: list[Path] = []
        self.task = task_factory(cfg, env.device)
        self.params = self.task.trained_parameters()
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.scaler = torch.amp.GradScaler("cuda", enabled=env.device.type == "cuda" and cfg.precision == "fp16")
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        # the from-scratch modes have a validation loss
        self.val_every = getattr(cfg.options, "val_every", 0)
        self.inputs = cfg.options.input_digests()  # recorded in each state: a resumed run must read the same files
        self.t0 = time.time()  # the loop restarts it: log lines and the summary count training time

    # --- resume ------------------------------------------------------------------------------
    def resume(self) -> int:
        """The first step to train: with ``--resume``, the step of the latest state in ``output_dir/state``
        (weights, optimiser, schedule, scaler, EMA and RNGs restored), else 0. The log keeps the lines up
        to that step: a fresh run starts a new log."""
        start = 0
        state = checkpoint.load_state(self.out) if self.cfg.resume else None
        earlier = None if self.cfg.resume else checkpoint.latest_info(self.out)
        if earlier is not None and self.env.main:
            print(
                f"[trainer] {self.out / 'state'} holds step {earlier['step']} of an earlier run; this run starts at "
                "step 0 and replaces it at its first save (stop it and add --resume true to continue that run)"
            )
        if state is not None:
            weights, extra, info = state
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(weights[k].to(p.device))
            self.optimizer.load_state_dict(extra["optimizer"])
            self.scheduler.load_state_dict(extra["scheduler"])
            self.scaler.load_state_dict(extra["scaler"])
            if self.ema is not None and "ema" in extra:
                self.ema.shadow = {k: v.to(self.params[k].device) for k, v in extra["ema"].items()}
            checkpoint.set_rng_state(extra["rng"])
            start = info["step"]
            if self.env.main:
                print(f"[trainer] resumed from step {start} in {self.out / 'state'}")
        if self.env.main and self.log_path.exists():
            lines = self.log_path.read_text().splitlines()
            kept = [line for line in lines if start and json.loads(line)["step"] <= start]
            self.log_path.write_text("".join(line + "\n" for line in kept))
        return start

    def batches(self, start: int):
        """``(step, batch)`` for the steps from ``start``: made ahead on a thread where ``--prefetch`` says so
        (pinned on CUDA; :func:`trainer.batches.made_ahead`), else as each step needs it. A context manager."""
        steps = range(start, self.cfg.steps)
        seed, rank, device = self.cfg.seed, self.env.rank, self.env.device
        if made_ahead(self.cfg.prefetch, device, self.task.prefetch):
            return Prefetcher(self.task.make_batch, seed, rank, steps, pin=device.type == "cuda")
        return contextlib.nullcontext(synchronous(self.task.make_batch, seed, rank, steps))

    # --- step --------------------------------------------------------------------------------
    def step(self, model, batch, step: int) -> float:
        """One optimisation step on ``batch``; returns its loss."""
        cfg = self.cfg
        with autocast(self.env.device, cfg.precision):
            loss = model(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at step {step}; lower --lr or use --precision fp32 "
                f"(the last good checkpoint is in {self.out / 'state'})"
            )
        self.optimizer.zero_grad(set_to_none=True)
        try:
            self.scaler.scale(loss).backward()
        except RuntimeError as e:
            if "no autograd formula" not in str(e):
                raise
            raise SystemExit(
                f"the base model's forward uses an operation without a gradient ({str(e).splitlines()[0]}), and the "
                "adapter is trained through the frozen model: this model's code (or another pack's patch on it) is "
                "inference-only there; train with the model as ComfyUI ships it"
            ) from None
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params.values(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        return loss.item()

    # --- log ---------------------------------------------------------------------------------
    def log(self, done: int, loss: float, bar) -> None:
        """After ``done`` steps: the mean loss over the ranks every ``log_every`` steps, the validation loss
        every ``val_every`` steps (both at the end too), as lines of ``log.jsonl``."""
        cfg, env = self.cfg, self.env
        if _due(done, cfg.log_every, cfg.steps):
            mean_loss = env.mean(loss)
            if env.main:
                rec = {
                    "step": done,
                    "loss": mean_loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "elapsed_s": round(time.time() - self.t0, 3),
                }
                self._append(rec)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
        if self.val_every and env.main and _due(done, self.val_every, cfg.steps):
            val = self.task.validation_loss()
            if val is not None:
                self._append({"step": done, "val_loss": val})

    def _append(self, record: dict) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # --- save --------------------------------------------------------------------------------
    def save(self, done: int) -> None:
        """The resumable state after ``done`` steps, then (EMA weights swapped in, if any) the exported
        checkpoint, the loss curve and the preview; every rank waits for it."""
        cfg, env = self.cfg, self.env
        if env.main:
            extra = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": checkpoint.rng_state(),
            }
            if self.ema is not None:
                extra["ema"] = self.ema.shadow
            weights = {k: p.detach() for k, p in self.params.items()}
            checkpoint.save_state(
                self.out, done, weights, extra, {"mode": cfg.mode, "config": cfg.to_dict(), "inputs": self.inputs}
            )
            with self.ema.swapped() if self.ema is not None else contextlib.nullcontext():
                self.exported[:] = self.task.export()
                plots.loss_curve(self.log_path, self.out / "loss.png", f"{cfg.mode}: Eq. 6 loss")
                if cfg.preview_count:
                    self.task.sample_grid(self.out / "samples.png")
        env.barrier()

    def finish(self, last: float | None) -> dict:
        """Each rank's weight checksum (under DDP the replicas must agree), the summary, the paths written."""
        env = self.env
        checksum = float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(self.params.values())))
        record = {"rank": env.rank, "world": env.world, "checksum": checksum}
        (self.out / f"rank-{env.rank}.json").write_text(json.dumps(record))
        summary = {
            "steps": self.cfg.steps,
            "final_loss": last,
            "output_dir": str(self.out),
            "seconds": time.time() - self.t0,
            "exported": [str(p) for p in self.exported],
        }
        if env.main:
            for path in self.exported:
                print(f"[trainer] wrote {path}", flush=True)
        env.close()
        return summary


def train(cfg, task_factory) -> dict:
    """Run ``cfg.steps`` steps of the task built by ``task_factory(cfg, device)``; returns a summary."""
    run = Run(cfg, task_factory)
    start = run.resume()
    model = DistributedDataParallel(run.task) if run.env.world > 1 else run.task
    bar = tqdm(
        initial=start,
        total=cfg.steps,
        disable=not run.env.main,
        desc=f"train {cfg.mode}",
        dynamic_ncols=True,
    )
    run.t0, last = time.time(), None
    with run.batches(start) as batches:
        for step, batch in batches:
            last = run.step(model, batch, step)
            run.log(step + 1, last, bar)
            if _due(step + 1, cfg.save_every, cfg.steps):
                run.save(step + 1)
            bar.update()
    bar.close()
    return run.finish(last)
