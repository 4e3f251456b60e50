"""What an edit will fuse, decided and checked before any computation.

Every combination of inputs under which a requested part of the edit (attention fusion, the
cross-attention of shared words, the blend mask) could not take effect either stops with one
sentence saying what to change, or goes on with a warning that the node shows; never silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class EditInputError(ValueError):
    """Edit inputs that cannot work together; the message says what to change."""


def token_alignment(source: Sequence, target: Sequence) -> list[tuple[int, int]]:
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


def split_words(words: str) -> list[str]:
    """``"cat, dog"`` or ``"cat dog"`` -> ``["cat", "dog"]``."""
    return [w for chunk in words.split(",") for w in chunk.split()]


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as the cross-attention keys see it: token ids of its first chunk, and the positions of
    each blend word in them (empty when the word does not occur)."""

    ids: list[int]
    word_positions: dict[str, list[int]] = field(default_factory=dict)
    chunks: int = 1


@dataclass(frozen=True)
class EditPlan:
    """What the edit fuses, and the warnings the node shows."""

    fuse: bool
    shared_tokens: list[tuple[int, int]]
    blend_target: list[int]
    blend_source: list[int]
    blend_threshold: float
    warnings: list[str]


def plan_edit(
    *,
    fuse: bool,
    fused_step_count: int,
    inversion_steps: int,
    fuse_start: float,
    has_clip: bool,
    source_prompt: str,
    target_prompt: str,
    source: PromptTokens | None,
    target: PromptTokens | None,
    blend_words: str,
    blend_threshold: float,
) -> EditPlan:
    """Check the edit inputs against each other and decide what is fused.

    ``source``/``target`` are the tokenised prompts (``None`` without a CLIP or without the text).
    Raises :class:`EditInputError` where a requested feature cannot work; returns the plan with
    warnings where it works only in part.
    """
    words = split_words(blend_words)
    warnings: list[str] = []
    if fuse and fused_step_count == 0:
        raise EditInputError(
            f"fuse_attention is on but the inversion fused no step (fuse_start {fuse_start:g} of {inversion_steps} "
            f"steps gives round((1 - fuse_start) x steps) = 0): lower fuse_start on the inversion node (paper: 0.5), "
            "use more steps, or turn fuse_attention off"
        )
    if words and not has_clip:
        raise EditInputError(
            "blend_words need the clip input (to find the words' tokens): connect the CLIP, or clear blend_words"
        )
    if words and not (source_prompt.strip() and target_prompt.strip()):
        raise EditInputError(
            "blend_words need both prompt texts (source_prompt and target_prompt) to find the "
            "words in: type the prompts, or clear blend_words"
        )
    if words and not fuse:
        raise EditInputError(
            "blend_words need fuse_attention on (the mask comes from the cross-attention of the "
            "fused steps): turn fuse_attention on, or clear blend_words"
        )
    if words and blend_threshold >= 1.0:
        raise EditInputError(
            f"blend_threshold {blend_threshold:g} keeps every pixel on the source (the normalised "
            "attention never exceeds 1), so nothing would be edited: lower it (0.3 is usual), or "
            "clear blend_words"
        )

    shared: list[tuple[int, int]] = []
    if fuse and not has_clip:
        warnings.append(
            "no clip connected: only self-attention is fused; connect the CLIP to also keep the "
            "source's cross-attention for the words both prompts share"
        )
    elif fuse and (source is None or target is None):
        warnings.append(
            "source_prompt or target_prompt is empty: only self-attention is fused; type both prompts "
            "(the same text as in the CLIP encoders) to also fuse the shared words' cross-attention"
        )
    if source is not None and target is not None:
        shared = token_alignment(source.ids, target.ids) if fuse else []
        if max(source.chunks, target.chunks) > 1:
            warnings.append(
                "a prompt is longer than one CLIP chunk (75 tokens): only the words of the first chunk "
                "are aligned and searched for blend words"
            )
    if source_prompt.strip() and source_prompt.strip() == target_prompt.strip():
        warnings.append("source_prompt and target_prompt are the same: the edit reproduces the reconstruction")

    blend_tgt: list[int] = []
    blend_src: list[int] = []
    if words:
        found = {
            w for w in words if (target and target.word_positions.get(w)) or (source and source.word_positions.get(w))
        }
        if not found:
            raise EditInputError(
                f"none of the blend words {blend_words!r} occurs in the source or target prompt; "
                "use words from the prompts (e.g. the object being replaced)"
            )
        missing = [w for w in words if w not in found]
        if missing:
            warnings.append(f"blend words not in either prompt, ignored: {', '.join(missing)}")
        blend_tgt = sorted({p for w in words for p in target.word_positions.get(w, [])})
        blend_src = sorted({p for w in words for p in source.word_positions.get(w, [])})
        if blend_threshold <= 0.0:
            warnings.append(
                "blend_threshold 0 lets every pixel but the least attended one change: the blend mask "
                "keeps almost nothing of the source; raise it (0.3 is usual)"
            )
    return EditPlan(
        fuse=fuse,
        shared_tokens=shared,
        blend_target=blend_tgt,
        blend_source=blend_src,
        blend_threshold=blend_threshold,
        warnings=warnings,
    )


def settings_warnings(inversion: dict, edit: dict) -> list[str]:
    """Warnings where the edit's adapter differs from the inversion's: the trajectory then drifts."""
    inv_adapter, edit_adapter = inversion.get("adapter"), edit.get("adapter")
    inv_strength = inversion.get("strength", 0.0) if inv_adapter else 0.0
    edit_strength = edit.get("strength", 0.0) if edit_adapter else 0.0
    if inv_adapter != edit_adapter and (inv_strength or edit_strength):
        return [
            f"the inversion used adapter {inv_adapter or 'none'}, the edit uses {edit_adapter or 'none'}: "
            "connect the same adapter to both for a faithful reconstruction"
        ]
    if inv_strength != edit_strength:
        return [
            f"the inversion used adapter_strength {inv_strength:g}, the edit {edit_strength:g}: use the same "
            "strength on both for a faithful reconstruction"
        ]
    return []
