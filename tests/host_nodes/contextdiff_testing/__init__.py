"""Test-only nodes loaded into the host by the test suite: random tiny models and conditionings.

Real checkpoints need real SD sizes to auto-detect, so the tests build small random models in
Python instead (the same builder the in-process reference uses, so both see identical weights).

ComfyUI loads this folder in its own process, where nothing else makes the test helpers importable: this is
the one module under tests/ that edits the import path. It appends (``tests/`` for ``comfy_models``, the
repository root for the packages those import), so ComfyUI's own modules, ``nodes.py`` first, keep precedence.
"""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path.extend(p for p in (str(TESTS), str(TESTS.parent)) if p not in sys.path)

from comfy_models import (  # noqa: E402 (after the import path above)
    build_sd15,
    build_tiny_clip,
    build_tiny_controlnet,
    build_tiny_vae,  # noqa: E402
    random_conditioning,
)


class TinyModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0}),
                "model_channels": ("INT", {"default": 32, "min": 8, "max": 320}),
                "context_dim": ("INT", {"default": 768}),
            },
            "optional": {
                "weight_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0}),
                "attn_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed, model_channels, context_dim, weight_scale=1.0, attn_scale=1.0):
        return (build_sd15(seed, model_channels, context_dim, weight_scale=weight_scale, attn_scale=attn_scale),)


class RandomConditioning:
    """``batch`` random prompts; ``pick`` (e.g. "0,1,0") lists them per sample explicitly."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0}),
                "context_dim": ("INT", {"default": 768}),
                "tokens": ("INT", {"default": 77}),
            },
            "optional": {"batch": ("INT", {"default": 1, "min": 1, "max": 64}), "pick": ("STRING", {"default": ""})},
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed, context_dim, tokens, batch=1, pick=""):
        [[cond, extra]] = random_conditioning(seed, tokens, context_dim, batch)
        if pick:
            idx = [int(i) for i in pick.split(",")]
            cond, extra = cond[idx], {"pooled_output": extra["pooled_output"][idx]}
        return ([[cond, extra]],)


class TinyClip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed):
        return (build_tiny_clip(seed),)


class TinyVae:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed):
        return (build_tiny_vae(seed),)


class TinyCheckpoint:
    """Stands in for CheckpointLoaderSimple when the tests run the shipped workflows."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, ckpt_name):
        return build_sd15(0, 32, 768, attn_scale=6.0), build_tiny_clip(0), build_tiny_vae(0)


class TinyControlNet:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed):
        return (build_tiny_controlnet(seed),)


class Poison:
    """Puts NaN into a latent or a conditioning (what an fp16 overflow leaves behind)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"optional": {"latent": ("LATENT",), "conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ("LATENT", "CONDITIONING")
    FUNCTION = "poison"
    CATEGORY = "testing"

    def poison(self, latent=None, conditioning=None):
        out_latent = None
        if latent is not None:
            samples = latent["samples"].clone()
            samples[..., 0, 0] = float("nan")
            out_latent = dict(latent, samples=samples)
        out_cond = None
        if conditioning is not None:
            c = conditioning[0][0].clone()
            c[0, 0, 0] = float("inf")
            out_cond = [[c, conditioning[0][1]]]
        return out_latent, out_cond


class RandomLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"channels": ("INT", {"default": 4}), "size": ("INT", {"default": 8})},
            "optional": {"frames": ("INT", {"default": 0, "min": 0})},  # > 0: a video latent (Wan's 5-D layout)
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, channels, size, frames=0):
        import torch

        shape = (1, channels, *((frames,) if frames else ()), size, size)
        return ({"samples": torch.randn(shape, generator=torch.Generator().manual_seed(0))},)


NODE_CLASS_MAPPINGS = {
    "ContextDiffTest_RandomLatent": RandomLatent,
    "ContextDiffTest_Poison": Poison,
    "ContextDiffTest_TinyCheckpoint": TinyCheckpoint,
    "ContextDiffTest_TinyControlNet": TinyControlNet,
    "ContextDiffTest_TinyClip": TinyClip,
    "ContextDiffTest_TinyVae": TinyVae,
    "ContextDiffTest_TinyModel": TinyModel,
    "ContextDiffTest_RandomConditioning": RandomConditioning,
}

from .families import FAMILY_NODES  # noqa: E402  (SD2.x / SDXL-family test nodes)

NODE_CLASS_MAPPINGS.update(FAMILY_NODES)

from .editing_nodes import EDITING_NODES  # noqa: E402  (other packs' attention patches, interrupt tripwire)

NODE_CLASS_MAPPINGS.update(EDITING_NODES)

from .sampling_nodes import SAMPLING_NODES  # noqa: E402  (exact Gaussian denoiser, NaN prediction)

NODE_CLASS_MAPPINGS.update(SAMPLING_NODES)

from .interrupt_nodes import INTERRUPT_NODES  # noqa: E402  (slow attention calls: Cancel in the middle of a step)

NODE_CLASS_MAPPINGS.update(INTERRUPT_NODES)
