"""Test nodes standing in for other packs that patch a model's attention (composition tests) and for
a user pressing Cancel in the middle of a UNet call (interrupt tests)."""

import json
import math


def _attention_keys(diffusion_model):
    """(block, number, index) of every transformer block, as ComfyUI's replace patches key them."""
    keys = []
    for name, _ in diffusion_model.named_modules():
        parts = name.split(".")
        if (
            len(parts) >= 2
            and parts[-2] == "transformer_blocks"
            and parts[0] in ("input_blocks", "middle_block", "output_blocks")
        ):
            block = "middle" if parts[0] == "middle_block" else parts[0].split("_")[0]
            keys.append((block, 0 if block == "middle" else int(parts[1]), int(parts[-1])))
    return keys


class TemperatureAttention:
    """Another pack's attention replace patch: softmax(temperature * q k^T / sqrt(d)) v on every block.

    ``temperature`` 1 is plain attention; ``per_block`` keys the patches by (block, number) only.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "temperature": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0}),
                "kind": (["attn1", "attn2", "both"],),
                "per_block": ("BOOLEAN", {"default": False}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, temperature, kind, per_block):
        import torch

        def attention(q, k, v, extra):
            heads = extra["n_heads"]
            b, n, c = q.shape
            d = c // heads
            qh, kh, vh = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
            probs = torch.softmax(temperature * (qh @ kh.transpose(-1, -2)) / math.sqrt(d), dim=-1)
            return (probs @ vh).transpose(1, 2).reshape(b, n, c)

        m = model.clone()
        for block, number, index in _attention_keys(m.model.diffusion_model):
            where = (block, number) if per_block else (block, number, index)
            if kind in ("attn1", "both"):
                m.set_model_attn1_replace(attention, *where)
            if kind in ("attn2", "both"):
                m.set_model_attn2_replace(attention, *where)
        return (m,)


class InterruptTripwire:
    """An attn1 patch (it runs before every block's self-attention) that raises ComfyUI's interrupt
    flag, exactly as POST /interrupt does, at its ``at_call``-th call, and writes to ``report`` how
    many attention blocks still ran after that."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "at_call": ("INT", {"default": 2, "min": 1}),
                "report": ("STRING", {"default": ""}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, at_call, report):
        import comfy.model_management

        state = {"calls": 0, "after": 0}

        def tripwire(n, context, value, extra):
            state["calls"] += 1
            if state["calls"] == at_call:
                comfy.model_management.interrupt_current_processing(True)
            elif state["calls"] > at_call:
                state["after"] += 1
            with open(report, "w") as f:
                json.dump(state, f)
            return n, context, value

        m = model.clone()
        m.set_model_attn1_patch(tripwire)
        return (m,)


class OtherPackText:
    """A text out of another pack's node (a prompt generator, a file reader): its value is known only once it ran."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "", "multiline": True})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "give"
    CATEGORY = "testing"

    def give(self, text):
        return (text,)


EDITING_NODES = {
    "ContextDiffTest_OtherPackText": OtherPackText,
    "ContextDiffTest_TemperatureAttention": TemperatureAttention,
    "ContextDiffTest_InterruptTripwire": InterruptTripwire,
}
