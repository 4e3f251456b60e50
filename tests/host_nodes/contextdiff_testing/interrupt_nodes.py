"""Test nodes that make one model call long, so that a test can press Cancel (POST /interrupt) in the middle of
a step, as a user does at 768x768 on a CPU, and count how many attention calls still ran after it."""

import copy
import dataclasses
import json
import os
import time


class _Counter:
    """Counts calls by phase into a JSON ``report`` (rewritten atomically, so the test can poll it) and sleeps
    ``delay`` seconds in each call of the phase ``slow`` ("any", "inversion" or "sampling")."""

    def __init__(self, report, delay, slow="any"):
        self.report, self.delay, self.slow = report, delay, slow
        self.counts = {"inversion": 0, "sampling": 0, "decoding": 0, "any": 0}

    def tick(self, phase):
        self.counts[phase] += 1
        self.counts["any"] += 1
        tmp = self.report + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.counts, f)
        os.replace(tmp, self.report)
        if self.slow in ("any", phase):
            time.sleep(self.delay)


def _phase(extra):
    """ComfyUI puts the run's sigmas in the transformer options: ascending is the inversion."""
    sigmas = extra.get("sample_sigmas")
    return "inversion" if sigmas is not None and len(sigmas) > 1 and sigmas[-1] > sigmas[0] else "sampling"


class SlowAttention:
    """Another pack's attn1 patch (it runs before every block's self-attention) that counts the calls and sleeps
    in each: one UNet call of the tiny model then lasts as long as a large image's."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "delay": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 10.0}),
                "report": ("STRING", {"default": ""}),
                "slow": (["any", "inversion", "sampling"],),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, delay, report, slow):
        counter = _Counter(report, delay, slow)

        def slow_attention(n, context, value, extra):
            counter.tick(_phase(extra))
            return n, context, value

        m = model.clone()
        m.set_model_attn1_patch(slow_attention)
        return (m,)


class SlowAdapter:
    """A copy of an adapter whose attention layers count their calls and sleep in each (the adapter's own
    attention, outside the UNet); the loaded adapter itself is left as it is."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "adapter": ("CONTEXTDIFF_ADAPTER",),
                "delay": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 10.0}),
                "report": ("STRING", {"default": ""}),
            }
        }

    RETURN_TYPES = ("CONTEXTDIFF_ADAPTER",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, adapter, delay, report):
        counter = _Counter(report, delay)
        module = copy.deepcopy(adapter.module)
        for m in module.modules():
            if type(m).__name__ == "Attention":
                m.register_forward_pre_hook(lambda *_: counter.tick("sampling"))
        return (dataclasses.replace(adapter, module=module, _device_copies={}),)


class SlowVideoFrames:
    """Passes a video name through, and makes each frame the pack decodes in this prompt count itself and sleep (as
    a full-resolution frame decoded and resized on a CPU does); the pack's reader is restored at the next prompt.
    Link its output to the Video Edit's ``video`` so that it runs just before."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": ("STRING", {"default": ""}),
                "delay": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 10.0}),
                "report": ("STRING", {"default": ""}),
            }
        }

    RETURN_TYPES = ("STRING",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, video, delay, report):
        import sys

        import server

        import nodes

        pack = nodes.NODE_CLASS_MAPPINGS["ContextDiffVideoEdit"].__module__.rsplit(".nodes.", 1)[0]
        reader = sys.modules[pack + ".media.video"]
        original = getattr(reader._resize_uint8, "original", reader._resize_uint8)
        counter, prompt_id = _Counter(report, delay), server.PromptServer.instance.last_prompt_id

        def slow_resize(rgb, width, height):
            if server.PromptServer.instance.last_prompt_id != prompt_id:
                reader._resize_uint8 = original  # another prompt: this one's reader again
            else:
                counter.tick("decoding")
            return original(rgb, width, height)

        slow_resize.original = original
        reader._resize_uint8 = slow_resize
        return (video,)


INTERRUPT_NODES = {
    "ContextDiffTest_SlowVideoFrames": SlowVideoFrames,
    "ContextDiffTest_SlowAttention": SlowAttention,
    "ContextDiffTest_SlowAdapter": SlowAdapter,
}
