"""The editor's hooks on Wan 2.x (docs/design.md 1.3): a native video model, whose blocks run self-attention over
all video tokens (frames x h x w, after RoPE) and then a separate cross-attention to the T5 tokens.

Both calls go through ComfyUI's ``optimized_attention`` and so through the attention override, the patch point DiT
editing uses (:mod:`nodes.dit_attention`); each block's ``patches_replace["dit"]`` entry (``("double_block", i)``,
which Wan's ``forward_orig`` honours in both hosts) tags the options with the layer and counts the block's attention
calls: the first is the self-attention, the second the T5 cross-attention (t2v). The fusion and the blend are the
one editor's (:meth:`AttentionEditor.joint_attention`): no sparse-causal rewiring, the frames attend to each other
as the model was trained. The user's model is never touched: everything is set on ``model.clone()``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..contextdiff.attention_fusion import AttentionEditor
from .dit_attention import EditorHook, foreign_override, patched_blocks

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

KINDS = {1: "self", 2: "cross"}  # a t2v block's attention calls, in order


def is_wan(diffusion_model: torch.nn.Module) -> bool:
    """Whether ``diffusion_model`` is ComfyUI's Wan 2.x text-to-video backbone (``comfy.ldm.wan.model.WanModel``)."""
    return type(diffusion_model).__name__ == "WanModel" and getattr(diffusion_model, "model_type", None) == "t2v"


def wan_blocks(diffusion_model: torch.nn.Module) -> list[tuple[str, int]]:
    """The ``patches_replace["dit"]`` keys of Wan's blocks, in forward order (empty: not Wan t2v)."""
    return [("double_block", i) for i in range(len(diffusion_model.blocks))] if is_wan(diffusion_model) else []


def wan_layers(diffusion_model: torch.nn.Module) -> set[tuple[str, int, int]]:
    """The layer keys the editor records Wan under (the UNet's ``(block, number, index)`` form)."""
    return {(kind, i, 0) for kind, i in wan_blocks(diffusion_model)}


def video_grid(diffusion_model: torch.nn.Module, latent_size: tuple[int, ...] | None) -> tuple[int, int, int] | None:
    """``(frames, h, w)`` of the video tokens of a latent of ``latent_size`` (``(frames, h, w)``; the host pads
    to whole patches, as ``rope_encode`` counts them)."""
    if latent_size is None or len(latent_size) != 3:
        return None
    return tuple(math.ceil(n / p) for n, p in zip(latent_size, diffusion_model.patch_size, strict=True))


def wan_footprint(
    diffusion_model: torch.nn.Module, latent_size: tuple[int, int, int], text_tokens: int
) -> list[tuple[int, int, int]]:
    """``(text tokens, video tokens, channels)`` of every block for a latent of ``latent_size`` ``(frames, h, w)``,
    from the module tree alone (a model on the meta device will do): what the store is counted on."""
    n = math.prod(video_grid(diffusion_model, latent_size))
    return [(text_tokens, n, int(diffusion_model.dim)) for _ in wan_blocks(diffusion_model)]


class _WanHook(EditorHook):
    """A tagged block's first call (self-attention) and second (cross-attention to T5) go to the editor."""

    def route(self, options: dict, call: int, kwargs: dict) -> dict | None:
        kind = KINDS.get(call)
        if kind is None or kwargs.get("skip_reshape"):
            return None
        return {"text": 0, "kind": kind, "image_keys": kind != "cross"}


def patched_wan(model: ModelPatcher, editor: AttentionEditor, latent_size: tuple[int, ...] | None) -> ModelPatcher:
    """A clone of a Wan ``model`` with the editor on every block's self- and cross-attention, composed with the
    block patches there (another attention override: refused where the editor must replace attention)."""
    diffusion_model = model.model.diffusion_model
    hook = _WanHook(editor, foreign_override(model), video_grid(diffusion_model, latent_size))
    return patched_blocks(model, editor, wan_blocks(diffusion_model), hook)
