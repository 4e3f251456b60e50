"""What the edit sampler stores: the source's attention, recorded during inversion (FateZero's store,
as ContextDiff uses it, paper §4.2), and what that costs in memory.

The store keeps what reproduces the source attention exactly, the queries and keys (``2 N C`` numbers
per layer) instead of the ``heads x N x M`` maps, only for the fused steps, optionally in fp16 on the
CPU. ``store_maps=True`` keeps the full maps instead (for tests and benchmarks). The source latent of
every step (the trajectory the blend mask falls back to) is kept beside them. Where no store fits (Wan at
its native size), the store keeps only the trajectory and the source prompt, and the edit recomputes the
source branch in its own batch (:attr:`AttentionStore.recompute`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
from einops import rearrange


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, heads*d) -> (B, heads, N, d)``."""
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, heads, N, d) -> (B, N, heads*d)``."""
    return rearrange(x, "b h n d -> b n (h d)")


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` per head, float32: ``(B, heads, N, M)``."""
    qh, kh = split_heads(q.float(), heads), split_heads(k.float(), heads)
    return torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)


@dataclass
class AttentionStore:
    """Recorded source attention, keyed by ``(step, layer, kind)``, plus the source trajectory."""

    fused_steps: set[int]
    store_maps: bool = False
    dtype: torch.dtype = torch.float32
    device: str | torch.device = "cpu"
    entries: dict = field(default_factory=dict)
    latents: dict = field(default_factory=dict)  # step -> source latent after that step (k-space)
    # Set instead of recording: the source prompt's conditioning, with which the edit recomputes the source's
    # attention in its own batch at every fused step (docs/design.md 1.3); ``entries`` then stays empty.
    source: list | None = None

    @property
    def recompute(self) -> bool:
        """Whether the source's attention is recomputed beside the target (no recording) rather than stored."""
        return self.source is not None

    def put(self, key: Hashable, q: torch.Tensor, k: torch.Tensor, heads: int) -> None:
        """Record one layer's source attention: its queries and keys (or its maps, with ``store_maps``)."""
        if self.store_maps:
            self.entries[key] = self._keep(attention_probs(q, k, heads))
        else:
            self.entries[key] = (self._keep(q), self._keep(k))

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the store's dtype on its device. From a GPU to the CPU the copy goes to pinned memory without
        blocking (a plain ``.to("cpu")`` makes the host wait for the GPU at every attention call); the
        copy is ordered on the stream before anything that reads it back (:meth:`_fetch`)."""
        x = x.detach().to(self.dtype)
        device = torch.device(self.device)
        if x.device == device:
            return x
        out = torch.empty(x.shape, dtype=self.dtype, device=device, pin_memory=x.is_cuda and device.type == "cpu")
        return out.copy_(x, non_blocking=True)

    @staticmethod
    def _fetch(x: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A recorded tensor on ``device`` without blocking the host: from pinned memory the copy is queued; from
        pageable memory CUDA stages it and returns (a host-to-device copy never waits for the queue then)."""
        return x.to(device, dtype, non_blocking=True) if dtype else x.to(device, non_blocking=True)

    def queries_keys(self, key: Hashable, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The recorded ``(q, k)`` of ``key`` on ``device`` (``None`` if not recorded or maps were stored)."""
        item = self.entries.get(key)
        if item is None or self.store_maps:
            return None
        return self._fetch(item[0], device), self._fetch(item[1], device)

    def probs(self, key: Hashable, heads: int, device: torch.device | str) -> torch.Tensor | None:
        """The source's attention maps of ``key``, float32 on ``device`` (``None`` if not recorded)."""
        item = self.entries.get(key)
        if item is None:
            return None
        if self.store_maps:
            return self._fetch(item, device, torch.float32)
        q, k = item
        return attention_probs(self._fetch(q, device), self._fetch(k, device), heads)

    def layers(self) -> set:
        """The layers that have a recording (the second part of every key)."""
        return {key[1] for key in self.entries}

    def nbytes(self) -> int:
        """Bytes held by the recorded attention (the trajectory is not counted)."""
        total = 0
        for item in self.entries.values():
            for t in item if isinstance(item, tuple) else (item,):
                total += t.numel() * t.element_size()
        return total


def store_bytes_per_frame(
    footprint: list[tuple[int, int]], fused: int, bytes_per_value: int, text_tokens: int = 77
) -> int:
    """Bytes the store needs per frame: q and k of self- and cross-attention for each fused step.

    ``footprint``: ``(tokens, channels)`` of every attention block at the latent size in question.
    Self-attention keeps ``q`` and ``k`` (``2 N C``); cross-attention ``q`` (``N C``) and the text keys.
    """
    per_step = sum(2 * n * c + n * c + text_tokens * c for n, c in footprint)
    return fused * per_step * bytes_per_value


def joint_store_bytes(footprint: list[tuple[int, int, int]], fused: int, bytes_per_value: int) -> int:
    """Bytes the store needs for a DiT's joint attention (docs/design.md 1.2): per fused step and layer, the image
    tokens' queries and every token's keys, ``(N + T + N) C`` numbers.

    ``footprint``: ``(text tokens T, image tokens N, channels C)`` of every joint-attention layer.
    """
    return fused * sum((2 * n + t) * c for t, n, c in footprint) * bytes_per_value


def wan_store_bytes(footprint: list[tuple[int, int, int]], fused: int, bytes_per_value: int) -> int:
    """Bytes the store needs for Wan's attention (docs/design.md 1.3): per fused step and block, the self-attention's
    queries and keys over all video tokens (``2 N C``) and the cross-attention's video queries and text keys
    (``N C + T C``).

    ``footprint``: ``(text tokens T, video tokens N, channels C)`` of every block.
    """
    return fused * sum((3 * n + t) * c for t, n, c in footprint) * bytes_per_value
