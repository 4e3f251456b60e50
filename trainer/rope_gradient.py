"""The gradient of ComfyUI 0.8's rotary embedding, whose comfy-kitchen ops ship without one.

ComfyUI 0.8 computes the rotary embedding of Flux and Wan (``comfy.ldm.flux.math.apply_rope``/``apply_rope1``) with
comfy-kitchen's custom ops when that package is installed (it is in ComfyUI 0.8's requirements). They are registered
for inference only: a backward through them raises "no autograd formula". The adapter is trained through the frozen
model, so the gradient has to pass them. The embedding rotates each pair of channels by the 2x2 matrix ``F`` held in
``freqs_cis[..., :, :]`` (``out = F x``, ComfyUI's own PyTorch fallback reads the same layout), so the gradient with
respect to ``x`` is ``F^T g``: the same op with the matrices transposed. ``freqs_cis`` is a function of the token
positions only and gets no gradient. Forward is untouched: ComfyUI's op computes it, on any backend.
"""

from __future__ import annotations

import functools

import torch


def _rotate_back(grad: torch.Tensor | None, freqs_cis: torch.Tensor) -> torch.Tensor | None:
    if grad is None:
        return None
    return torch.ops.comfy_kitchen.apply_rope1(grad.contiguous(), freqs_cis.transpose(-1, -2).contiguous())


def _keep_freqs(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[-1])


def _backward_one(ctx, grad):
    (freqs_cis,) = ctx.saved_tensors
    return _rotate_back(grad, freqs_cis), None


def _backward_pair(ctx, grad_q, grad_k):
    (freqs_cis,) = ctx.saved_tensors
    return _rotate_back(grad_q, freqs_cis), _rotate_back(grad_k, freqs_cis), None


@functools.cache
def register_rope_gradients() -> bool:
    """Give comfy-kitchen's ``apply_rope1`` and ``apply_rope`` their gradient, once per process; False when the
    package's ops are not loaded (ComfyUI then uses its own PyTorch rotary embedding, which has one)."""
    ops = torch.ops.comfy_kitchen
    if not (hasattr(ops, "apply_rope1") and hasattr(ops, "apply_rope")):
        return False
    torch.library.register_autograd("comfy_kitchen::apply_rope1", _backward_one, setup_context=_keep_freqs)
    torch.library.register_autograd("comfy_kitchen::apply_rope", _backward_pair, setup_context=_keep_freqs)
    return True
