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
        frames, self.fps = read_video(cfg.video, max_frames=None, stride=cfg.frame_stride, size=cfg.image_size)
        if frames.shape[0] < 1:
            raise ValueError(f"{cfg.video} gave no frames")
        with torch.no_grad():
            self.latents = torch.cat([self.base.encode_images(frames[i:i + 4]) for i in range(0, len(frames), 4)])
            self.ctx = self.base.encode_text(cfg.prompt).to(device)
        self.clip = min(cfg.frames, self.latents.shape[0])
        print(f"[trainer] {Path(cfg.video).name}: {len(frames)} frames at stride {cfg.frame_stride}, "
              f"clips of {self.clip}")

    def forward(self, gen):
        n = self.latents.shape[0]
        start = int(torch.randint(n - self.clip + 1, (1,), generator=gen))
        x0 = self.latents[start:start + self.clip].to(self.device)
        # One timestep per clip, as in one-shot video tuning: the frames share a noise level.
        t = torch.randint(len(self.sigmas), (1,), generator=gen).expand(self.clip).to(self.device)
        eps = torch.randn(x0.shape, generator=gen).to(self.device)
        ctx = self.ctx.expand(self.clip, -1, -1)
        return self.loss(x0, ctx, t, eps, frames=self.clip)

    def sample_grid(self, out_path: Path) -> Path:
        x0 = self.latents[: self.clip].to(self.device)
        latents = self.preview(tuple(x0.shape), self.ctx, frames=self.clip)
        return plots.image_grid(torch.cat([self.to_pixels(x0), self.to_pixels(latents)]), rows=2,
                                out_path=out_path, scale=2)
