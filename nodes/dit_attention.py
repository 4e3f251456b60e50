"""The editor's hooks on a DiT's joint attention (Flux's double and single blocks, SD3's joint blocks): where the
queries and keys are reached, and how each call is told its layer and text length (docs/design.md 1.2).

ComfyUI hands every attention call to ``transformer_options["optimized_attention_override"]`` when one is set; the
override is where ``q, k, v`` of the joint ``[text, image]`` sequence exist (Flux's after its RoPE). It does not say
which layer is running, so every block also gets a ``patches_replace["dit"]`` entry that runs the block with a copy
of the options naming the layer and the text length. Another pack's ``dit`` entry on a block is called inside ours
(composed); another attention override runs every call the editor does not replace, and an edit that must replace
attention on a model carrying one is refused before it starts. The user's model is never touched: everything is
set on ``model.clone()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import comfy.model_management
import torch

from ..contextdiff.attention_fusion import AttentionEditor
from ..contextdiff.attention_store import merge_heads

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

OVERRIDE = "optimized_attention_override"
_LAYER = "contextdiff_layer"  # the transformer options' keys the block entries add for the attention hook
_TEXT = "contextdiff_text_tokens"
_CALLS = "contextdiff_attention_calls"


def dit_blocks(diffusion_model: torch.nn.Module) -> list[tuple[str, int]]:
    """The ``patches_replace["dit"]`` keys of a DiT's joint-attention blocks, in forward order (empty: not one).

    Flux: ``double_blocks`` then ``single_blocks``; SD3's MMDiT: ``joint_blocks``, which ComfyUI patches as
    ``("double_block", i)`` (comfy/ldm/modules/diffusionmodules/mmdit.py)."""
    if hasattr(diffusion_model, "double_blocks") and hasattr(diffusion_model, "single_blocks"):
        return [("double_block", i) for i in range(len(diffusion_model.double_blocks))] + [
            ("single_block", i) for i in range(len(diffusion_model.single_blocks))
        ]
    if hasattr(diffusion_model, "joint_blocks"):
        return [("double_block", i) for i in range(len(diffusion_model.joint_blocks))]
    return []


def dit_family(diffusion_model: torch.nn.Module) -> str | None:
    """Which joint-text layout a DiT's tokens follow (``prompt_tokens.JOINT_TEXT``): ``flux``, ``sd3``, or ``None``."""
    if not dit_blocks(diffusion_model):
        return None
    return "sd3" if hasattr(diffusion_model, "joint_blocks") else "flux"


def dit_layers(diffusion_model: torch.nn.Module) -> set[tuple[str, int, int]]:
    """The layer keys the editor records a DiT under (the UNet's ``(block, number, index)`` form)."""
    return {(kind, i, 0) for kind, i in dit_blocks(diffusion_model)}


def image_grid(diffusion_model: torch.nn.Module, latent_hw: tuple[int, int] | None) -> tuple[int, int] | None:
    """``(h, w)`` of the image tokens of a latent of ``latent_hw`` (the host pads to whole patches)."""
    if latent_hw is None:
        return None
    p = int(getattr(diffusion_model, "patch_size", 2))
    return math.ceil(latent_hw[0] / p), math.ceil(latent_hw[1] / p)


def joint_footprint(
    diffusion_model: torch.nn.Module, latent_hw: tuple[int, int], text_tokens: int
) -> list[tuple[int, int, int]]:
    """``(text tokens, image tokens, channels)`` of every joint-attention layer for a latent of ``latent_hw``, from
    the module tree alone (a model on the meta device will do): what the store's size is counted on. SD3.5-medium's
    image-only second attention (MMDiT-X) counts as a layer of no text tokens."""
    h, w = image_grid(diffusion_model, latent_hw)
    c = int(diffusion_model.hidden_size)
    return [(text_tokens, h * w, c) for _ in dit_blocks(diffusion_model)] + [
        (0, h * w, c) for _ in range(image_only_blocks(diffusion_model))
    ]


def image_only_blocks(diffusion_model: torch.nn.Module) -> int:
    """How many of SD3.5-medium's joint blocks also run an image-only self-attention (MMDiT-X's ``x_block.attn2``)."""
    blocks = getattr(diffusion_model, "joint_blocks", None) or []
    return sum(bool(getattr(block.x_block, "x_block_self_attn", False)) for block in blocks)


def foreign_override(model: ModelPatcher) -> Callable | None:
    """Another node's attention override on this model, if any."""
    return model.model_options.get("transformer_options", {}).get(OVERRIDE)


def refuse_dit_conflicts(model: ModelPatcher, replaces: bool) -> None:
    """Raise, naming it, where another node's attention override sits and the editor must replace attention."""
    theirs = foreign_override(model)
    if replaces and theirs is not None:
        name = getattr(theirs, "__qualname__", None) or type(theirs).__name__
        raise ValueError(
            f"another node has set an attention override ({name}) on this model, and attention fusion must compute "
            "the fused joint attention itself: the two cannot be combined. Apply that node after the edit, or turn "
            "fuse_attention off (a plain edit keeps the other override)"
        )


class _BlockEntry:
    """A block's ``dit`` replace entry: run the block (through another pack's entry if it had one) with options
    that name the layer and the text length, for the attention hook."""

    def __init__(self, key: tuple[str, int], theirs: Callable | None, state: dict):
        self.key, self.theirs, self.state = key, theirs, state

    def __call__(self, args: dict, extra: dict) -> dict:
        if self.key[0] == "double_block":
            self.state["text"] = int(args["txt"].shape[1])  # single blocks run after, in the same model call
        options = dict(args.get("transformer_options") or {})
        options.update({_LAYER: (*self.key, 0), _TEXT: self.state.get("text"), _CALLS: [0]})
        args = dict(args, transformer_options=options)
        return self.theirs(args, extra) if self.theirs is not None else extra["original_block"](args)


class EditorHook:
    """The attention override the editor is reached through: the calls :meth:`route` picks in a tagged block are
    handed to the editor as ``(B, heads, L, d)``; every other call goes to the host's kernel (or the override that
    was there). Subclasses say which calls of a block are edited, and how."""

    def __init__(self, editor: AttentionEditor, inner: Callable | None, grid: tuple[int, ...] | None):
        self.editor, self.inner, self.grid = editor, inner, grid

    def route(self, options: dict, call: int, kwargs: dict) -> dict | None:
        """The editor's keywords for the ``call``-th attention call of a tagged block (``text``: the text tokens
        ahead of the image tokens), or None for the host's kernel."""
        raise NotImplementedError

    def __call__(self, func: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        options = kwargs.get("transformer_options") or {}
        layer, calls = options.get(_LAYER), options.get(_CALLS)

        def host(*a, **kw):
            return self.inner(func, *a, **kw) if self.inner is not None else func(*a, **kw)

        if calls is not None:
            calls[0] += 1
        how = None
        if layer is not None and calls is not None and kwargs.get("mask") is None:
            how = self.route(options, calls[0], kwargs)
        if how is None:
            return host(*args, **kwargs)
        kwargs = dict(kwargs)
        q, k, v = args[:3]
        heads = args[3] if len(args) > 3 else kwargs.pop("heads")
        rest = args[4:]
        split = kwargs.pop("skip_reshape", False)
        merge = not kwargs.pop("skip_output_reshape", False)
        if not split:  # SD3 hands q, k as (B, L, heads*d) and v as (B, L, heads, d): the host's kernels view both
            q, k, v = (x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2) for x in (q, k, v))

        def plain(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return host(a, b, c, heads, *rest, skip_reshape=True, skip_output_reshape=True, **kwargs)

        extra = dict(options, block=layer[:2], block_index=layer[2])
        text = how.pop("text")
        out = self.editor.joint_attention(q, k, v, extra, text, plain, self.grid, **how)
        return merge_heads(out) if merge else out


class _JointHook(EditorHook):
    """Flux and SD3: the first attention call of a tagged block is its joint attention over [text, image]; a second
    one (SD3.5-medium's MMDiT-X blocks) is an image-only self-attention, fused as the source's self-attention."""

    def route(self, options: dict, call: int, kwargs: dict) -> dict | None:
        text = options.get(_TEXT)
        if text is None:
            return None
        if call == 1:
            return {"text": text}
        return {"text": 0, "kind": "image"} if call == 2 else None


def patched_blocks(
    model: ModelPatcher, editor: AttentionEditor, blocks: list[tuple[str, int]], hook: EditorHook
) -> ModelPatcher:
    """A clone of ``model`` with a ``dit`` entry on each of ``blocks`` (tagging the layer, composed with the patch
    that was there) and ``hook`` as the attention override."""
    refuse_dit_conflicts(model, editor.replaces_self_attention)
    m = model.clone()
    replace = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    state: dict = {}
    for key in blocks:
        m.set_model_patch_replace(_BlockEntry(key, replace.get(key), state), "dit", *key)
    m.model_options["transformer_options"][OVERRIDE] = hook
    return m


def patched_dit(model: ModelPatcher, editor: AttentionEditor, latent_hw: tuple[int, int] | None = None) -> ModelPatcher:
    """A clone of a DiT ``model`` with the editor on every joint attention, composed with the patches there."""
    diffusion_model = model.model.diffusion_model
    hook = _JointHook(editor, foreign_override(model), image_grid(diffusion_model, latent_hw))
    return patched_blocks(model, editor, dit_blocks(diffusion_model), hook)
