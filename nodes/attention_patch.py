"""The editor's hooks on a ComfyUI model: the UNet's attention blocks (walked once, here), the replace
patches on a clone that compose with other packs' patches, and the attention-size probe.

The user's model is never touched: every run patches ``model.clone()``, whose patches vanish with it.
Where another pack already put an ``attn1``/``attn2`` replace patch on a block, the editor calls it
for the attention it only records or passes through; where the editor must replace the attention
probabilities themselves (fusion), the two cannot compose and the run is refused before it starts.
Every hook checks ComfyUI's interrupt flag, so ``/interrupt`` stops a run within one UNet call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import comfy.model_management
import torch

from ..contextdiff.attention_fusion import AttentionEditor
from ..hostside import families
from .dit_attention import dit_blocks, dit_layers, patched_dit
from .wan_attention import is_wan, patched_wan, wan_layers

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

LayerKey = tuple[str, int, int]  # ComfyUI's replace-patch key (block, number, transformer_index)


def attention_blocks(diffusion_model: torch.nn.Module) -> list[tuple[LayerKey, torch.nn.Module]]:
    """Every ``BasicTransformerBlock`` of a UNet with its replace-patch key, in forward order."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    found = []
    for name, module in diffusion_model.named_modules():
        if not isinstance(module, BasicTransformerBlock):
            continue
        parts = name.split(".")
        if parts[0] == "middle_block":
            block, number = "middle", 0
        elif parts[0] in ("input_blocks", "output_blocks"):
            block, number = parts[0].split("_")[0], int(parts[1])
        else:
            continue
        found.append(((block, number, int(parts[parts.index("transformer_blocks") + 1])), module))
    return found


def attention_footprint(model: ModelPatcher, latent_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """``(tokens, channels)`` of every attention block at this latent size, from one probe forward pass."""
    seen, hooks = [], []
    for _, module in attention_blocks(model.model.diffusion_model):
        hooks.append(module.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape[-2:]))))
    try:
        comfy.model_management.load_models_gpu([model])
        base = model.model
        device = model.load_device
        x = torch.zeros(1, base.latent_format.latent_channels, *latent_hw, device=device)
        cond = families.probe_conditioning(base, tuple(x.shape))  # SDXL's UNet needs y as well
        with torch.no_grad():
            base.apply_model(x, torch.ones(1, device=device), **cond)
    finally:
        for h in hooks:
            h.remove()
    return seen


def existing_patch(model: ModelPatcher, kind: str, key: LayerKey) -> Callable | None:
    """Another pack's ``attn1``/``attn2`` replace patch on this block (by full or by block key), if any."""
    replace = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    return replace.get(key) or replace.get(key[:2])


def _comfy_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
    # ComfyUI's own kernel (and any attention override in the options), as an unpatched block runs it.
    from comfy.ldm.modules import attention

    return attention.optimized_attention(
        q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"), transformer_options=extra
    )


def refuse_conflicts(model: ModelPatcher, *, replaces_self: bool, replaces_cross: bool) -> None:
    """Raise, naming the block, where another pack's replace patch sits where the editor must replace
    the attention itself (fused self-attention; cross-attention of shared words)."""
    for key, _ in attention_blocks(model.model.diffusion_model):
        for kind, replaces in (("attn1", replaces_self), ("attn2", replaces_cross)):
            if replaces and existing_patch(model, kind, key) is not None:
                what = "self-attention (attn1)" if kind == "attn1" else "cross-attention (attn2)"
                raise ValueError(
                    f"another node has replaced the {what} of UNet block {key} on this model, and attention fusion "
                    "must replace it too: the two cannot be combined. Apply that node after the edit, or turn "
                    "fuse_attention off (a plain edit keeps the other patch)"
                )


class _Hook:
    """One block's replace patch: interrupt check, then the editor with the attention that was there."""

    def __init__(self, editor_fn: Callable, inner: Callable):
        self.editor_fn, self.inner = editor_fn, inner

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        return self.editor_fn(q, k, v, extra, attention=self.inner)


def editor_layers(model: ModelPatcher) -> set[LayerKey]:
    """The layer keys the editor records this model under: the UNet's blocks, or a DiT's (Flux, SD3, Wan)."""
    diffusion_model = model.model.diffusion_model
    layers = dit_layers(diffusion_model) or wan_layers(diffusion_model)
    return layers or {key for key, _ in attention_blocks(diffusion_model)}


def patched(model: ModelPatcher, editor: AttentionEditor, latent_hw: tuple[int, int] | None = None) -> ModelPatcher:
    """A clone of ``model`` with the editor on every attention block, composed with existing patches.
    ``latent_hw``: the latent's size past batch and channels (``(h, w)``; Wan's ``(frames, h, w)``), which a DiT's
    blend maps need (its tokens do not carry it)."""
    if is_wan(model.model.diffusion_model):
        return patched_wan(model, editor, latent_hw)
    if dit_blocks(model.model.diffusion_model):
        return patched_dit(model, editor, latent_hw[-2:] if latent_hw else None)
    refuse_conflicts(
        model, replaces_self=editor.replaces_self_attention, replaces_cross=editor.replaces_cross_attention
    )
    m = model.clone()
    for key, _ in attention_blocks(m.model.diffusion_model):
        theirs_self, theirs_cross = existing_patch(model, "attn1", key), existing_patch(model, "attn2", key)
        m.set_model_attn1_replace(_Hook(editor.self_attention, theirs_self or _comfy_attention), *key)
        m.set_model_attn2_replace(_Hook(editor.cross_attention, theirs_cross or _comfy_attention), *key)
    return m
