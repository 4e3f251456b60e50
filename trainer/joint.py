"""Mode ``joint``: a denoiser and the adapter trained together from scratch with Eq. 6.

The default recipe is class-conditional generation (paper §4.3) on scikit-learn's bundled
8x8 digits: class tokens condition the UNet (cross-attention) and the adapter alike.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from contextdiff import sampling
from contextdiff.bias import adapter_bias
from contextdiff.joint_model import ClassEmbedding
from hostside.joint_checkpoints import save_joint
from hostside.pixel_unet import build_joint_model, joint_unet_config

from . import plots
from .components import build_adapter, trainable_modules
from .diffusion import prior_noise, recipe_loss, relational, spaced_sigmas, training_schedule, x0_predictor
from .task import Task


def load_digits_tensor() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as (N, 1, 8, 8) in [-1, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2.0 - 1.0
    return x, torch.tensor(d.target, dtype=torch.long)


def split_digits(images, labels, val_fraction: float):
    """A fixed split, the same for every seed, so that runs compare on the same held-out digits."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(12345))
    n_val = int(round(val_fraction * len(images)))
    return (images[order[n_val:]], labels[order[n_val:]]), (images[order[:n_val]], labels[order[:n_val]])


class JointTask(Task):
    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        o = cfg.options
        if o.dataset != "digits":
            raise ValueError(f"joint mode trains on 'digits' (scikit-learn's bundled set); got dataset={o.dataset!r}")
        self.images, self.labels = load_digits_tensor()
        self.num_classes = 10
        if o.image_size != 8:
            self.images = nn.functional.interpolate(
                self.images, size=o.image_size, mode="bilinear", align_corners=False
            )
        (self.images, self.labels), (self.val_images, self.val_labels) = split_digits(
            self.images, self.labels, o.val_fraction
        )
        self.unet_config = joint_unet_config(channels=1, model_channels=o.unet_channels, context_dim=o.context_dim)
        self.model = build_joint_model(self.unet_config, init_seed=cfg.seed).to(device)
        self.model.diffusion_model.train()
        torch.manual_seed(cfg.seed + 1)
        self.adapter = build_adapter(cfg, latent_channels=1, context_dim=o.context_dim, device=device)
        self.classes = ClassEmbedding(self.num_classes, o.context_dim).to(device)
        self.trainable = trainable_modules(cfg, self.model, self.adapter, classes=self.classes)
        sigmas, self.abar = training_schedule(self.model, device)
        self.register_buffer("sigmas", sigmas, persistent=False)

    def forward(self, gen: torch.Generator):
        cfg, device = self.cfg, self.sigmas.device
        idx = torch.randint(len(self.images), (cfg.batch_size,), generator=gen)
        x0 = self.images[idx].to(device)
        labels = self.labels[idx].clone()
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.options.class_dropout
        labels[drop] = self.num_classes
        t = torch.randint(len(self.sigmas), (cfg.batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        return self.loss(x0, labels, t, eps)

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Eq. 6 on the held-out digits with fixed timesteps and noise (comparable across steps and runs)."""
        if not len(self.val_images):
            return None
        gen = torch.Generator().manual_seed(0)
        x0 = self.val_images.to(self.sigmas.device)
        t = torch.randint(len(self.sigmas), (len(x0),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device)
        with self.evaluating():
            return float(self.loss(x0, self.val_labels, t, eps, weighting="uniform"))

    def loss(self, x0, labels, t, eps, weighting=None):
        cfg, device = self.cfg, self.sigmas.device
        t = t.to(device)
        ctx = self.classes(labels.to(device))
        denoise = x0_predictor(self.model, self.sigmas[t], ctx)
        return recipe_loss(cfg, x0, t, eps, self.abar, denoise, relational(self.adapter, ctx), weighting)

    # --- artefacts -------------------------------------------------------------------------
    def export(self) -> list[Path]:
        parts = (self.model, self.adapter, self.classes, self.unet_config)
        return [save_joint(self.export_path, *parts, **self.joint_record())]

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, seed: int, steps: int = 30, cfg_scale: float = 4.0, strength: float = 1.0):
        """Class-conditional contextualized DDIM through the same ComfyUI model as in the host."""
        with self.evaluating():
            return sample_joint(
                self.model,
                self.adapter,
                self.classes,
                labels,
                seed,
                steps,
                cfg_scale,
                strength,
                size=self.cfg.options.image_size,
            )

    def sample_grid(self, out_path: Path) -> Path:
        n = self.cfg.options.sample_classes
        labels = torch.arange(n).repeat_interleave(self.cfg.preview_count) % self.num_classes
        strength = 1.0 if self.cfg.use_bias else 0.0
        with_bias = self.sample(labels, seed=0, steps=self.cfg.preview_steps, strength=strength)
        return plots.image_grid(with_bias, rows=n, out_path=out_path, scale=4)


def sample_joint(model, adapter, classes, labels, seed, steps=20, cfg_scale=2.0, strength=1.0, eta=0.0, size=8):
    """Sample a joint model outside ComfyUI's sampler (trainer previews, metrics); returns pixels."""
    device = next(model.parameters()).device
    labels = labels.to(device)
    cond = classes(labels)
    uncond = classes(torch.full_like(labels, classes.num_classes))
    return sample_conditioned(model, adapter, cond, uncond, seed, steps, cfg_scale, strength, eta, size)


def sample_conditioned(model, adapter, cond, uncond, seed, steps=20, cfg_scale=2.0, strength=1.0, eta=0.0, size=8):
    """Contextualized DDIM of a joint model with classifier-free guidance; returns pixels.

    ``cond``/``uncond``: cross-attention tokens (one row per sample), or every conditioning keyword of
    ``apply_model`` (``{"c_crossattn": tokens, "y": pooled}`` for a model with a pooled-text input)."""
    cond, uncond = (c if isinstance(c, dict) else {"c_crossattn": c} for c in (cond, uncond))
    tokens = cond["c_crossattn"]
    device = tokens.device
    ms = model.model_sampling
    c = model.model_config.unet_config["in_channels"]
    sigmas = spaced_sigmas(ms.sigmas, steps).to(device)
    both = {key: torch.cat([cond[key], uncond[key]]) for key in cond}

    def denoiser(x, sigma, **_):
        c_out, u_out = model.apply_model(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
        return u_out + cfg_scale * (c_out - u_out)

    bias = adapter_bias(adapter, tokens, ms.timestep, float(ms.sigma_max), strength) if strength else None
    x = prior_noise((len(tokens), c, size, size), sigmas[0], seed, device)
    return sampling.sample_contextdiff_ddim(denoiser, x, sigmas, disable=True, bias=bias, eta=eta)
