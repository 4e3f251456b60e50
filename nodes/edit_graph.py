"""What the workflow graph (ComfyUI's API-format prompt) says about an edit before anything runs: the Edit
Samplers an inversion feeds, and the text a conditioning was encoded from.

ComfyUI hands a node the whole prompt as the hidden ``PROMPT`` input: ``{node_id: {"class_type", "inputs"}}``,
an input being a literal value or a link ``[node_id, output_index]``. Links make values unknown until run
time; every function here answers ``None`` (or skips) where the graph does not say.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ..contextdiff.edit_plan import check_prompt_text, check_settings
from ..contextdiff.editing import EditSettings, EditSourceMismatch, InversionSettings
from .prompt_tokens import spoken_words

EDIT_SAMPLER = "ContextDiffEditSampler"
# Inputs a conditioning passes through unchanged in its first entry's tokens (ControlNet, areas, masks, combine,
# concat, timestep ranges): followed upstream to the encoder. Nodes with positive/negative pairs map output i to
# the i-th of them.
PASS_THROUGH = ("conditioning", "conditioning_1", "conditioning_to")
PAIRS = ("positive", "negative")
TEXT_INPUTS = ("text", "text_g")  # CLIPTextEncode(SDXL/SDXLRefiner): the first encoder's text, as prompt_tokens reads
SETTING_INPUTS = ("cfg", "source_prompt", "target_prompt", "blend_words", "blend_threshold", "fuse_attention")
MAX_HOPS = 32


def is_link(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def node_inputs(prompt: Mapping | None, node_id: object) -> dict:
    """The inputs of node ``node_id`` in the prompt (empty when the graph is not known)."""
    node = (prompt or {}).get(str(node_id))
    return node.get("inputs", {}) if isinstance(node, Mapping) else {}


def encoded_text(prompt: Mapping | None, link: object) -> str | None:
    """The literal text the conditioning on ``link`` was encoded from, following pass-through nodes upstream;
    ``None`` when the graph does not say (a text from another node, an unknown conditioning node)."""
    for _ in range(MAX_HOPS):
        if prompt is None or not is_link(link):
            return None
        inputs = node_inputs(prompt, link[0])
        follow = [k for k in PASS_THROUGH if k in inputs]  # first: an encoder that adds to a conditioning passes it
        if follow:
            link = inputs[follow[0]]
        elif all(k in inputs for k in PAIRS) and link[1] < len(PAIRS):
            link = inputs[PAIRS[link[1]]]
        elif "clip" in inputs:
            text = next((inputs[k] for k in TEXT_INPUTS if k in inputs), None)
            return text if isinstance(text, str) else None
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


def check_edit_texts(prompt: Mapping | None, edit_inputs: Mapping, settings: EditSettings) -> None:
    """Refuse an Edit Sampler whose typed prompts are not the texts its conditionings were encoded from: the
    target's (its positive) and the source's (the positive of the inversion its edit_source comes from)."""
    check_prompt_text(
        "target_prompt",
        settings.target_prompt,
        encoded_text(prompt, edit_inputs.get("positive")),
        "connected to the Edit Sampler's positive",
        spoken_words,
    )
    source = edit_inputs.get("edit_source")
    inversion_positive = node_inputs(prompt, source[0]).get("positive") if is_link(source) else None
    check_prompt_text(
        "source_prompt",
        settings.source_prompt,
        encoded_text(prompt, inversion_positive),
        "connected to the inversion's positive",
        spoken_words,
    )


def check_before_inverting(prompt: Mapping | None, inversion_id: object, inversion: InversionSettings) -> None:
    """Run every check of the Edit Samplers this inversion feeds that their literal inputs allow, before the
    inversion's first model call (a check whose inputs come from links waits for the Edit Sampler)."""
    for _, inputs in edit_samplers_of(prompt, inversion_id):
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
