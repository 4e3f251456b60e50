"""Mode ``shapes``: the text-conditioned joint model, trained from scratch on the captioned shapes world.

The denoiser (ComfyUI's UNet, pixel space, x0-prediction), the adapter and a CLIP text encoder
(ComfyUI's CLIP text model with CLIP's BPE tokenizer) are trained together with Eq. 6. Each step
renders a fresh batch of ``shapesworld`` scenes of the training split (the held-out colour-shape
pairs never occur) from a seed drawn from the step's generator, so resumed runs replay exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from hostside.joint_checkpoints import save_text_joint
from hostside.pixel_unet import build_joint_model, joint_unet_config
from hostside.text_encoder import build_text_clip, encode_batch, text_config, text_transformer
from shapesworld import world

from . import plots
from .components import build_adapter, checkpoint_blocks
from .diffusion import recipe_loss, relational, training_schedule, vp_x0_predictor
from .joint import sample_conditioned

RECIPE = "shapes"
VALIDATION_SEED = 2**40 + 17  # a fixed batch, outside the training seeds' practical range
UNET_HEADS = 4


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


class ShapesTask(nn.Module):
    def __init__(self, cfg, device):
        super().__init__()
        self.cfg = cfg
        self.unet_config = joint_unet_config(
            channels=3,
            model_channels=cfg.unet_channels,
            context_dim=cfg.context_dim,
            channel_mult=cfg.unet_levels(),
            num_res_blocks=cfg.unet_res_blocks,
            heads=UNET_HEADS,
            attention_from_level=cfg.attention_from_level,
            norm_groups=cfg.norm_groups,
            pooled_dim=cfg.context_dim,
        )
        self.model = build_joint_model(self.unet_config, init_seed=cfg.seed).to(device)
        self.model.diffusion_model.train()
        self.text_config = text_config(cfg.context_dim, cfg.text_layers, cfg.text_heads)
        self.clip = build_text_clip(self.text_config, init_seed=cfg.seed + 2)
        self.text = text_transformer(self.clip).to(device).train().requires_grad_(True)
        torch.manual_seed(cfg.seed + 1)
        self.adapter = build_adapter(cfg, latent_channels=3, context_dim=cfg.context_dim, device=device)
        sigmas, self.abar = training_schedule(self.model, device)
        self.register_buffer("sigmas", sigmas, persistent=False)
        self.trainable = nn.ModuleDict({"unet": self.model.diffusion_model, "adapter": self.adapter, "text": self.text})
        if cfg.grad_checkpointing:
            checkpoint_blocks(self.adapter, self.model.diffusion_model)

    def forward(self, gen: torch.Generator):
        cfg = self.cfg
        seed = int(torch.randint(2**62, (1,), generator=gen))
        images, captions, _ = world.sample_batch(seed, cfg.batch_size, "train", cfg.image_size)
        drop = (torch.rand(cfg.batch_size, generator=gen) < cfg.class_dropout).tolist()
        captions = ["" if d else c for c, d in zip(captions, drop, strict=False)]
        t = torch.randint(len(self.sigmas), (cfg.batch_size,), generator=gen)
        eps = torch.randn((cfg.batch_size, 3, cfg.image_size, cfg.image_size), generator=gen)
        return self.loss(to_pixels(images), captions, t, eps)

    def loss(self, x0: torch.Tensor, captions: list[str], t: torch.Tensor, eps: torch.Tensor, weighting=None):
        device = self.sigmas.device
        x0, t, eps = x0.to(device), t.to(device), eps.to(device)
        ctx, pooled = encode_batch(self.clip, captions)
        denoise = vp_x0_predictor(self.model, self.sigmas[t], {"c_crossattn": ctx, "y": pooled})
        return recipe_loss(self.cfg, x0, t, eps, self.abar, denoise, relational(self.adapter, ctx), weighting)

    @torch.no_grad()
    def validation_loss(self, n: int = 128) -> float:
        """Eq. 6 (uniform weighting) on one fixed batch of training-split scenes, fixed timesteps and noise."""
        images, captions, _ = world.sample_batch(VALIDATION_SEED, n, "train", self.cfg.image_size)
        gen = torch.Generator().manual_seed(0)
        t = torch.randint(len(self.sigmas), (n,), generator=gen)
        eps = torch.randn((n, 3, self.cfg.image_size, self.cfg.image_size), generator=gen)
        was = self.training
        self.eval()
        try:
            return float(self.loss(to_pixels(images), captions, t, eps, weighting="uniform"))
        finally:
            self.train(was)

    # --- artefacts -------------------------------------------------------------------------
    def export(self, output_dir: Path) -> list[Path]:
        path = save_text_joint(
            Path(output_dir) / f"{self.cfg.name}.safetensors",
            self.model,
            self.adapter,
            self.clip,
            self.unet_config,
            self.text_config,
            RECIPE,
            training=self.cfg.to_dict(),
            with_bias=self.cfg.use_bias,
        )
        return [path]

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int, steps: int = 30, cfg_scale: float = 3.0, strength: float = 1.0):
        """Text-to-image with contextualized DDIM through the same ComfyUI model as in the host."""
        was = self.training
        self.eval()
        try:
            cond, uncond = (
                {"c_crossattn": tokens, "y": pooled}
                for tokens, pooled in (encode_batch(self.clip, p) for p in (prompts, [""] * len(prompts)))
            )
            return sample_conditioned(
                self.model, self.adapter, cond, uncond, seed, steps, cfg_scale, strength, size=self.cfg.image_size
            )
        finally:
            self.train(was)

    def sample_grid(self, out_path: Path) -> Path | None:
        if not self.cfg.preview_count:
            return None
        prompts = preview_prompts()
        repeated = [p for p in prompts for _ in range(self.cfg.preview_count)]
        images = self.sample(repeated, seed=0, steps=self.cfg.preview_steps, strength=1.0 if self.cfg.use_bias else 0.0)
        return plots.image_grid(images, rows=len(prompts), out_path=out_path, scale=4)
