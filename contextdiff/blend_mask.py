"""The blend mask of an edit (Prompt-to-Prompt's local blend, as FateZero uses it, paper §4.2).

The cross-attention of the edited words ("cat", "dog"), collected at every fused layer and step,
marks where the edit may change the image; outside the mask the sample is put back on the source
trajectory after every step. The maps are averaged at latent size, smoothed, min-max normalised,
thresholded and the result dilated (FateZero max-pools its 16x16 maps by one pixel for the same
reason: the edited object's border belongs to the edit). Both scale with the latent, so that the
mask covers the same part of the picture at any size: at 512x512 (64x64 latents) a Gaussian of
sigma 2 and a dilation by 4 latent pixels, 1/16 of the side, as FateZero's; small latents get less.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import kornia
import torch
import torch.nn.functional as F

SMOOTH_FRACTION = 1 / 32  # Gaussian sigma, as a fraction of the latent's shorter side
# A map whose spread (max - min) is below this fraction of its max says nothing about where the word is: min-max
# normalisation would turn its rounding noise into a mask (which then differs between devices, dtypes and the
# store and recomputed source). Such a map edits everywhere, as Prompt-to-Prompt's max-only normalisation does.
FLAT_SPREAD = 1e-4
DILATION_FRACTION = 1 / 16  # dilation radius, likewise (FateZero: 1 pixel of its 16x16 maps)


def smoothing_sigma(size: Sequence[int]) -> float:
    """Gaussian sigma in latent pixels for a latent of ``size`` (0: too small to smooth)."""
    sigma = min(size) * SMOOTH_FRACTION
    return sigma if sigma >= 0.5 else 0.0


def dilation_radius(size: Sequence[int]) -> int:
    """Dilation radius in latent pixels for a latent of ``size``."""
    return round(min(size) * DILATION_FRACTION)


class BlendMask:
    """Collects the edited words' cross-attention and turns it into a ``(B, 1, h, w)`` 0/1 mask.

    ``target_tokens`` / ``source_tokens``: positions of the blend words in the target and source
    prompts; a layer's map is the larger of the two (an object removed and the one that replaces it).
    """

    def __init__(self, target_tokens: Sequence[int], source_tokens: Sequence[int], threshold: float):
        self.target_tokens, self.source_tokens = list(target_tokens), list(source_tokens)
        self.threshold = threshold
        # The collected maps, summed per layer resolution: (B, 1, h, w) each, plus how many were added. The mean
        # of their interpolations is the interpolation of these sums (bilinear interpolation is linear), so the
        # mask is made from a few maps whatever the number of layers and steps.
        self.sums: dict[tuple[int, int], torch.Tensor] = {}
        self.count = 0
        self._index: dict = {}

    def _tokens(self, which: str, device: torch.device) -> torch.Tensor:
        """The blend words' positions as an index tensor kept on ``device`` (no copy per layer call)."""
        found = self._index.get((which, device))
        if found is None:
            positions = self.target_tokens if which == "target" else self.source_tokens
            found = self._index[(which, device)] = torch.tensor(positions, dtype=torch.long).to(
                device,
                non_blocking=True,  # staged from pageable memory: no wait for the queue
            )
        return found

    @property
    def active(self) -> bool:
        """Whether any blend word was found (otherwise nothing is collected and there is no mask)."""
        return bool(self.target_tokens or self.source_tokens)

    def add(self, target_probs: torch.Tensor, source_probs: torch.Tensor, hw: Sequence[int]) -> None:
        """One layer's maps ``(B, heads, N, tokens)``; ``hw`` is that layer's spatial size (``h*w = N``)."""
        if not self.active:
            return
        target = (
            target_probs.index_select(-1, self._tokens("target", target_probs.device)) if self.target_tokens else None
        )
        source = (
            source_probs.index_select(-1, self._tokens("source", source_probs.device)) if self.source_tokens else None
        )
        self.add_maps(target, source, hw)

    def add_maps(self, target_maps: torch.Tensor | None, source_maps: torch.Tensor | None, hw: Sequence[int]) -> None:
        """One layer's maps of the blend words alone, ``(B, heads, N, words' tokens)`` (``None``: that prompt has
        none): what :meth:`add` selects from full maps, and what a joint attention gives directly. ``hw``: ``(h, w)``,
        or a video's ``(frames, h, w)`` (Wan's tokens, frame by frame: each frame a map of its own)."""
        maps = [m.mean(dim=(1, 3)) for m in (target_maps, source_maps) if m is not None]
        if not maps:
            return
        m = torch.stack(maps).amax(0)  # (B, N)
        h, w = int(hw[-2]), int(hw[-1])
        if math.prod(int(x) for x in hw) != m.shape[1]:
            return
        m = m.reshape(-1, 1, h, w).float()  # (B * frames, 1, h, w)
        total = self.sums.get((h, w))
        self.sums[(h, w)] = m if total is None else total + m
        self.count += 1

    def mask(self, size: tuple[int, int]) -> torch.Tensor | None:
        """The mask at latent ``size`` from the maps collected so far (``None`` before the first one).

        Min-max normalisation (Prompt-to-Prompt divides by the max only) keeps the threshold
        meaningful when a word's attention is spread out: the most attended pixel is 1, the least 0. A map
        flat to within :data:`FLAT_SPREAD` of its max is all 1 (the edit is not masked there).
        """
        if not self.sums:
            return None
        sums = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in self.sums.values()]
        mean = torch.stack(sums).sum(0) / self.count
        sigma = smoothing_sigma(size)
        if sigma:
            k = 2 * math.ceil(2 * sigma) + 1  # two sigmas each side
            mean = kornia.filters.gaussian_blur2d(mean, (k, k), (sigma, sigma), border_type="reflect")
        lo = mean.flatten(1).amin(1).reshape(-1, 1, 1, 1)
        hi = mean.flatten(1).amax(1).reshape(-1, 1, 1, 1)
        flat = (hi - lo) <= FLAT_SPREAD * hi.abs()  # a tensor: no host read
        mean = (mean - lo) / (hi - lo).clamp(min=1e-12)
        binary = ((mean > self.threshold) | flat).to(mean.dtype)
        r = dilation_radius(size)
        if not r:
            return binary
        return kornia.morphology.dilation(binary, torch.ones(2 * r + 1, 2 * r + 1, device=binary.device))


def latent_blend(
    blend: BlendMask, source_latents: dict, step_of: Callable[[float], int | None]
) -> Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``post_step`` for the sampler: outside the edited words' mask, stay on the source trajectory."""

    def post_step(i: int, x: torch.Tensor, sigma_next: float) -> torch.Tensor:
        src = source_latents.get(step_of(float(sigma_next)))  # a host float from the sampler: no device read
        mask = blend.mask(tuple(x.shape[-2:]))
        if src is None or mask is None or src.shape != x.shape:
            return x
        if x.dim() == 5:  # a video latent (B, C, frames, h, w): the mask's rows are (B * frames), frame by frame
            frames = x.shape[2]
            if mask.shape[0] % frames:
                return x
            mask = mask.reshape(-1, frames, *mask.shape[1:]).transpose(1, 2)
        # Both were made on the sampler's device (the recorded trajectory, the maps): a cast, no copy.
        src = src.to(x.dtype)
        mask = mask.to(x.dtype)
        if mask.shape[0] != x.shape[0]:
            mask = mask[:1].expand(x.shape[0], *mask.shape[1:]) if mask.shape[0] == 1 else mask.amax(0, keepdim=True)
        return mask * x + (1 - mask) * src

    return post_step
