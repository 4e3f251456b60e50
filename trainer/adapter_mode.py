"""Mode ``adapter``: the context-aware adapter (and optionally LoRA) for a frozen base model.

The base model's own text encoder gives the CONDITIONING tokens the adapter reads, and its VAE
gives the latents ``x0``; ``x_t`` follows Eq. 1 with the adapter's bias in the model's own process (VP, or
flow matching's ``(1 - sigma, sigma)`` for SD3, Flux and Wan) and the loss is Eq. 6 on the base model's ``x0``
prediction (the denoised latent its samplers consume), so the gradient reaches ``r_phi`` through ``x_t``. The
model gets its family's full conditioning (SDXL: ``y`` from the pooled text and the size embeddings; SD3 and Flux:
the pooled text; Flux: the guidance value), built as ComfyUI's samplers build it, in training and in the previews.
Wan's latents keep their frame axis: a training image is a one-frame clip.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from contextdiff import families, sampling
from contextdiff.adapter_io import save_adapter
from contextdiff.bias import adapter_bias
from contextdiff.checkpoint import atomic_save_file
from contextdiff.schedule import VP
from hostside import families as host_families

from . import data, plots
from .base_model import load_base
from .components import build_adapter, checkpoint_blocks
from .diffusion import prior_noise, recipe_loss, relational, spaced_sigmas, training_levels, x0_predictor
from .lora import add_lora, lora_state_dict
from .task import Task


class FrozenBaseTask(Task):
    """What ``adapter`` and ``video`` modes share: the frozen base, the adapter, the loss."""

    video = False

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        self.base = load_base(cfg, device)
        model = self.base.model
        self.model = model
        self.process = families.process_of(model.model_sampling)
        self.sigmas, self.levels = training_levels(model, device)
        latent_channels = model.latent_format.latent_channels
        context_dim = host_families.identify(model).context_dim
        rank = cfg.options.lora_rank
        if self.process is not VP and (self.video or rank > 0):
            what = "--mode video" if self.video else "--lora_rank"
            raise SystemExit(
                f"{what} runs on SD1.x, SD2.x and SDXL; on this flow-matching model "
                f"({families.family_of_key(self.base.family).name}) train the adapter with --mode adapter and "
                "--lora_rank 0"
            )
        torch.manual_seed(cfg.seed)
        self.adapter = build_adapter(cfg, latent_channels, context_dim, device, video=self.video)
        self.loras = add_lora(model.diffusion_model, rank) if rank > 0 else {}
        modules = {"adapter": self.adapter}
        if self.loras:
            modules["lora"] = nn.ModuleDict({k.replace(".", "__"): v for k, v in self.loras.items()})
        self.trainable = nn.ModuleDict(modules)
        if cfg.grad_checkpointing:  # the UNet's blocks too; a DiT's block lists differ by family: the adapter's only
            checkpoint_blocks(self.adapter, model.diffusion_model if self.process is VP else None)

    def loss(self, x0, cond: dict, t, eps, frames=None):
        """Eq. 6 for latents ``x0``; ``cond``: the UNet's conditioning keywords (:meth:`BaseBundle.conditioning`)."""
        denoise = x0_predictor(self.model, self.sigmas[t], cond)
        tokens = cond["c_crossattn"]
        r = relational(self.adapter, tokens[:1] if frames else tokens, frames, self.levels.adapter_time)
        return recipe_loss(self.cfg, x0, t, eps, self.levels, denoise, r)

    def export(self) -> list[Path]:
        out = [save_adapter(self.adapter, self.export_path, self.base.family, training=self.cfg.to_dict())]
        if self.loras:
            meta = {"contextdiff_training": json.dumps(self.cfg.to_dict(), default=str)}
            out.append(atomic_save_file(lora_state_dict(self.loras), self.cfg.lora_path, meta))
        return out

    @torch.no_grad()
    def preview(self, x_shape, tokens, pooled=None, frames=None, seed=0):
        """Contextualized DDIM from the current adapter (no CFG, ``preview_steps`` steps): a quick look.

        ``tokens`` (1, L, C) and ``pooled`` (1, P) or None: one prompt, conditioning the whole batch."""
        ms = self.model.model_sampling
        sigmas = spaced_sigmas(self.sigmas, self.cfg.preview_steps)
        x = prior_noise(x_shape, sigmas[0], seed, self.device, self.process)
        timestep = families.adapter_timestep(ms)
        bias = adapter_bias(
            self.adapter, tokens[:1], timestep, float(ms.sigma_max), 1.0, frames=frames, process=self.process
        )
        cond = self.base.conditioning(tokens, pooled, x_shape)

        def denoiser(x_, s, **_):
            return self.model.apply_model(x_, s, **cond)

        with self.evaluating(self.adapter):
            return sampling.sample_contextdiff_ddim(denoiser, x, sigmas, disable=True, bias=bias, process=self.process)

    def preview_latent_shape(self, latent_shape, count: int) -> tuple[int, ...]:
        """``(count, C, h, w)`` (Wan: ``(count, C, F, h, w)``) of latents for ``preview_size`` pixels, scaled from one
        training latent's shape ``(C, h, w)`` (``(C, F, h, w)``)."""
        o = self.cfg.options
        side = o.preview_size or o.image_size
        h, w = (max(1, round(n * side / o.image_size)) for n in latent_shape[-2:])
        return (count, *latent_shape[:-2], h, w)

    def to_pixels(self, latents, like: torch.Tensor):
        """Decoded latents as (B, 3, H, W) in [-1, 1] (a video latent's frames in order), at the size of the
        reference pictures ``like``."""
        if self.base.decode_latents is not None:
            pixels = self.base.decode_latents(latents)
            pixels = pixels.reshape(-1, *pixels.shape[-3:]).permute(0, 3, 1, 2) * 2 - 1  # a video VAE: (B, F, H, W, 3)
        else:  # a base without a decoder (research, tests): the first latent channels
            frames = latents.movedim(2, 1).flatten(0, 1) if latents.dim() == 5 else latents
            pixels = frames[:, :3].tanh()
        if pixels.shape[-2:] != like.shape[-2:]:
            pixels = nn.functional.interpolate(pixels.float(), size=like.shape[-2:], mode="nearest")
        return pixels.to(like.device)


SKIPPED_NAMED = 20  # skipped items named per kind; the rest are counted


def report_skipped(found: data.CaptionedImages) -> None:
    """The counts of skipped items and each one's name and reason (the first :data:`SKIPPED_NAMED` of a kind)."""
    if not found.skipped:
        return
    counts = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in found.skipped.items())
    print(f"[trainer] skipped {counts}; using {len(found)} image-caption pairs")
    for what in found.skipped.values():
        for line in what[:SKIPPED_NAMED]:
            print(f"[trainer] skipped: {line}")
        if len(what) > SKIPPED_NAMED:
            print(f"[trainer] skipped: ... and {len(what) - SKIPPED_NAMED} more of this kind")


class AdapterTask(FrozenBaseTask):
    def __init__(self, cfg, device):
        # Every file is read before the base model is loaded: bad data stops (or is skipped) in seconds.
        found = data.scan(cfg.options.dataset, cfg.options.on_bad_data)
        report_skipped(found)
        super().__init__(cfg, device)
        self.data = found
        self.skipped = {k: len(v) for k, v in self.data.skipped.items()}
        self._cache = {}
        if cfg.options.cache_latents:
            for i in range(len(self.data)):
                self._item(i)

    @torch.no_grad()
    def _text(self, caption: str) -> tuple:
        """The caption's conditioning tokens (L, context_dim) and pooled embedding (P,) or None."""
        tokens, pooled = self.base.encode(caption)
        return tokens[0], None if pooled is None else pooled[0]

    @torch.no_grad()
    def _item(self, i):
        if i in self._cache:
            return self._cache[i]
        path, caption = self.data.items[i]
        pixels = data.load_image(path, self.cfg.options.image_size).unsqueeze(0)
        item = (self.base.encode_images(pixels)[0], self._text(caption))
        self.latent_shape = tuple(item[0].shape)
        if self.cfg.options.cache_latents:
            self._cache[i] = item
        return item

    def forward(self, gen):
        cfg = self.cfg
        idx = torch.randint(len(self.data), (cfg.batch_size,), generator=gen).tolist()
        items = [self._item(i) for i in idx]
        x0 = torch.stack([a for a, _ in items]).to(self.device)
        length = min(c.shape[0] for _, (c, _) in items)
        tokens = torch.stack([c[:length] for _, (c, _) in items]).to(self.device)
        pooled = None if items[0][1][1] is None else torch.stack([p for _, (_, p) in items]).to(self.device)
        t = torch.randint(len(self.sigmas), (cfg.batch_size,), generator=gen).to(self.device)
        eps = torch.randn(x0.shape, generator=gen).to(self.device)
        return self.loss(x0, self.base.conditioning(tokens, pooled, x0.shape), t, eps)

    def sample_grid(self, out_path: Path) -> Path:
        """Each of the first ``preview_count`` training images beside a sample from its caption."""
        side = self.cfg.options.preview_size or self.cfg.options.image_size
        shown = []
        for i in range(min(self.cfg.preview_count, len(self.data))):
            path, caption = self.data.items[i]
            tokens, pooled = self._cache[i][1] if i in self._cache else self._text(caption)
            image = data.load_image(path, side).permute(2, 0, 1).unsqueeze(0) * 2 - 1
            shape = self.preview_latent_shape(self.latent_shape, 1)
            latents = self.preview(
                shape,
                tokens.unsqueeze(0).to(self.device),
                None if pooled is None else pooled.unsqueeze(0).to(self.device),
                seed=i,
            )
            shown += [image, self.to_pixels(latents, image)]
        return plots.image_grid(torch.cat(shown), rows=len(shown) // 2, out_path=out_path, scale=2)
