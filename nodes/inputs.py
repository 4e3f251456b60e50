"""Inputs that several ContextDiff nodes share, declared once so their ranges and tooltips agree.

Each function returns a fresh ``io.*.Input`` (a schema object must not be shared between nodes).
"""

from __future__ import annotations

from comfy_api.latest import io

from .types import Adapter

STRENGTH_TIP = (
    "Scales the context bias b_t = k_t r_phi(x0hat, c, t) (paper Eq. 1). 0 gives exactly the base "
    "sampler; 0.5-1.5 is the useful range."
)
ADAPTER_TIP = "Context-aware adapter from Load ContextDiff Adapter. Leave empty to run the base sampler."
FUSE_TIP = (
    "Fraction of the schedule, from the noisy end, whose attention is fused: t in [fuse_start*T, T] "
    "(paper: 0.5). Lower keeps more of the source's structure."
)
BLEND_WORDS_TIP = (
    "Words whose cross-attention marks the edited region, e.g. 'cat, dog' (source word, target "
    "word). Outside the mask the result follows the source. Empty: no blend mask."
)
BLEND_THRESHOLD_TIP = (
    "Cut-off of the normalised attention of the blend words: above it a pixel may change. Lower edits a larger region."
)
EDIT_MODEL_TIP = (
    "The diffusion model (SD1.x, SD2.x, SDXL, SD3, Flux, Wan 2.x t2v: inversion, attention fusion and blend words). "
    "Use the same model for the inversion and the edit."
)
VIDEO_MODEL_TIP = (
    "The diffusion model: SD1.x, SD2.x, SDXL (sparse-causal attention between frames) or Wan 2.x t2v (a native video "
    "model: chunks of 1 + 4k frames through the Wan VAE); SD3 and Flux are image models."
)
EDIT_CFG_TIP = "Classifier-free guidance scale of the edit (target prompt against the negative)."


def adapter_strength() -> io.Float.Input:
    return io.Float.Input(
        "adapter_strength", default=1.0, min=-10.0, max=10.0, step=0.05, round=False, tooltip=STRENGTH_TIP
    )


def adapter(tooltip: str = ADAPTER_TIP) -> io.Input:
    return Adapter.Input("adapter", optional=True, tooltip=tooltip)


def fuse_start() -> io.Float.Input:
    return io.Float.Input("fuse_start", default=0.5, min=0.0, max=1.0, step=0.05, tooltip=FUSE_TIP)


def blend_words() -> io.String.Input:
    return io.String.Input("blend_words", default="", tooltip=BLEND_WORDS_TIP)


def blend_threshold() -> io.Float.Input:
    return io.Float.Input("blend_threshold", default=0.3, min=0.0, max=1.0, step=0.01, tooltip=BLEND_THRESHOLD_TIP)


def edit_cfg() -> io.Float.Input:
    return io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1, round=0.01, tooltip=EDIT_CFG_TIP)


def edit_model(tooltip: str = EDIT_MODEL_TIP) -> io.Model.Input:
    return io.Model.Input("model", tooltip=tooltip)


def edit_steps(maximum: int, tooltip: str) -> io.Int.Input:
    """DDIM steps of an inversion and its edit (paper: 20); each node sets its own ceiling."""
    return io.Int.Input("steps", default=20, min=1, max=maximum, tooltip=tooltip)


def clip(tooltip: str, optional: bool = False) -> io.Clip.Input:
    """The CLIP that tokenises an edit's prompts (the Edit Sampler's is optional, the Video Edit's is not)."""
    return io.Clip.Input("clip", optional=optional, tooltip=tooltip)


def vae(tooltip: str, optional: bool = False) -> io.Vae.Input:
    """The VAE of an edit's images (the Edit Sampler's is optional, the Video Edit's is not)."""
    return io.Vae.Input("vae", optional=optional, tooltip=tooltip)
