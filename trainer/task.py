"""What the training loop needs of a mode: one base class for the four tasks (joint, shapes, adapter, video).

A task is an ``nn.Module`` whose ``forward`` returns the step's loss. The loop asks it for:

- :attr:`Task.trainable`, the modules the optimiser trains, by name (their parameters are saved in the
  resumable state as ``<name>.<parameter>``), and :meth:`Task.trained_parameters`;
- :meth:`Task.make_batch`, the step's inputs drawn from the step's generator, on the CPU and independent
  of the weights, so that they can be made ahead of the step (:mod:`trainer.batches`);
- :meth:`Task.export` to :attr:`Task.export_path` (``<output_dir>/<name>.safetensors``, what the nodes
  load), :meth:`Task.sample_grid` for the previews and :meth:`Task.validation_loss`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn


class Task(nn.Module):
    trainable: nn.ModuleDict
    # Whether make_batch is worth a background thread: it renders or tokenises (the shapes world); the other
    # modes index tensors or call the base model, which stays on the loop's thread.
    prefetch = False

    def __init__(self, cfg, device):
        super().__init__()
        self.cfg, self.device = cfg, device

    def make_batch(self, gen: torch.Generator):
        """The step's inputs, drawn from its generator ``gen`` only (same generator, same batch). The default
        hands the generator to :meth:`forward`, for modes that draw their batch there."""
        return gen

    def forward(self, batch) -> torch.Tensor:
        """The step's loss for :meth:`make_batch`'s ``batch``."""
        raise NotImplementedError

    def validation_loss(self) -> float | None:
        """A loss on fixed held-out inputs, comparable across steps and runs; ``None`` where a mode has none."""
        return None

    def export(self) -> list[Path]:
        """Write the checkpoint the nodes load (:attr:`export_path`, and any companion files); their paths."""
        raise NotImplementedError

    def sample_grid(self, out_path: Path) -> Path | None:
        """Write the preview picture ``samples.png``."""
        raise NotImplementedError

    @property
    def export_path(self) -> Path:
        return self.cfg.export_path

    def joint_record(self) -> dict:
        """What a joint checkpoint (modes joint and shapes) records of its training: the options, and whether
        the denoiser was trained with the bias."""
        return {"training": self.cfg.to_dict(), "with_bias": self.cfg.use_bias}

    def trained_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the optimiser updates, named as the resumable state stores them."""
        return {
            f"{name}.{key}": p
            for name, module in self.trainable.items()
            for key, p in module.named_parameters()
            if p.requires_grad
        }

    @contextlib.contextmanager
    def evaluating(self, module: nn.Module | None = None) -> Iterator[None]:
        """``module`` (default: the whole task) in eval mode inside the block; its train/eval state restored
        after, also when the block raises (validation and previews run between training steps)."""
        module = self if module is None else module
        was = module.training
        module.eval()
        try:
            yield
        finally:
            module.train(was)
