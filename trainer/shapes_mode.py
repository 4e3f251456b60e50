"""Mode ``shapes``: the text-conditioned joint model, trained from scratch on the captioned shapes world.

The denoiser (ComfyUI's UNet, pixel space, x0-prediction), the adapter and a CLIP text encoder
(ComfyUI's CLIP text model with CLIP's BPE tokenizer) are trained together with Eq. 6. Each step
renders a fresh batch of ``shapesworld`` scenes of the training split (the held-out colour-shape
pairs never occur) from a seed drawn from the step's generator, so resumed runs replay exactly. The batch
(pixels, token ids, timesteps, noise) depends on that generator only, so it is made ahead of the step on
a background thread (:mod:`trainer.batches`); each caption is BPE-tokenised once.

With ``--base_checkpoint`` (a checkpoint of this mode) the UNet and the text encoder are that file's, frozen:
only a fresh adapter is trained, with Eq. 6 or a bias variant, as ``--mode adapter`` trains one for an SD
checkpoint. The gradient still reaches ``r_phi`` through ``x_t`` and the frozen UNet; the checkpoint written holds
the base's UNet and text encoder unchanged and the new adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hostside.joint_checkpoints import load_text_joint, save_text_joint
from hostside.pixel_unet import build_joint_model
from hostside.text_encoder import (
    build_text_clip,
    encode_batch,
    encode_token_ids,
    text_config,
    text_transformer,
    token_ids,
)
from shapesworld import world

from . import plots
from .components import build_adapter, checkpoint_blocks, trainable_modules
from .diffusion import recipe_loss, relational, training_schedule, x0_predictor
from .joint import sample_conditioned
from .task import Task

RECIPE = "shapes"
VALIDATION_SEED = 2**40 + 17  # a fixed batch, outside the training seeds' practical range


def preview_prompts() -> list[str]:
    """Captions of the previews: one attribute changes at a time (colour, shape, position, size, count)."""
    obj = world.Obj
    scenes = [
        (obj("red", "circle", "large", "centre"),),
        (obj("green", "circle", "large", "centre"),),
        (obj("blue", "square", "large", "centre"),),
        (obj("yellow", "triangle", "large", "centre"),),
        (obj("magenta", "cross", "large", "centre"),),
        (obj("cyan", "square", "small", "left"),),
        (obj("cyan", "square", "small", "right"),),
        (obj("red", "triangle", "small", "top"), obj("blue", "circle", "small", "bottom")),
    ]
    return [world.caption(world.Scene(objs, "dark")) for objs in scenes]


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` renders -> float ``(N, 3, H, W)`` in [-1, 1], the model's data space."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass
class ShapesBatch:
    """One step's inputs, made on the CPU from the step's generator."""

    pixels: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    ids: torch.Tensor  # (B, 77) token ids of the captions ("" where dropped for classifier-free guidance)
    t: torch.Tensor  # (B,) training timesteps
    eps: torch.Tensor  # (B, 3, H, W) noise
    gen: torch.Generator  # the step's generator after these draws (a bias variant draws more from it)

    def pin_memory(self) -> ShapesBatch:
        """The tensors in page-locked memory, for asynchronous copies to a GPU."""
        return ShapesBatch(
            self.pixels.pin_memory(), self.ids.pin_memory(), self.t.pin_memory(), self.eps.pin_memory(), self.gen
        )


class ShapesTask(Task):
    prefetch = True

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        o = cfg.options
        self.frozen = bool(o.base_checkpoint)
        if self.frozen:  # the SD user's path on the shapes world: a trained model, frozen; only the adapter learns
            base = load_text_joint(o.base_checkpoint, recipe=RECIPE, device=device)
            self.model, self.clip, self.base_meta = base.model, base.clip, base.meta
            self.unet_config, self.text_config = base.meta["unet_config"], base.meta["text_config"]
            self.model.diffusion_model.requires_grad_(False)
            self.text = text_transformer(self.clip).requires_grad_(False)
        else:
            self.unet_config = o.unet_config()
            self.model = build_joint_model(self.unet_config, init_seed=cfg.seed).to(device)
            self.model.diffusion_model.train()
            self.text_config = text_config(o.context_dim, o.text_layers, o.text_heads)
            self.clip = build_text_clip(self.text_config, init_seed=cfg.seed + 2)
            self.text = text_transformer(self.clip).to(device).train().requires_grad_(True)
        torch.manual_seed(cfg.seed + 1)
        self.adapter = build_adapter(cfg, latent_channels=3, context_dim=o.context_dim, device=device)
        sigmas, self.abar = training_schedule(self.model, device)
        self.register_buffer("sigmas", sigmas, persistent=False)
        if self.frozen:
            self.trainable = nn.ModuleDict({"adapter": self.adapter})
            if cfg.grad_checkpointing:  # the UNet's activations are still needed: the gradient reaches r_phi via x_t
                checkpoint_blocks(self.adapter, self.model.diffusion_model)
        else:
            self.trainable = trainable_modules(cfg, self.model, self.adapter, text=self.text)
        self._ids: dict[str, list[int]] = {}  # caption -> its token ids: the world has few distinct captions

    def train(self, mode: bool = True) -> ShapesTask:
        """Train mode for what is trained; a frozen base model stays in eval mode (``evaluating`` restores this)."""
        super().train(mode)
        if getattr(self, "frozen", False):
            self.model.eval()
            self.text.eval()
        return self

    def joint_record(self) -> dict:
        """Besides the options: for a frozen base, the file it was and whether its denoiser was trained with the
        bias (``with_bias`` describes the denoiser, which is the base's)."""
        if not self.frozen:
            return super().joint_record()
        training = {**self.cfg.to_dict(), **{f"{k}_sha256": v for k, v in self.cfg.options.input_digests().items()}}
        return {"training": training, "with_bias": self.base_meta.get("with_bias") == "true"}

    def caption_ids(self, captions: list[str]) -> torch.Tensor:
        """``(B, 77)`` token ids of ``captions`` as CLIPTextEncode tokenises them, each caption tokenised once."""
        new = [c for c in dict.fromkeys(captions) if c not in self._ids]
        self._ids.update(zip(new, token_ids(self.clip, new), strict=True))
        return torch.tensor([self._ids[c] for c in captions])

    def make_batch(self, gen: torch.Generator) -> ShapesBatch:
        cfg, o = self.cfg, self.cfg.options
        seed = int(torch.randint(2**62, (1,), generator=gen))
        images, captions, _ = world.sample_batch(seed, cfg.batch_size, "train", o.image_size)
        drop = (torch.rand(cfg.batch_size, generator=gen) < o.class_dropout).tolist()
        captions = ["" if d else c for c, d in zip(captions, drop, strict=False)]
        t = torch.randint(len(self.sigmas), (cfg.batch_size,), generator=gen)
        eps = torch.randn((cfg.batch_size, 3, o.image_size, o.image_size), generator=gen)
        return ShapesBatch(to_pixels(images), self.caption_ids(captions), t, eps, gen)

    def forward(self, batch: ShapesBatch | torch.Generator):
        if isinstance(batch, torch.Generator):  # a step's generator: its batch made here (benches, research)
            batch = self.make_batch(batch)
        return self.loss(batch.pixels, batch.ids, batch.t, batch.eps, gen=batch.gen)

    def loss(self, x0: torch.Tensor, ids: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, weighting=None, gen=None):
        """The recipe's loss for pixels ``x0`` and token ids ``ids`` (:meth:`caption_ids`); CPU tensors are copied
        to the model's device (asynchronously from pinned memory on CUDA)."""
        device = self.sigmas.device
        non_blocking = device.type == "cuda"
        x0, t, eps = (v.to(device, non_blocking=non_blocking) for v in (x0, t, eps))
        ctx, pooled = encode_token_ids(self.clip, ids)
        denoise = x0_predictor(self.model, self.sigmas[t], {"c_crossattn": ctx, "y": pooled})
        return recipe_loss(self.cfg, x0, t, eps, self.abar, denoise, relational(self.adapter, ctx), weighting, gen)

    @torch.no_grad()
    def validation_loss(self, n: int = 128) -> float:
        """Eq. 6 (uniform weighting) on one fixed batch of training-split scenes, fixed timesteps and noise."""
        size = self.cfg.options.image_size
        images, captions, _ = world.sample_batch(VALIDATION_SEED, n, "train", size)
        gen = torch.Generator().manual_seed(0)
        t = torch.randint(len(self.sigmas), (n,), generator=gen)
        eps = torch.randn((n, 3, size, size), generator=gen)
        with self.evaluating():
            return float(self.loss(to_pixels(images), self.caption_ids(captions), t, eps, weighting="uniform", gen=gen))

    # --- artefacts -------------------------------------------------------------------------
    def export(self) -> list[Path]:
        parts = (self.model, self.adapter, self.clip, self.unet_config, self.text_config, RECIPE)
        return [save_text_joint(self.export_path, *parts, **self.joint_record())]

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int, steps: int = 30, cfg_scale: float = 3.0, strength: float = 1.0):
        """Text-to-image with contextualized DDIM through the same ComfyUI model as in the host."""
        with self.evaluating():
            cond, uncond = (
                {"c_crossattn": tokens, "y": pooled}
                for tokens, pooled in (encode_batch(self.clip, p) for p in (prompts, [""] * len(prompts)))
            )
            return sample_conditioned(
                self.model,
                self.adapter,
                cond,
                uncond,
                seed,
                steps,
                cfg_scale,
                strength,
                size=self.cfg.options.image_size,
            )

    def sample_grid(self, out_path: Path) -> Path | None:
        if not self.cfg.preview_count:
            return None
        prompts = preview_prompts()
        repeated = [p for p in prompts for _ in range(self.cfg.preview_count)]
        images = self.sample(repeated, seed=0, steps=self.cfg.preview_steps, strength=1.0 if self.cfg.use_bias else 0.0)
        return plots.image_grid(images, rows=len(prompts), out_path=out_path, scale=4)
