"""What an edit will fuse, decided and checked before any computation.

Every combination of inputs under which a requested part of the edit (attention fusion, the
cross-attention of shared words, the blend mask) could not take effect either stops with one
sentence saying what to change, or goes on with a warning that the node shows; never silently.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .editing import EditSettings, InversionSettings
from .errors import PackError

CHUNK_TOKENS = 75  # words per CLIP chunk (77 with the start and end tokens)


class EditInputError(PackError):
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
    each blend word in them (empty when the word does not occur). ``late_positions``: where a blend word
    occurs past the first chunk, counted in words' tokens from 1 (76 is the first token of the second chunk)."""

    ids: list[int]
    word_positions: dict[str, list[int]] = field(default_factory=dict)
    chunks: int = 1
    late_positions: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class EditPlan:
    """What the edit fuses, and the warnings the node shows."""

    fuse: bool
    shared_tokens: list[tuple[int, int]]
    blend_target: list[int]
    blend_source: list[int]
    blend_threshold: float
    warnings: list[str]
    cfg: float = 7.5  # the edit's guidance and adapter strength, from its settings
    strength: float = 1.0


def _squeezed(text: str) -> str:
    """Lower case without whitespace: a blend word the tokenizer finds in a prompt is a substring of it here."""
    return "".join(html.unescape(text).lower().split())


def check_settings(settings: EditSettings, inversion: InversionSettings, has_clip: bool) -> None:
    """The checks that need no tokenizer and no model, so that they can run before the inversion.

    Raises :class:`EditInputError` where a requested feature cannot work.
    """
    words = split_words(settings.blend_words)
    if settings.fuse and not inversion.fused_steps:
        raise EditInputError(
            f"fuse_attention is on but the inversion fused no step (fuse_start {inversion.fuse_start:g} of "
            f"{inversion.steps} steps gives round((1 - fuse_start) x steps) = 0): lower fuse_start on the inversion "
            "node (paper: 0.5), use more steps, or turn fuse_attention off"
        )
    if not words:
        return
    if not has_clip:
        raise EditInputError(
            "blend_words need the clip input (to find the words' tokens): connect the CLIP, or clear blend_words"
        )
    if not (settings.source_prompt.strip() and settings.target_prompt.strip()):
        raise EditInputError(
            "blend_words need both prompt texts (source_prompt and target_prompt) to find the "
            "words in: type the prompts, or clear blend_words"
        )
    if not settings.fuse:
        raise EditInputError(
            "blend_words need fuse_attention on (the mask comes from the cross-attention of the "
            "fused steps): turn fuse_attention on, or clear blend_words"
        )
    if settings.blend_threshold >= 1.0:
        raise EditInputError(
            f"blend_threshold {settings.blend_threshold:g} keeps every pixel on the source (the normalised "
            "attention never exceeds 1), so nothing would be edited: lower it (0.3 is usual), or "
            "clear blend_words"
        )
    prompts = _squeezed(settings.source_prompt) + "\n" + _squeezed(settings.target_prompt)
    if not any(_squeezed(w) in prompts for w in words):
        raise _none_found(settings.blend_words)


def _none_found(blend_words: str) -> EditInputError:
    return EditInputError(
        f"none of the blend words {blend_words!r} occurs in the source or target prompt; "
        "use words from the prompts (e.g. the object being replaced)"
    )


def _past_first_chunk(word: str, source: PromptTokens | None, target: PromptTokens | None) -> str | None:
    """Where ``word`` occurs past the first chunk ("token 80 of the target prompt"), or ``None``."""
    for name, tokens in (("source", source), ("target", target)):
        if tokens is not None and tokens.late_positions.get(word):
            return f"token {tokens.late_positions[word][0]} of the {name} prompt"
    return None


def plan_edit(
    settings: EditSettings,
    inversion: InversionSettings,
    source: PromptTokens | None,
    target: PromptTokens | None,
    has_clip: bool,
) -> EditPlan:
    """Check the edit inputs against each other and decide what is fused.

    ``source``/``target`` are the tokenised prompts (``None`` without a CLIP or without the text).
    Raises :class:`EditInputError` where a requested feature cannot work; returns the plan with
    warnings where it works only in part.
    """
    check_settings(settings, inversion, has_clip)
    fuse, words = settings.fuse, split_words(settings.blend_words)
    warnings: list[str] = []
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
                f"a prompt is longer than one CLIP chunk ({CHUNK_TOKENS} tokens): only the words of the first "
                "chunk are aligned and searched for blend words"
            )
    source_text, target_text = settings.source_prompt.strip(), settings.target_prompt.strip()
    if source_text and source_text == target_text:
        warnings.append("source_prompt and target_prompt are the same: the edit reproduces the reconstruction")

    blend_tgt: list[int] = []
    blend_src: list[int] = []
    if words:
        found = {
            w for w in words if (target and target.word_positions.get(w)) or (source and source.word_positions.get(w))
        }
        late = {w: where for w in words if w not in found and (where := _past_first_chunk(w, source, target))}
        what_to_do = (
            f"past the first {CHUNK_TOKENS} tokens (one CLIP chunk), where blend words are looked up: move the word "
            f"into the first {CHUNK_TOKENS} tokens of the prompt, or shorten the prompt"
        )
        if not found and late:
            word, where = next(iter(late.items()))
            raise EditInputError(f"the blend word {word!r} is at {where}, {what_to_do}")
        if not found:
            raise _none_found(settings.blend_words)
        for word, where in late.items():
            warnings.append(f"the blend word {word!r} is at {where}, {what_to_do}; it is ignored")
        missing = [w for w in words if w not in found and w not in late]
        if missing:
            warnings.append(f"blend words not in either prompt, ignored: {', '.join(missing)}")
        blend_tgt = sorted({p for w in words for p in target.word_positions.get(w, [])})
        blend_src = sorted({p for w in words for p in source.word_positions.get(w, [])})
        if settings.blend_threshold <= 0.0:
            warnings.append(
                "blend_threshold 0 lets every pixel but the least attended one change: the blend mask "
                "keeps almost nothing of the source; raise it (0.3 is usual)"
            )
    return EditPlan(
        fuse=fuse,
        shared_tokens=shared,
        blend_target=blend_tgt,
        blend_source=blend_src,
        blend_threshold=settings.blend_threshold,
        warnings=warnings,
        cfg=settings.cfg,
        strength=settings.strength,
    )


def check_prompt_text(name: str, typed: str, encoded: str | None, where: str, words: Callable[[str], str]) -> None:
    """Refuse a prompt text that is not the one its conditioning was encoded from.

    ``words(text)`` is what the tokenizer reads of a text (e.g. without weights such as ``(cat:1.2)``); the two
    texts must agree in it. ``encoded`` is ``None`` when the graph does not say (nothing is checked then); an
    empty ``typed`` is the documented way to fuse self-attention only.
    """
    if encoded is None or not typed.strip() or words(typed) == words(encoded):
        return
    raise EditInputError(
        f"{name} is {typed!r} but the conditioning {where} was encoded from {encoded!r}: the blend words and the "
        f"words both prompts share would be looked up in the wrong tokens; type the encoded text into {name}"
    )
