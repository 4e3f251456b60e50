"""Attention store and fusion for editing (FateZero's split, as ContextDiff uses it, paper §4.2).

During inversion the source's attention is *recorded*; during editing it is *fused*:
self-attention takes the source's maps, cross-attention keeps the source's maps for the words
the two prompts share, and the cross-attention of the edited words gives a blend mask that
keeps unedited regions on the source trajectory.

Memory: the store keeps what reproduces the source attention exactly, the queries and keys
(``2 N C`` numbers per layer) instead of the ``heads x N x M`` maps, only for the fused steps, and
optionally in fp16 on the CPU. ``store_maps=True`` keeps the full maps (for tests and benchmarks).

Everything here works on plain tensors; the nodes wire :class:`AttentionEditor` into ComfyUI's
attention replace hooks on a clone of the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b h n d -> b n (h d)")


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` per head, float32: ``(B, heads, N, M)``."""
    qh, kh = split_heads(q.float(), heads), split_heads(k.float(), heads)
    return torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)


def attend(q, k, v, heads: int, probs: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention ``(B, N, heads*d)``; with ``probs`` given, those maps weight ``v``."""
    if probs is None:
        out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads))
        return merge_heads(out)
    return merge_heads((probs.to(v.dtype) @ split_heads(v, heads)))


def sparse_causal(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Keys/values for sparse-causal attention: frame ``f`` sees frames 0 and ``f-1`` (Tune-A-Video).

    ``x``: ``(S*frames, N, C)`` (clips of consecutive frames) -> ``(S*frames, 2N, C)``.
    """
    clips = rearrange(x, "(s f) n c -> s f n c", f=frames)
    first = clips[:, :1].expand_as(clips)
    prev = torch.cat([clips[:, :1], clips[:, :-1]], dim=1)
    return rearrange(torch.cat([first, prev], dim=2), "s f n c -> (s f) n c")


def token_alignment(source: list[str], target: list[str]) -> list[tuple[int, int]]:
    """``(target_index, source_index)`` pairs of tokens the two prompts share, in order.

    A longest-common-subsequence alignment, as Prompt-to-Prompt's "refine" edit: shared words
    keep the source's cross-attention even when words are inserted or removed around them.
    """
    n, m = len(source), len(target)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = table[i + 1][j + 1] + 1 if source[i] == target[j] else max(table[i + 1][j], table[i][j + 1])
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if source[i] == target[j]:
            pairs.append((j, i))
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


@dataclass
class AttentionStore:
    """Recorded source attention, keyed by ``(step, layer, kind)``, plus the source trajectory."""

    fused_steps: set[int]
    store_maps: bool = False
    dtype: torch.dtype = torch.float32
    device: str | torch.device = "cpu"
    entries: dict = field(default_factory=dict)
    latents: dict = field(default_factory=dict)   # step -> source latent after that step (k-space)
    meta: dict = field(default_factory=dict)

    def put(self, key, q, k, heads: int):
        if self.store_maps:
            self.entries[key] = attention_probs(q, k, heads).to(self.device, self.dtype)
        else:
            self.entries[key] = (q.detach().to(self.device, self.dtype), k.detach().to(self.device, self.dtype))

    def probs(self, key, heads: int, device) -> torch.Tensor | None:
        item = self.entries.get(key)
        if item is None:
            return None
        if self.store_maps:
            return item.to(device, torch.float32)
        q, k = item
        return attention_probs(q.to(device), k.to(device), heads)

    def nbytes(self) -> int:
        total = 0
        for item in self.entries.values():
            for t in (item if isinstance(item, tuple) else (item,)):
                total += t.numel() * t.element_size()
        return total


class AttentionEditor:
    """Callable pieces for ComfyUI's ``attn1``/``attn2`` replace hooks.

    ``mode`` is ``record`` (inversion), ``fuse`` (editing) or ``plain``. ``step_of(sigma)`` maps the
    current sigma to a step index shared by inversion and editing (``None`` outside the schedule).
    Only the conditional rows of a CFG batch are recorded or fused; the unconditional ones run
    untouched. ``frames`` turns self-attention sparse-causal (video).
    """

    def __init__(self, store: AttentionStore, mode: str, step_of, frames: int | None = None,
                 shared_tokens: list[tuple[int, int]] = (), blend_target: list[int] = (),
                 blend_source: list[int] = ()):
        self.store, self.mode, self.step_of, self.frames = store, mode, step_of, frames
        shared = list(shared_tokens)
        self.shared_tgt = torch.tensor([t for t, _ in shared], dtype=torch.long)
        self.shared_src = torch.tensor([s for _, s in shared], dtype=torch.long)
        self.blend_target, self.blend_source = list(blend_target), list(blend_source)
        self.mask_maps: dict[int, list[torch.Tensor]] = {}   # step -> per-layer (B, 1, h, w) maps

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def cond_rows(extra: dict, batch: int) -> torch.Tensor:
        flags = extra.get("cond_or_uncond") or [0]
        chunk = batch // len(flags)
        rows = [i * chunk + j for i, f in enumerate(flags) if f == 0 for j in range(chunk)]
        return torch.tensor(rows, dtype=torch.long)

    def _step(self, extra: dict):
        sigmas = extra.get("sigmas")
        if sigmas is None:
            return None
        return self.step_of(float(sigmas.reshape(-1)[0]))

    @staticmethod
    def _layer(extra: dict):
        block = extra.get("block") or ("?", 0)
        return (block[0], block[1], extra.get("block_index", 0))

    def _self_kv(self, k, v):
        if self.frames and self.frames > 1 and k.shape[0] % self.frames == 0:
            return sparse_causal(k, self.frames), sparse_causal(v, self.frames)
        return k, v

    # -- hooks -----------------------------------------------------------------------------------
    def _mixed(self, q, k, v, heads, rows, cond_out):
        """Unconditional rows attend normally; conditional ``rows`` get ``cond_out``."""
        out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=v.dtype, device=v.device)
        keep = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
        keep[rows] = False
        if keep.any():
            out[keep] = attend(q[keep], k[keep], v[keep], heads)
        out[rows] = cond_out
        return out

    def self_attention(self, q, k, v, extra):
        heads = extra["n_heads"]
        step = self._step(extra)
        if self.mode == "plain" or step not in self.store.fused_steps:
            return attend(q, *self._self_kv(k, v), heads)
        rows = self.cond_rows(extra, q.shape[0]).to(q.device)
        key = (step, self._layer(extra), "self")
        if self.mode == "record":
            # Raw per-frame keys: the sparse-causal keys are rebuilt from them when fusing.
            if self.store.store_maps:
                self.store.put(key, q[rows], self._self_kv(k[rows], v[rows])[0], heads)
            else:
                self.store.put(key, q[rows], k[rows], heads)
            return attend(q, *self._self_kv(k, v), heads)
        if self.store.store_maps:
            probs = self.store.probs(key, heads, q.device)
        else:
            item = self.store.entries.get(key)
            probs = None if item is None else attention_probs(
                item[0].to(q.device), self._self_kv(item[1].to(q.device), item[1].to(q.device))[0], heads)
        kk, vv = self._self_kv(k, v)
        if probs is None or probs.shape[0] != len(rows):
            return attend(q, kk, vv, heads)
        return self._mixed(q, kk, vv, heads, rows, attend(q[rows], kk[rows], vv[rows], heads, probs=probs))

    def cross_attention(self, q, k, v, extra):
        heads = extra["n_heads"]
        step = self._step(extra)
        if self.mode == "plain" or step not in self.store.fused_steps:
            return attend(q, k, v, heads)
        rows = self.cond_rows(extra, q.shape[0]).to(q.device)
        key = (step, self._layer(extra), "cross")
        if self.mode == "record":
            self.store.put(key, q[rows], k[rows], heads)
            return attend(q, k, v, heads)
        src = self.store.probs(key, heads, q.device)
        if src is None or src.shape[0] != len(rows):
            return attend(q, k, v, heads)
        probs = attention_probs(q[rows], k[rows], heads)
        self._collect_mask(step, probs, src, extra)
        if len(self.shared_tgt):
            probs[..., self.shared_tgt.to(q.device)] = src[..., self.shared_src.to(q.device)]
        return self._mixed(q, k, v, heads, rows, attend(q[rows], k[rows], v[rows], heads, probs=probs))

    def _collect_mask(self, step, tgt_probs, src_probs, extra):
        """Cross-attention of the edited words, as a (B, 1, h, w) map of this layer."""
        maps = []
        if self.blend_target:
            maps.append(tgt_probs[..., self.blend_target].mean(dim=(1, 3)))
        if self.blend_source:
            maps.append(src_probs[..., self.blend_source].mean(dim=(1, 3)))
        if not maps:
            return
        m = torch.stack(maps).amax(0)                          # (B, N)
        h, w = (extra.get("activations_shape") or [0, 0, 0, 0])[2:]
        if h * w != m.shape[1]:
            return
        self.mask_maps.setdefault(step, []).append(m.reshape(-1, 1, h, w))

    def blend_mask(self, size: tuple[int, int], threshold: float) -> torch.Tensor | None:
        """Mean of all collected maps at latent ``size``, min-max normalised per sample, thresholded.

        Min-max (rather than Prompt-to-Prompt's divide-by-max) keeps the threshold meaningful when a
        word's attention is spread out: the most attended pixels are 1, the least 0.
        """
        layers = [F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                  for maps in self.mask_maps.values() for m in maps]
        if not layers:
            return None
        mean = torch.stack(layers).mean(0)
        lo = mean.flatten(1).amin(1).reshape(-1, 1, 1, 1)
        hi = mean.flatten(1).amax(1).reshape(-1, 1, 1, 1)
        mean = (mean - lo) / (hi - lo).clamp(min=1e-12)
        return (mean > threshold).to(mean.dtype)
