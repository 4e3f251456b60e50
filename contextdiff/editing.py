"""Inversion-then-edit orchestration that is independent of the host: steps, windows, blending.

``t in [fuse_start * T, T]`` (paper §4.2: fuse_start = 0.5, T = 20 DDIM steps) are the first
``(1 - fuse_start)`` of the sampling steps, counted from the noisiest.
"""

from __future__ import annotations

import torch


class StepIndex:
    """Maps a sigma to its index in a descending sampling schedule (``None`` if not in it)."""

    def __init__(self, sigmas_desc: torch.Tensor, rtol: float = 1e-4):
        self.sigmas = [float(s) for s in sigmas_desc]
        self.rtol = rtol

    def __call__(self, sigma: float):
        for i, s in enumerate(self.sigmas):
            if abs(sigma - s) <= self.rtol * max(abs(s), 1e-8):
                return i
        return None


def fused_steps(n_steps: int, fuse_start: float) -> set[int]:
    """Sampling-step indices (0 = noisiest) inside ``t in [fuse_start*T, T]``."""
    if not 0.0 <= fuse_start <= 1.0:
        raise ValueError(f"fuse_start must be in [0, 1], got {fuse_start}")
    return set(range(int(round((1.0 - fuse_start) * n_steps))))


def trajectory_recorder(store_latents: dict, step_of):
    """An inversion callback keeping the inverted latent at every level (k-space) by step index."""

    def callback(info):
        step = step_of(float(info["sigma"]))
        if step is not None:
            store_latents[step] = info["x"].detach().clone()

    return callback


def latent_blend(editor, source_latents: dict, step_of, threshold: float):
    """``post_step`` for the sampler: outside the edited words' mask, stay on the source trajectory."""

    def post_step(i, x, sigma_next):
        step = step_of(float(sigma_next))
        src = source_latents.get(step)
        mask = editor.blend_mask(tuple(x.shape[-2:]), threshold)
        if src is None or mask is None:
            return x
        src = src.to(x.device, x.dtype)
        if src.shape != x.shape:
            return x
        mask = mask.to(x.device, x.dtype)
        if mask.shape[0] != x.shape[0]:
            mask = mask[:1].expand(x.shape[0], -1, -1, -1) if mask.shape[0] == 1 else mask.amax(0, keepdim=True)
        return mask * x + (1 - mask) * src

    return post_step
