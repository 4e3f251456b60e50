"""Prompts through the model's CLIP: token ids as the cross-attention keys see them, where the blend
words sit in them, and prompt encoding for nodes that take text instead of conditioning."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from comfy.sd1_clip import escape_important, token_weights, unescape_important

from ..contextdiff.edit_plan import CHUNK_TOKENS, PromptTokens, split_words

if TYPE_CHECKING:
    from comfy.sd import CLIP


def _first_encoder(tokens: dict | list) -> list:
    return tokens[sorted(tokens)[0]] if isinstance(tokens, dict) else tokens


def token_ids(clip: CLIP, text: str) -> list[int]:
    """Token ids of the first encoder and chunk, as the cross-attention keys see them."""
    return [int(t[0]) for t in _first_encoder(clip.tokenize(text))[0]]


def token_count(clip: CLIP, text: str) -> int:
    """Tokens of ``text``'s conditioning: 77 (start, 75 words' tokens, end) per chunk of the first encoder."""
    return len(_first_encoder(clip.tokenize(text))) * (CHUNK_TOKENS + 2)


def word_positions(clip: CLIP, prompt_ids: list[int], word: str) -> list[int]:
    """Positions of the tokens of ``word`` in a tokenised prompt (every occurrence).

    The word's own start, end and padding tokens are left out: those of the empty prompt, as each encoder
    has its own (SDXL's CLIP-G pads with 0, CLIP-L with its end token)."""
    special = set(token_ids(clip, ""))
    return occurrences(prompt_ids, [i for i in token_ids(clip, word) if i not in special][:4])


def occurrences(prompt_ids: list[int], ids: list[int]) -> list[int]:
    """Positions of every occurrence of the token sequence ``ids`` in ``prompt_ids``."""
    found = []
    for pos in range(len(prompt_ids)):
        if ids and prompt_ids[pos : pos + len(ids)] == ids:
            found.extend(range(pos, pos + len(ids)))
    return sorted(set(found))


def _late_positions(clip: CLIP, chunks: list, word: str) -> list[int]:
    """Where ``word`` occurs past the first chunk, counted in the prompt's tokens from 1 (start tokens not counted)."""
    found = []
    for c, chunk in enumerate(chunks[1:], start=1):
        found += [c * CHUNK_TOKENS + p for p in word_positions(clip, [int(t[0]) for t in chunk], word)]
    return found


def prompt_tokens(clip: CLIP | None, text: str, blend_words: str) -> PromptTokens | None:
    """The prompt's token ids and the positions of each blend word (``None`` without CLIP or text)."""
    if clip is None or not text.strip():
        return None
    chunks = _first_encoder(clip.tokenize(text))
    ids = [int(t[0]) for t in chunks[0]]
    positions = {w: word_positions(clip, ids, w) for w in split_words(blend_words)}
    late = {w: _late_positions(clip, chunks, w) for w, p in positions.items() if not p and len(chunks) > 1}
    return PromptTokens(ids=ids, word_positions=positions, chunks=len(chunks), late_positions=late)


def spoken_words(text: str) -> str:
    """What a CLIP tokenizer reads of a prompt: its words and punctuation in lower case, weights such as
    ``(cat:1.2)`` removed (ComfyUI's own parser), whitespace ignored."""
    parts = " ".join(unescape_important(part) for part, _ in token_weights(escape_important(text), 1.0))
    return " ".join(re.findall(r"\w+|[^\w\s]", parts.lower()))


def encode_prompt(clip: CLIP, text: str) -> list:
    """``text`` as a ComfyUI CONDITIONING (what CLIPTextEncode gives)."""
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


# The text part of a DiT's joint sequence, encoder by encoder (docs/design.md 1.2): Flux's context is T5's tokens
# alone (CLIP-L gives only the pooled vector); SD3's is CLIP-L/G's tokens (the two share positions, concatenated along
# the width: CLIP-L's ids stand for both) followed by T5's.
JOINT_TEXT = {"flux": ("t5xxl",), "sd3": ("l", "t5xxl"), "wan": ("umt5xxl",)}
_NAMESPACE = 1 << 20  # added per encoder to its ids, above any vocabulary: two encoders' tokens never align


def joint_prompt_tokens(clip: CLIP | None, text: str, blend_words: str, family: str) -> PromptTokens | None:
    """The prompt as a DiT's joint attention sees its text tokens: every encoder's tokens of ``JOINT_TEXT[family]``
    in order, all chunks (the joint sequence holds them all), each encoder's ids in their own range so that the
    alignment of two prompts matches CLIP tokens with CLIP tokens and T5 tokens with T5 tokens; the blend words'
    positions in every encoder's part (``None`` without CLIP or text)."""
    if clip is None or not text.strip():
        return None
    tokens, empty = clip.tokenize(text), clip.tokenize("")
    ids: list[int] = []
    positions: dict[str, list[int]] = {w: [] for w in split_words(blend_words)}
    for n, encoder in enumerate(JOINT_TEXT[family]):
        own = [int(t[0]) for chunk in tokens[encoder] for t in chunk]
        special = {int(t[0]) for chunk in empty[encoder] for t in chunk}
        for word in positions:
            word_ids = [int(t[0]) for chunk in clip.tokenize(word)[encoder] for t in chunk]
            found = occurrences(own, [i for i in word_ids if i not in special][:4])
            positions[word] += [len(ids) + p for p in found]
        ids += [n * _NAMESPACE + i for i in own]
    return PromptTokens(ids=ids, word_positions=positions)
