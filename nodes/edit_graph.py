"""What the workflow graph (ComfyUI's API-format prompt) says about an edit before anything runs: the Edit
Samplers an inversion feeds, and the text a conditioning was encoded from.

ComfyUI hands a node the whole prompt as the hidden ``PROMPT`` input: ``{node_id: {"class_type", "inputs"}}``,
an input being a literal value or a link ``[node_id, output_index]``. A link's value is computed where ComfyUI's
own string nodes make it (:mod:`graph_values`), else it is unknown until run time; every function here answers
``None`` (or skips, or says so) where the graph does not say.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, NamedTuple

from ..contextdiff.edit_plan import EditInputError, check_prompt_text, check_settings
from ..contextdiff.editing import EditSettings, EditSourceMismatch, InversionSettings
from . import edit_runs
from .graph_values import Unknown, is_link, linked_value
from .prompt_tokens import spoken_words

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

EDIT_SAMPLER = "ContextDiffEditSampler"
# Inputs a conditioning passes through unchanged in its first entry's tokens (ControlNet, areas, masks, concat,
# timestep ranges): followed upstream to the encoder. ConditioningCombine (conditioning_1 + conditioning_2) makes
# several entries: both are followed. Nodes with positive/negative pairs map output i to the i-th of them.
PASS_THROUGH = ("conditioning", "conditioning_1", "conditioning_to")
COMBINE = ("conditioning_1", "conditioning_2")
PAIRS = ("positive", "negative")
TEXT_INPUTS = ("text", "text_g")  # CLIPTextEncode(SDXL/SDXLRefiner): the first encoder's text, as prompt_tokens reads
SETTING_INPUTS = ("cfg", "source_prompt", "target_prompt", "blend_words", "blend_threshold", "fuse_attention")
MAX_HOPS = 32

# The text of one conditioning entry: the literal text, or the node it came out of when the graph cannot say.
EntryText = str | Unknown


def node_inputs(prompt: Mapping | None, node_id: object) -> dict:
    """The inputs of node ``node_id`` in the prompt (empty when the graph is not known)."""
    node = (prompt or {}).get(str(node_id))
    return node.get("inputs", {}) if isinstance(node, Mapping) else {}


def encoded_texts(prompt: Mapping | None, link: object, hops: int = 0) -> list[EntryText] | None:
    """The texts the conditioning on ``link`` was encoded from, one per entry in ComfyUI's order (a
    ConditioningCombine's first input's entries, then its second's), following pass-through nodes upstream; a text
    from a link is computed where ComfyUI's own string nodes make it (:mod:`graph_values`), else :class:`Unknown`.
    ``None`` when the graph does not say (no graph, an unknown conditioning node)."""
    for hop in range(hops, MAX_HOPS):
        if prompt is None or not is_link(link):
            return None
        inputs = node_inputs(prompt, link[0])
        if all(k in inputs for k in COMBINE):
            parts = [encoded_texts(prompt, inputs[k], hop + 1) for k in COMBINE]
            return None if None in parts else parts[0] + parts[1]
        follow = [k for k in PASS_THROUGH if k in inputs]  # first: an encoder that adds to a conditioning passes it
        if follow:
            link = inputs[follow[0]]
        elif all(k in inputs for k in PAIRS) and link[1] < len(PAIRS):
            link = inputs[PAIRS[link[1]]]
        elif "clip" in inputs:
            text = next((inputs[k] for k in TEXT_INPUTS if k in inputs), None)
            if is_link(text):
                text = linked_value(prompt, text)
            return [text] if isinstance(text, (str, Unknown)) else None
        else:
            return None
    return None


def edit_samplers_of(prompt: Mapping | None, inversion_id: object) -> Iterator[tuple[str, dict]]:
    """``(node_id, inputs)`` of the Edit Samplers whose edit_source is this inversion node's output."""
    for node_id, node in (prompt or {}).items():
        if isinstance(node, Mapping) and node.get("class_type") == EDIT_SAMPLER:
            source = node.get("inputs", {}).get("edit_source")
            if is_link(source) and str(source[0]) == str(inversion_id):
                yield str(node_id), node["inputs"]


class TextCheck(NamedTuple):
    """What the graph says about an Edit Sampler's prompts: the entry of its positive whose text is target_prompt
    (``None``: not known), how many entries the positive has (``None``: not known), and what the node says."""

    target_entry: int | None
    entries: int | None
    notes: list[str]


def _unknown_note(name: str, where: str, unknown: Unknown) -> str:
    return (
        f"{name} could not be compared with the text of the conditioning {where}: that text comes from node "
        f"{unknown.node_id} ({unknown.class_type}), whose output the workflow does not say before it runs; make sure "
        f"{name} is that text, or the blend words and shared words are looked up in the wrong tokens"
    )


def _check_target(typed: str, texts: list[EntryText] | None) -> tuple[int | None, list[str]]:
    where = "connected to the Edit Sampler's positive"
    if texts is None or not typed.strip():
        return (0 if texts is not None and len(texts) == 1 else None), []
    if len(texts) == 1:
        if isinstance(texts[0], Unknown):
            return None, [_unknown_note("target_prompt", where, texts[0])]
        check_prompt_text("target_prompt", typed, texts[0], where, spoken_words)
        return 0, []
    known = [t for t in texts if isinstance(t, str)]
    words = spoken_words(typed)
    match = next((i for i, t in enumerate(texts) if isinstance(t, str) and spoken_words(t) == words), None)
    if match is not None:
        return match, []
    if len(known) < len(texts):
        unknown = next(t for t in texts if isinstance(t, Unknown))
        return None, [_unknown_note("target_prompt", where, unknown)]
    raise EditInputError(
        f"target_prompt is {typed!r} but the positive combines {len(texts)} conditionings encoded from "
        f"{', '.join(repr(t) for t in known)}: type the text of the one whose words the edit should align with the "
        "source's (its shared words keep the source's cross-attention, its blend words make the mask)"
    )


def check_edit_texts(prompt: Mapping | None, edit_inputs: Mapping, settings: EditSettings) -> TextCheck:
    """Refuse an Edit Sampler whose typed prompts are not the texts its conditionings were encoded from: the
    target's (its positive; with several entries, one of them) and the source's (the first entry of the positive
    of the inversion its edit_source comes from, the one the inversion records). Where a text comes from a node
    whose output the graph does not say, the returned notes say so."""
    texts = encoded_texts(prompt, edit_inputs.get("positive"))
    target_entry, notes = _check_target(settings.target_prompt, texts)
    source = edit_inputs.get("edit_source")
    inversion_positive = node_inputs(prompt, source[0]).get("positive") if is_link(source) else None
    source_texts = encoded_texts(prompt, inversion_positive)
    if source_texts and settings.source_prompt.strip():
        where = "connected to the inversion's positive" + (" (its first entry)" if len(source_texts) > 1 else "")
        if isinstance(source_texts[0], Unknown):
            notes.append(_unknown_note("source_prompt", where, source_texts[0]))
        else:
            check_prompt_text("source_prompt", settings.source_prompt, source_texts[0], where, spoken_words)
    return TextCheck(target_entry, None if texts is None else len(texts), notes)


def check_before_inverting(
    prompt: Mapping | None, inversion_id: object, inversion: InversionSettings, model: ModelPatcher | None = None
) -> None:
    """Run every check of the Edit Samplers this inversion feeds that their literal inputs allow, before the
    inversion's first model call (a check whose inputs come from links waits for the Edit Sampler); with ``model``,
    what they ask of it too (attention fusion and blend words where its attention is not fused: refused by name)."""
    for _, inputs in edit_samplers_of(prompt, inversion_id):
        fuse, words = inputs.get("fuse_attention", True), inputs.get("blend_words", "")
        if model is not None:
            # A link is known at run time only.
            edit_runs.require_editable(
                model, EditSettings(fuse=fuse is True, blend_words=words if isinstance(words, str) else "")
            )
        values = {k: inputs.get(k) for k in SETTING_INPUTS}
        if any(v is None or is_link(v) for v in values.values()):
            continue
        settings = EditSettings.from_inputs({**values, "adapter_strength": 1.0})
        check_settings(settings, inversion, has_clip="clip" in inputs)
        check_edit_texts(prompt, inputs, settings)
    check_adapters(prompt, inversion_id)


def _bias(inputs: Mapping) -> tuple[str, float] | None:
    """``(adapter link as text, strength)`` of a node's inputs; ``None`` without a bias (no adapter or strength 0)."""
    link, strength = inputs.get("adapter"), inputs.get("adapter_strength")
    if link is None or strength == 0:
        return None
    return str(link), float(strength)


def _adapter_name(prompt: Mapping, link: object) -> str:
    name = node_inputs(prompt, link[0]).get("adapter_name") if is_link(link) else None
    return name if isinstance(name, str) else "the connected adapter"


def check_adapters(prompt: Mapping | None, inversion_id: object) -> None:
    """Refuse, before inverting, an Edit Sampler whose adapter or adapter_strength certainly differs from this
    inversion's (one has a bias and the other none, or the same adapter at another literal strength); what the
    graph leaves open (two loaders, a strength from a link) the edit checks against the edit source's identity."""
    if prompt is None:
        return
    inversion = node_inputs(prompt, inversion_id)
    for _, inputs in edit_samplers_of(prompt, inversion_id):
        if any(not isinstance(i.get("adapter_strength"), (int, float)) for i in (inversion, inputs)):
            continue  # a strength from a link: known at run time only
        ours, theirs = _bias(inversion), _bias(inputs)
        if (ours is None) != (theirs is None):
            inv = _adapter_name(prompt, inversion.get("adapter")) if ours else "none"
            edit = _adapter_name(prompt, inputs.get("adapter")) if theirs else "none"
            raise EditSourceMismatch(
                f"the edit_source would be inverted with adapter {inv}, the edit uses {edit}: connect the same "
                "adapter (and adapter_strength) to both nodes for a faithful reconstruction"
            )
        if ours is not None and ours[0] == theirs[0] and ours[1] != theirs[1]:
            raise EditSourceMismatch(
                f"the edit_source would be inverted with adapter_strength {ours[1]:g}, the edit uses "
                f"{theirs[1]:g}: use the same strength on both nodes for a faithful reconstruction"
            )
