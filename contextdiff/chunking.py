"""Long videos in overlapping chunks: where the chunks start, and how their frames are joined."""

from __future__ import annotations

import torch


def chunk_starts(n: int, chunk_size: int, overlap: int) -> list[int]:
    """First frame of each chunk of ``chunk_size`` frames, neighbours sharing ``overlap`` frames.

    The last chunk ends at frame ``n``; a clip no longer than one chunk is one chunk.
    """
    if chunk_size < 1 or not 0 <= overlap < chunk_size:
        raise ValueError(f"need chunk_size >= 1 and 0 <= overlap < chunk_size, got {chunk_size} and {overlap}")
    if n <= chunk_size:
        return [0]
    step = chunk_size - overlap
    starts = list(range(0, n - overlap, step))
    return [s for i, s in enumerate(starts) if i == 0 or starts[i - 1] + chunk_size < n]


def crossfade(chunks: list[tuple[int, torch.Tensor]], total: int) -> torch.Tensor:
    """Overlapping chunks ``(start, frames)``, in order, joined by a linear crossfade in each overlap:
    across ``o`` shared frames the earlier chunk's weight falls as the later one's rises."""
    first = chunks[0][1]
    acc = torch.zeros((total,) + tuple(first.shape[1:]), dtype=first.dtype)
    weight = torch.zeros(total)
    shape = (-1,) + (1,) * (first.dim() - 1)
    for start, frames in chunks:
        n = frames.shape[0]
        w = torch.ones(n)
        overlap = int(weight[start : start + n].gt(0).sum())
        if start > 0 and overlap:
            ramp = torch.linspace(0, 1, overlap + 2)[1:-1]
            acc[start : start + overlap] *= (1 - ramp).reshape(shape)
            weight[start : start + overlap] *= 1 - ramp
            w[:overlap] = ramp
        acc[start : start + n] += frames * w.reshape(shape)
        weight[start : start + n] += w
    return acc / weight.reshape(shape)
