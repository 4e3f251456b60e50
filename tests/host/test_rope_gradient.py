"""The gradient the trainer gives ComfyUI 0.8's comfy-kitchen rotary embedding (trainer/rope_gradient.py), checked
against the rotation written out here in float64. Runs where comfy-kitchen is installed (the 0.8.0 host's venv);
on 0.3.75 ComfyUI has no such op and its own PyTorch rotary embedding carries the gradient."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("comfy_kitchen", reason="comfy-kitchen (ComfyUI 0.8's requirement) is not installed")


def rotations(n: int, pairs: int, gen: torch.Generator) -> torch.Tensor:
    """freqs_cis as ComfyUI's rope() lays it out: (1, 1, tokens, pairs, 2, 2) rotation matrices."""
    angle = torch.randn(1, 1, n, pairs, generator=gen)
    c, s = angle.cos(), angle.sin()
    return torch.stack([c, -s, s, c], dim=-1).reshape(1, 1, n, pairs, 2, 2)


def rotate(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """out[2i + j] = sum_k F[i, j, k] x[2i + k], in float64."""
    pairs = x.double().reshape(*x.shape[:-1], -1, 2)
    return torch.einsum("...ijk,...ik->...ij", f.double(), pairs).reshape(x.shape)


def test_comfy_kitchen_rope_gets_the_transposed_rotation_as_its_gradient():
    import comfy_kitchen  # noqa: F401  (defines the ops)

    from trainer.rope_gradient import register_rope_gradients

    gen = torch.Generator().manual_seed(0)
    q, k, up_q, up_k = (torch.randn(2, 3, 7, 16, generator=gen) for _ in range(4))
    f = rotations(7, 8, gen)
    op1, op2 = torch.ops.comfy_kitchen.apply_rope1, torch.ops.comfy_kitchen.apply_rope
    if register_rope_gradients.cache_info().currsize == 0:  # not yet given in this process: why the trainer does
        with pytest.raises(RuntimeError, match="no autograd formula"):
            (op1(q.clone().requires_grad_(True), f) * up_q).sum().backward()
    assert register_rope_gradients() and register_rope_gradients()  # once per process, idempotent

    x = q.clone().requires_grad_(True)
    out = op1(x, f)
    assert torch.allclose(out.double(), rotate(q, f), atol=1e-5)  # the layout this test writes out is the op's
    (out * up_q).sum().backward()
    xd = q.double().requires_grad_(True)
    (rotate(xd, f) * up_q.double()).sum().backward()
    assert torch.allclose(x.grad.double(), xd.grad, atol=1e-5) and xd.grad.abs().max() > 0.1

    a, b = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    oa, ob = op2(a, b, f)
    (oa * up_q + ob * up_k).sum().backward()
    assert torch.allclose(a.grad.double(), xd.grad, atol=1e-5)
    kd = k.double().requires_grad_(True)
    (rotate(kd, f) * up_k.double()).sum().backward()
    assert torch.allclose(b.grad.double(), kd.grad, atol=1e-5)
