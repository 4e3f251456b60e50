"""Devices, torchrun/DDP, autocast, gradient checkpointing and EMA: the GPU-facing plumbing."""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint


class Dist:
    """Rank and world size; initialised from torchrun's environment when WORLD_SIZE > 1."""

    def __init__(self, device_pref: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device_pref == "auto":
            device_pref = "cuda" if torch.cuda.is_available() else "cpu"
        if device_pref == "cuda":
            device_pref = f"cuda:{local}"
        self.device = torch.device(device_pref)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.item() / self.world

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA; fp32 (no autocast) otherwise."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def enable_checkpointing(modules) -> None:
    """Recompute each module's activations in backward (saves memory, costs one more forward)."""
    for m in modules:
        original = m.forward

        @functools.wraps(original)
        def forward(*args, _original=original, **kwargs):
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        m.forward = forward


class EMA:
    """Exponential moving average of parameters, applied with :meth:`swapped` for export."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        self.decay = decay
        self.params = params
        self.shadow = {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self):
        for k, p in self.params.items():
            self.shadow[k].lerp_(p.detach(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped(self):
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(backup[k])
