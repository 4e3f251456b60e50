"""Mode ``video``: one-shot tuning of the spatio-temporal adapter on one video and its source
prompt (paper §4.2, Table 8), to edit that video later with a target prompt."""

from __future__ import annotations

from pathlib import Path

import torch

from media.video import read_video

from . import plots
from .adapter_mode import FrozenBaseTask


class VideoTask(FrozenBaseTask):
    video = True

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        # One clip: only its frames are decoded and encoded, however long the file is.
        o = cfg.options
        frames, self.fps = read_video(o.video, max_frames=o.frames, stride=o.frame_stride, size=o.image_size)
        self.frames = frames.permute(0, 3, 1, 2) * 2 - 1  # (F, 3, H, W) in [-1, 1]: the preview's reference
        with torch.no_grad():
            self.latents = torch.cat([self.base.encode_images(frames[i : i + 4]) for i in range(0, len(frames), 4)])
            self.tokens, self.pooled = self.base.encode(o.prompt)  # (1, L, C), (1, P) or None
        self.clip = self.latents.shape[0]
        print(f"[trainer] {Path(o.video).name}: a clip of {self.clip} frames at stride {o.frame_stride}")

    def forward(self, gen):
        x0 = self.latents.to(self.device)
        # One timestep per clip, as in one-shot video tuning: the frames share a noise level.
        t = torch.randint(len(self.sigmas), (1,), generator=gen).expand(self.clip).to(self.device)
        eps = torch.randn(x0.shape, generator=gen).to(self.device)
        return self.loss(x0, self.base.conditioning(self.tokens, self.pooled, x0.shape), t, eps, frames=self.clip)

    def sample_grid(self, out_path: Path) -> Path:
        """The first ``preview_count`` frames of the clip above a clip sampled from the source prompt."""
        count = min(self.cfg.preview_count, self.clip)
        shape = self.preview_latent_shape(self.latents.shape[1:], count)
        o = self.cfg.options
        scale = (o.preview_size or o.image_size) / o.image_size
        reference = self.frames[:count]
        if scale != 1:
            size = [max(1, round(n * scale)) for n in reference.shape[-2:]]
            reference = torch.nn.functional.interpolate(reference, size=size, mode="bilinear", antialias=True)
        latents = self.preview(shape, self.tokens, self.pooled, frames=count)
        return plots.image_grid(
            torch.cat([reference, self.to_pixels(latents, reference)]), rows=2, out_path=out_path, scale=2
        )
