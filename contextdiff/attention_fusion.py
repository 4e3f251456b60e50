"""Attention record and fusion for editing (FateZero's split, as ContextDiff uses it, paper §4.2).

During inversion the source's attention is *recorded* (:mod:`contextdiff.attention_store`); during
editing it is *fused*: self-attention takes the source's maps, cross-attention keeps the source's
maps for the words the two prompts share, and the cross-attention of the edited words feeds the
blend mask (:mod:`contextdiff.blend_mask`).

Self-attention with the source's maps is exactly ``SDPA(q_src, k_src, v)``: the fused kernel runs
it, no ``heads x N x N`` map is built. Explicit maps are made only where they are edited
(cross-attention, ``N x 77``).

Everything here works on plain tensors; the nodes wire :class:`AttentionEditor` into ComfyUI's
attention replace hooks on a clone of the model, and pass the attention to use where nothing is
fused (ComfyUI's own kernel, or another pack's patch that was there first).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from einops import rearrange

from .attention_store import AttentionStore, attention_probs, merge_heads, split_heads
from .blend_mask import BlendMask

# The ``cond_or_uncond`` flag of the rows an edit adds to recompute the source's branch beside the target's
# (docs/design.md 1.3): neither the positive (0) nor the negative (1), so nothing fuses into them.
SOURCE_ROW = "contextdiff_source"

# (q, k, v, extra) -> output, the signature of ComfyUI's attention replace patches.
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-head attention ``(B, N, heads*d)``; with ``probs`` given, those maps weight ``v``."""
    if probs is None:
        out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads))
        return merge_heads(out)
    return merge_heads(probs.to(v.dtype) @ split_heads(v, heads))


def default_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
    """Plain multi-head attention with the head count of ComfyUI's ``extra_options``."""
    return attend(q, k, v, extra["n_heads"])


def sparse_causal(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Keys/values for sparse-causal attention: frame ``f`` sees frames 0 and ``f-1`` (Tune-A-Video).

    ``x``: ``(S*frames, N, C)`` (clips of consecutive frames) -> ``(S*frames, 2N, C)``.
    """
    clips = rearrange(x, "(s f) n c -> s f n c", f=frames)
    first = clips[:, :1].expand_as(clips)
    prev = torch.cat([clips[:, :1], clips[:, :-1]], dim=1)
    return rearrange(torch.cat([first, prev], dim=2), "s f n c -> (s f) n c")


def batch_rows(flags: Sequence[int], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(conditional rows, other rows)`` of a batch made of ``len(flags)`` equal chunks, ComfyUI's
    ``cond_or_uncond`` order (0 = the positive prompt), as CPU index tensors."""
    return chunk_rows([f == 0 for f in flags], batch)


def chunk_rows(selected: Sequence[bool], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows of the selected chunks, the other rows)`` of a batch made of ``len(selected)`` equal chunks."""
    chunk = batch // len(selected)
    rows = [[i * chunk + j for j in range(chunk)] for i in range(len(selected))]
    chosen = [r for i, s in enumerate(selected) if s for r in rows[i]]
    other = [r for i, s in enumerate(selected) if not s for r in rows[i]]
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(other, dtype=torch.long)


def one_hot_columns(values: torch.Tensor, positions: Sequence[int], rows: int | None = None) -> torch.Tensor:
    """``values`` ``(B, heads, L, d)`` with one column per position appended, 1 at that position's row: attention
    over these values returns, in the appended columns, the attention weights of those positions (the rows of a
    map, normalised over every key, without building the map). ``rows``: of the new columns' 1s, ``L`` if none."""
    extra = torch.zeros(*values.shape[:-1], len(positions), dtype=values.dtype, device=values.device)
    for column, position in enumerate(positions):
        if position < (values.shape[-2] if rows is None else rows):
            extra[..., position, column] = 1
    return torch.cat([values, extra], dim=-1)


class JointColumns(NamedTuple):
    """The index tensors of :func:`joint_fused_attention` for one pair of text lengths: the target's and the
    source's positions of the shared words (those within both texts), and the target's other words."""

    target: torch.Tensor
    source: torch.Tensor
    own: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> JointColumns:
        return JointColumns(*(x.to(device, non_blocking=non_blocking) for x in self))


def joint_columns(shared: Sequence[tuple[int, int]], t: int, t_src: int) -> JointColumns:
    """:class:`JointColumns` (on the CPU) of the ``(target, source)`` pairs ``shared`` for texts of ``t`` and
    ``t_src`` tokens."""
    pairs = [(a, b) for a, b in shared if a < t and b < t_src]
    own = sorted(set(range(t)) - {a for a, _ in pairs})
    target, source = [a for a, _ in pairs], [b for _, b in pairs]
    return JointColumns(*(torch.tensor(x, dtype=torch.long) for x in (target, source, own)))


def joint_fused_attention(
    q_src: torch.Tensor,
    k_src: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    shared: Sequence[tuple[int, int]],
    blend_target: Sequence[int] = (),
    blend_source: Sequence[int] = (),
    image_keys: bool = True,
    columns: Callable[[int, int], JointColumns] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The image tokens' fused joint attention (docs/design.md 1.2), all ``(B, heads, L, d)``.

    ``q_src`` ``(.., N, d)``: the source's image queries; ``k_src`` ``(.., T_s + N, d)``: its keys, text first;
    ``q`` ``(.., N, d)``: the target's image queries; ``k``, ``v`` ``(.., T + N, d)``: the target's keys and values.
    ``shared``: ``(target, source)`` text positions of the words both prompts share. The fused map weighs every
    image token and shared word by the source's attention, the other words by the target's (the UNet's rule on one
    softmax): ``SDPA(q_src, k_src, V_a) + SDPA(q, k, V_b)``, ``V_a`` the target's values at the source's image
    tokens and shared words, ``V_b`` those of the target's other words. Returns the output ``(.., N, d)`` and the
    blend words' maps, target's ``(.., N, len(blend_target))`` and source's ``(.., N, len(blend_source))``.
    ``image_keys=False``: the keys are the text's alone (a separate cross-attention, Wan's: docs/design.md 1.3);
    the same two kernels then give the UNet's cross-attention rule, shared words' columns from the source's map.
    ``columns(t, t_src)``: ``shared`` as index tensors on the device for texts of those lengths (the editor makes
    them once per run); by default they are made here, a copy to the device at every call.
    """
    n = q.shape[-2]
    m = n if image_keys else 0  # image tokens among the keys
    t, t_src = k.shape[-2] - m, k_src.shape[-2] - m
    if n != q_src.shape[-2] or t < 0 or t_src < 0:
        raise ValueError(f"the source's {q_src.shape[-2]} image tokens do not match the target's {n}")
    d = v.shape[-1]
    cols = columns(t, t_src) if columns is not None else joint_columns(shared, t, t_src).to(v.device)
    v_a = v.new_zeros(*v.shape[:-2], t_src + m, d)
    v_a[..., t_src:, :] = v[..., t:, :]
    if len(cols.target):
        v_a[..., cols.source, :] = v[..., cols.target, :]
    out_a = F.scaled_dot_product_attention(q_src, k_src, one_hot_columns(v_a, blend_source, t_src))
    if not len(cols.own) and not blend_target:  # every word shared, none to map: the target's map adds nothing
        return out_a[..., :d], out_a[..., d:d], out_a[..., d:]
    v_b = v.new_zeros(v.shape)
    v_b[..., cols.own, :] = v[..., cols.own, :]
    out_b = F.scaled_dot_product_attention(q, k, one_hot_columns(v_b, blend_target, t))
    return out_a[..., :d] + out_b[..., :d], out_b[..., d:], out_a[..., d:]


Movable = TypeVar("Movable", torch.Tensor, JointColumns)


class DeviceIndex:
    """Index tensors (or :class:`JointColumns`) made once per (key, device) and kept there: a CPU index moved to the
    GPU with a plain ``.to(device)`` at every attention call is a blocking copy (the host waits for the device's
    queue)."""

    def __init__(self) -> None:
        self._cache: dict = {}

    def get(self, key: Hashable, device: torch.device, make: Callable[[], Movable]) -> Movable:
        found = self._cache.get((key, device))
        if found is None:
            # From pageable memory CUDA stages the copy and returns: no wait for the queued kernels.
            found = self._cache[(key, device)] = make().to(device, non_blocking=True)
        return found


class AttentionEditor:
    """Callable pieces for ComfyUI's ``attn1``/``attn2`` replace hooks.

    ``mode`` is ``record`` (inversion), ``fuse`` (editing) or ``plain``. ``step_of(sigma)`` maps the
    current sigma to a step index shared by inversion and editing (``None`` outside the schedule).
    Only the conditional rows of a CFG batch are recorded or fused; the unconditional ones run
    untouched. ``frames`` turns self-attention sparse-causal (video). ``shared_tokens`` are
    ``(target, source)`` positions whose cross-attention keeps the source's maps; ``blend`` collects
    the edited words' maps. ``fused`` and ``missing`` count the layer calls that were fused and
    those that found no recording to fuse (the caller reports the latter).

    A positive of several entries (ComfyUI's ConditioningCombine: the model runs each entry and averages the
    predictions) is told entry by entry (:meth:`positive_entries`, from the uuids ComfyUI gives each entry's
    chunk of the batch): the inversion records its first entry; the edit fuses the source's self-attention into
    every entry, and the shared words' cross-attention and the blend maps into ``target_entry`` alone (the entry
    whose tokens the shared words were aligned in; ``None``: the only entry, else none). ``entry_calls`` counts the
    entry chunks fused by self-attention, ``cross_skipped`` the cross-attention calls of fused steps that had no
    entry to fuse the words into.
    """

    def __init__(
        self,
        store: AttentionStore,
        mode: str,
        step_of: Callable[[float], int | None],
        frames: int | None = None,
        shared_tokens: Sequence[tuple[int, int]] = (),
        blend: BlendMask | None = None,
        target_entry: int | None = None,
    ):
        if mode not in ("record", "fuse", "plain"):
            raise ValueError(f"unknown attention mode {mode!r}; use record, fuse or plain")
        self.store, self.mode, self.step_of, self.frames = store, mode, step_of, frames
        shared = self.shared_pairs = list(shared_tokens)
        self.shared_tgt = torch.tensor([t for t, _ in shared], dtype=torch.long)
        self.shared_src = torch.tensor([s for _, s in shared], dtype=torch.long)
        self.blend = blend
        self.fused = 0
        self.missing = 0
        self.target_entry = target_entry
        self.entries: dict = {}  # uuid of a positive entry -> its index (none told: every conditional chunk is one)
        self.self_fused = 0  # self-attention calls fused (of ``fused``)
        self.entry_calls = 0
        self.cross_skipped = 0
        self.level: float | None = None  # the current model call's sigma, told by the sampler (at_level)
        self.index = DeviceIndex()
        self._last_layout: dict = {}  # kind -> (the model call's cond_or_uncond list, (batch, device), rows)

    def at_level(self, sigma: float) -> None:
        """The sampler's ``on_level`` hook: the next model call runs at ``sigma`` (a host float), so that the
        hooks look their step up without reading the device's sigma at every attention call."""
        self.level = sigma

    def positive_entries(self, uuids: Sequence) -> None:
        """The sampler's hook: the uuids of the positive's entries, in order (ComfyUI tags each chunk with one)."""
        self.entries = {u: i for i, u in enumerate(uuids)}

    @property
    def replaces_self_attention(self) -> bool:
        """Whether self-attention output is the editor's own (not the given attention's) somewhere."""
        return self.mode == "fuse" and bool(self.store.fused_steps)

    @property
    def replaces_cross_attention(self) -> bool:
        """Whether cross-attention probabilities are edited (shared words keep the source's maps)."""
        return self.mode == "fuse" and bool(self.store.fused_steps) and len(self.shared_tgt) > 0

    # -- helpers ---------------------------------------------------------------------------------
    def _step(self, extra: dict) -> int | None:
        if self.level is not None:
            return self.step_of(self.level)
        sigmas = extra.get("sigmas")  # a run without the level hook: read the device's sigma (a host sync)
        if sigmas is None:
            return None
        return self.step_of(float(sigmas.reshape(-1)[0]))

    def _selected(self, extra: dict, kind: str) -> tuple[bool, ...]:
        """Which chunks of the batch this call records or fuses: the conditional ones, and of a positive of several
        entries, the first when recording and the target entry for the words' cross-attention."""
        flags = extra.get("cond_or_uncond") or [0]
        if not self.entries:
            return tuple(f == 0 for f in flags)
        uuids = extra.get("uuids") or [None] * len(flags)
        entry = [self.entries.get(u) if f == 0 else None for f, u in zip(flags, uuids, strict=False)]
        if kind == "record":
            return tuple(e == 0 for e in entry)
        if kind == "cross" and len(self.entries) > 1:
            return tuple(e is not None and e == self.target_entry for e in entry)
        return tuple(e is not None for e in entry)

    def _rows(self, extra: dict, batch: int, device: torch.device, kind: str = "self") -> tuple:
        """``(selected rows, other rows)`` of a CFG batch on ``device`` (:meth:`_selected`), made once per
        layout. Every attention call of one model call shares ComfyUI's ``cond_or_uncond`` list: the layout is
        worked out at the first of them only."""
        flags = extra.get("cond_or_uncond")
        last = self._last_layout.get(kind)
        if flags is not None and last is not None and last[0] is flags and last[1] == (batch, device):
            return last[2]
        selected = self._selected(extra, kind)
        chosen = self.index.get(("sel", selected, batch), device, lambda: chunk_rows(selected, batch)[0])
        other = self.index.get(("other", selected, batch), device, lambda: chunk_rows(selected, batch)[1])
        self._last_layout[kind] = (flags, (batch, device), (chosen, other))
        return chosen, other

    def _source_rows(self, extra: dict, batch: int, device: torch.device) -> torch.Tensor:
        """The rows of the source's branch that the edit put beside the target's (flagged :data:`SOURCE_ROW`)."""
        selected = tuple(f == SOURCE_ROW for f in extra.get("cond_or_uncond") or [0])
        return self.index.get(("source", selected, batch), device, lambda: chunk_rows(selected, batch)[0])

    def _fused_call(self, extra: dict, q: torch.Tensor, kind: str) -> tuple[torch.Tensor, tuple, tuple] | None:
        """``(selected rows, row layout, store key)`` when this attention call belongs to a fused step;
        ``None`` otherwise."""
        step = self._step(extra)
        if self.mode == "plain" or step not in self.store.fused_steps:
            return None
        layout = self._rows(extra, q.shape[0], q.device, "record" if self.mode == "record" else kind)
        if not len(layout[0]):
            # Nothing of the positive (its first entry, to record) in this call, e.g. the negative run apart; a
            # cross-attention call with positive entries none of which is the target's goes on (it is counted).
            if self.mode == "record" or kind == "self" or 0 not in (extra.get("cond_or_uncond") or [0]):
                return None
        return layout[0], layout, (step, self._layer(extra), kind)

    @staticmethod
    def _tiled(source: torch.Tensor, rows: int) -> torch.Tensor | None:
        """The source's rows repeated for each entry chunk of ``rows`` rows (``None``: they do not tile)."""
        if not len(source) or rows % len(source):
            return None
        if rows == len(source):  # one entry: no copy
            return source
        return source.repeat(rows // len(source), *([1] * (source.dim() - 1)))

    @staticmethod
    def _layer(extra: dict) -> tuple:
        block = extra.get("block") or ("?", 0)
        return (block[0], block[1], extra.get("block_index", 0))

    def _self_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frames and self.frames > 1 and k.shape[0] % self.frames == 0:
            return sparse_causal(k, self.frames), sparse_causal(v, self.frames)
        return k, v

    @staticmethod
    def _mixed(q, k, v, heads: int, rows: tuple, cond_out: torch.Tensor) -> torch.Tensor:
        """Unconditional rows attend normally; conditional rows get ``cond_out``. ``rows``: from :meth:`_rows`."""
        cond, other = rows
        out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=v.dtype, device=v.device)
        if len(other):  # a shape, not a value: no read
            out[other] = attend(q[other], k[other], v[other], heads)
        out[cond] = cond_out.to(v.dtype)
        return out

    # -- hooks -----------------------------------------------------------------------------------
    def self_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict, attention: Attention = default_attention
    ) -> torch.Tensor:
        """ComfyUI ``attn1`` replace: record or fuse the source's self-attention; ``attention`` elsewhere."""
        heads = extra["n_heads"]
        kk, vv = self._self_kv(k, v)
        call = self._fused_call(extra, q, "self")
        if call is None:
            return attention(q, kk, vv, extra)
        rows, layout, key = call
        if self.mode == "record":
            # Raw per-frame keys: the sparse-causal keys are rebuilt from them when fusing.
            keys = self._self_kv(k[rows], v[rows])[0] if self.store.store_maps else k[rows]
            self.store.put(key, q[rows], keys, heads)
            return attention(q, kk, vv, extra)
        if self.store.store_maps:
            recorded = self.store.probs(key, heads, q.device)
        else:
            recorded = self.store.queries_keys(key, q.device)
        source_rows = 0 if recorded is None else len(recorded if self.store.store_maps else recorded[0])
        if not source_rows or len(rows) % source_rows:
            self.missing += 1
            return attention(q, kk, vv, extra)
        if self.store.store_maps:
            cond_out = attend(q[rows], kk[rows], vv[rows], heads, probs=self._tiled(recorded, len(rows)))
        else:
            q_src, k_src = (t.to(v.dtype) for t in recorded)
            k_src = self._self_kv(k_src, k_src)[0]  # per recorded clip, then tiled over the entries
            q_src, k_src = self._tiled(q_src, len(rows)), self._tiled(k_src, len(rows))
            cond_out = attend(q_src, k_src, vv[rows], heads)  # = source maps applied to v, fused kernel
        self.fused += 1
        self.self_fused += 1
        self.entry_calls += len(rows) // source_rows
        return self._mixed(q, kk, vv, heads, layout, cond_out)

    def joint_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        extra: dict,
        text_tokens: int,
        attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        grid: Sequence[int] | None = None,
        kind: str = "joint",
        image_keys: bool = True,
    ) -> torch.Tensor:
        """A DiT's joint attention over ``[text, image]`` tokens (Flux, SD3), ``q, k, v`` ``(B, heads, T + N, d)``:
        record the image queries and all keys, or fuse the image queries' attention (:func:`joint_fused_attention`);
        the text queries and the other rows keep ``attention`` (the host's, or what another pack put there).
        ``grid``: the image tokens' ``(h, w)`` or a video's ``(frames, h, w)``, for the blend maps (a map of another
        length is left out). Wan (docs/design.md 1.3) calls it twice per block, as ``kind`` ``self`` (the video
        tokens alone: ``text_tokens`` 0) and ``cross`` (video queries, text keys: ``image_keys=False``)."""
        call = self._fused_call(extra, q, "self")
        if call is None:
            return attention(q, k, v)
        rows, (_, other), key = call
        heads, t = q.shape[1], text_tokens
        key = key[:2] + (kind,)
        if self.mode == "record":
            self.store.put(key, merge_heads(q[rows][:, :, t:]), merge_heads(k[rows]), heads)
            return attention(q, k, v)
        n = q.shape[2] - t
        if self.store.recompute:  # the source's rows ride in this batch (docs/design.md 1.3): its q, k as they are
            src = self._source_rows(extra, q.shape[0], q.device)
            recorded = (q[src][:, :, t:], k[src]) if len(src) else None
        else:
            recorded = None if self.store.store_maps else self.store.queries_keys(key, q.device)
            recorded = None if recorded is None else tuple(split_heads(x.to(v.dtype), heads) for x in recorded)
        source_rows = 0 if recorded is None else len(recorded[0])
        if not source_rows or len(rows) % source_rows or recorded[0].shape[-2] != n:
            self.missing += 1  # not recorded (a skipped block, maps stored instead), another batch or image size
            return attention(q, k, v)
        q_src, k_src = (self._tiled(x, len(rows)) for x in recorded)
        one_entry = len(self.entries) <= 1  # the words were aligned in the only entry's text
        words = image_keys is False or t > 0  # keys with text tokens: maps of words to fuse and blend
        blend = self.blend if words and one_entry and self.blend is not None and self.blend.active else None
        pairs = self.shared_pairs if one_entry else []

        def columns(t_tgt: int, t_src: int) -> JointColumns:  # kept on the device: no copy per attention call
            key = ("joint", one_entry, t_tgt, t_src)
            return self.index.get(key, q.device, lambda: joint_columns(pairs, t_tgt, t_src))

        fused, tgt_maps, src_maps = joint_fused_attention(
            q_src,
            k_src,
            q[rows][:, :, t:],
            k[rows],
            v[rows],
            pairs,
            blend.target_tokens if blend else (),
            blend.source_tokens if blend else (),
            image_keys,
            columns,
        )
        if blend is not None and grid is not None and math.prod(grid) <= n:
            cells = math.prod(grid)  # image tokens past the grid (reference latents) are not the picture's
            maps = [m[:, :, :cells] if m.shape[-1] else None for m in (tgt_maps, src_maps)]
            blend.add_maps(*maps, grid)
        if not one_entry:
            self.cross_skipped += 1
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=v.device)  # cross: v is the text's
        if len(other):
            out[other] = attention(q[other], k[other], v[other])
        cond = torch.empty(*q[rows].shape[:-1], v.shape[-1], dtype=v.dtype, device=v.device)
        if t:
            cond[:, :, :t] = attention(q[rows][:, :, :t], k[rows], v[rows])
        cond[:, :, t:] = fused
        out[rows] = cond
        self.fused += 1
        self.self_fused += 1
        self.entry_calls += len(rows) // source_rows
        return out

    def cross_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict, attention: Attention = default_attention
    ) -> torch.Tensor:
        """ComfyUI ``attn2`` replace: record, fuse shared words, collect the blend maps; ``attention`` elsewhere."""
        heads = extra["n_heads"]
        call = self._fused_call(extra, q, "cross")
        if call is None:
            return attention(q, k, v, extra)
        rows, layout, key = call
        if self.mode == "record":
            self.store.put(key, q[rows], k[rows], heads)
            return attention(q, k, v, extra)
        edits_maps = len(self.shared_tgt) > 0
        collects = self.blend is not None and self.blend.active
        if not (edits_maps or collects):
            return attention(q, k, v, extra)
        if not len(rows):  # this call's positive entries are not the target's text
            self.cross_skipped += 1
            return attention(q, k, v, extra)
        src = self.store.probs(key, heads, q.device)
        if src is None or src.shape[0] != len(rows):
            self.missing += 1
            return attention(q, k, v, extra)
        probs = attention_probs(q[rows], k[rows], heads)
        if collects:
            self.blend.add(probs, src, (extra.get("activations_shape") or [0, 0, 0, 0])[2:])
        self.fused += 1
        if not edits_maps:
            return attention(q, k, v, extra)
        tgt = self.index.get("shared_tgt", q.device, lambda: self.shared_tgt)
        probs[..., tgt] = src[..., self.index.get("shared_src", q.device, lambda: self.shared_src)]
        return self._mixed(q, k, v, heads, layout, attend(q[rows], k[rows], v[rows], heads, probs=probs))
