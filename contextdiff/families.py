"""Which base models ContextDiff runs on, decided in one place (the nodes and the trainer ask here).

ContextDiff's equations are written for a process pair ``(a_t, s_t)`` (docs/design.md §1.1): variance-preserving
diffusion (every model ComfyUI samples as ``x = x0 + sigma eps`` with a discrete schedule, eps or v, with or without
zero terminal SNR; EDM-sampled ones too, untested) and flow matching (ComfyUI's CONST sampling: SD3/SD3.5, Flux,
Wan). :func:`process_of` picks the pair from a model's ``model_sampling``; other flows (Cosmos') are refused.
The DDPM posterior has no ComfyUI sampler to hold it to on flow models, so it is refused there by name
(:func:`require_method`); inversion and sampling from its noise run on flow models, attention fusion on DiT
attention is a separate feature (:func:`require_editable`). The trainer's adapter mode accepts every family here
(:func:`require_trainable`).

This module is the family table and the rules; it never imports ComfyUI (``prediction_of`` reads a
sampling object's class names). What reads a ComfyUI ``BaseModel`` (``identify``) and builds its
conditioning is host-side, in ``hostside/families.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .schedule import FLOW, VP, NoiseProcess

# ComfyUI's model_sampling objects are mixins (EPS, V_PREDICTION, ModelSamplingDiscrete...) with no common base.
ModelSampling = Any


@dataclass(frozen=True)
class Family:
    """A model family the adapter, the samplers and the trainer support and test."""

    key: str  # the adapter file's ``base_model`` metadata
    name: str
    context_dim: int  # width of the CONDITIONING tokens the adapter reads
    native_size: int  # pixels per side the family was trained at
    pooled_dim: int  # width of the pooled text embedding the UNet reads (SDXL's ``y``), 0 for none
    configs: tuple[str, ...]  # ComfyUI ``comfy.supported_models`` classes of the family
    latent_channels: int = 4
    flow: bool = False  # flow matching (ComfyUI's CONST sampling) rather than VP
    video: bool = False  # 5-D latents (batch, channels, frames, height, width)

    @property
    def pooled(self) -> bool:
        return self.pooled_dim > 0

    @property
    def process(self) -> NoiseProcess:
        return FLOW if self.flow else VP


SD1 = Family("sd15", "SD1.x", 768, 512, 0, ("SD15",))
SD2 = Family("sd2", "SD2.x", 1024, 768, 0, ("SD20",))
SDXL = Family("sdxl", "SDXL", 2048, 1024, 1280, ("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"))
# Flow matching. Text tokens are 4096 wide in all three: SD3's CLIP-L/G (zero-padded) + T5-XXL, Flux's T5-XXL, Wan's
# umT5-XXL. Pooled: SD3 CLIP-L + CLIP-G (2048), Flux CLIP-L (768), Wan none.
SD3 = Family("sd3", "SD3/SD3.5", 4096, 1024, 2048, ("SD3",), 16, flow=True)
FLUX = Family("flux", "Flux", 4096, 1024, 768, ("Flux", "FluxSchnell"), 16, flow=True)
WAN = Family("wan21", "Wan 2.x", 4096, 832, 0, ("WAN21_T2V",), 16, flow=True, video=True)
FAMILIES = (SD1, SD2, SDXL, SD3, FLUX, WAN)
FLOW_FAMILIES = tuple(f for f in FAMILIES if f.flow)

# Class names in ComfyUI's model_sampling hierarchy that mark a non-VP parameterisation.
FLOW_SAMPLING = {"CONST", "ModelSamplingFlux", "ModelSamplingDiscreteFlow", "COSMOS_RFLOW"}
SUPPORTED = "SD1.x, SD2.x, SDXL (eps or v-prediction), SD3/SD3.5, Flux or Wan 2.x (flow matching)"


@dataclass(frozen=True)
class ModelInfo:
    """What ``identify`` found: the family (None for a VP model outside the tested families)."""

    family: Family | None
    config: str  # ComfyUI's supported-model class, e.g. "SSD1B"
    prediction: str  # eps, v, edm, x0, flow, or the sampling class name when unknown
    zsnr: bool  # zero terminal SNR schedule (ComfyUI's rescaled sigmas)
    context_dim: int | None

    @property
    def variance_preserving(self) -> bool:
        return self.prediction != "flow"

    @property
    def flow(self) -> bool:
        return self.prediction == "flow"

    def describe(self) -> str:
        """E.g. ``SDXL (SSD1B, v-prediction, zero terminal SNR)``."""
        parts = [self.config, f"{self.prediction}-prediction"] + (["zero terminal SNR"] if self.zsnr else [])
        return f"{self.family.name if self.family else 'unknown family'} ({', '.join(parts)})"


def family_of_config(config_name: str) -> Family | None:
    return next((f for f in FAMILIES if config_name in f.configs), None)


def family_of_key(key: str) -> Family | None:
    """The family an adapter file's ``base_model`` metadata names (None for joint models and unknown keys)."""
    return next((f for f in FAMILIES if f.key == key), None)


def families_of_context_dim(context_dim: int) -> str | None:
    """The names of the families whose text tokens are ``context_dim`` wide, e.g. ``SD3/SD3.5, Flux or Wan 2.x``."""
    names = [f.name for f in FAMILIES if f.context_dim == context_dim]
    if not names:
        return None
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def prediction_of(model_sampling: ModelSampling) -> str:
    """The parameterisation of a ComfyUI ``model_sampling`` object, from its class hierarchy."""
    names = [c.__name__ for c in type(model_sampling).__mro__]
    if FLOW_SAMPLING.intersection(names) or not hasattr(model_sampling, "timestep"):
        return "flow"
    for cls, kind in (("EDM", "edm"), ("V_PREDICTION", "v"), ("X0", "x0"), ("IMG_TO_IMG", "x0"), ("EPS", "eps")):
        if cls in names:
            return kind
    return names[0]


def process_of(model_sampling: ModelSampling) -> NoiseProcess:
    """The process pair of a ComfyUI ``model_sampling``: VP for every eps/v model, flow matching for CONST (SD3,
    Flux, Wan and any model ComfyUI samples as ``sigma noise + (1 - sigma) x0``); anything else is refused."""
    names = [c.__name__ for c in type(model_sampling).__mro__]
    prediction = prediction_of(model_sampling)
    if prediction == "flow":
        if "CONST" in names:
            return FLOW
        raise ValueError(
            f"ContextDiff supports {SUPPORTED}; this model's sampling ({names[0]}: "
            f"{', '.join(n for n in names if n in FLOW_SAMPLING)}) is neither: use one of those families"
        )
    return VP


def adapter_timestep(model_sampling: ModelSampling) -> Callable[[Any], Any]:
    """sigma -> the timestep an adapter is told: the model's own training timestep on VP models, ``1000 sigma`` on
    every flow model (SD3's convention; Flux's own ``timestep`` is ``sigma``), so one scale serves all flow families."""
    if process_of(model_sampling) is FLOW:
        return lambda sigma: sigma * 1000.0
    return model_sampling.timestep


def require_method(model_sampling: ModelSampling, method: str, eta: float) -> NoiseProcess:
    """The model's process, after refusing by name what has no flow counterpart: the DDPM posterior (method
    ``ddpm``) and DDIM with ``eta > 0``; deterministic DDIM (ComfyUI's ``euler`` at strength 0) runs on flow."""
    process = process_of(model_sampling)
    if process is FLOW and (method == "ddpm" or eta > 0):
        option = "method ddpm" if method == "ddpm" else f"eta {eta}"
        raise ValueError(
            f"{option} is the DDPM posterior, which has no counterpart ComfyUI samples flow-matching models "
            "(SD3, Flux, Wan) with: choose method ddim with eta 0 (on a flow model: ComfyUI's euler with the "
            "context bias)"
        )
    return process


def fuses_attention(model_sampling: ModelSampling) -> bool:
    """Whether the edit nodes fuse this model's attention by its process alone: UNet attention (VP families) yes. A
    flow model's attention is fused where the editor reaches its DiT blocks, which only the model object tells (SD3
    and Flux, Wan 2.x t2v yes; the nodes decide: ``nodes.edit_runs.fuses_attention``)."""
    return process_of(model_sampling) is VP


def require_fusion(fuses: bool, what: str, instead: str) -> None:
    """Refuse ``what`` (a feature that fuses attention) by name where the model's attention is not fused (``fuses``
    false), saying ``instead`` what to do."""
    if not fuses:
        raise ValueError(
            f"{what} attention fusion, which runs on UNet models (SD1.x, SD2.x, SDXL), on SD3's and Flux's joint "
            f"attention, and on Wan 2.x t2v; on this model it is not implemented yet: {instead}"
        )


def require_editable(
    model_sampling: ModelSampling, fuse: bool = False, blend_words: str = "", fuses: bool | None = None
) -> NoiseProcess:
    """The model's process, after refusing by name what the edit nodes cannot do on it. Every model inverts
    (bias-aware, exact with refinement) and samples from its inverted noise; attention fusion (``fuse``) and the
    blend mask (``blend_words``, made from fused cross-attention) run where the model's attention is fused
    (``fuses``, decided on the model object by the nodes; ``None``: :func:`fuses_attention`)."""
    wants = [name for name, on in (("fuse_attention", fuse), ("blend_words", bool(blend_words.strip()))) if on]
    if wants:
        require_fusion(
            fuses_attention(model_sampling) if fuses is None else fuses,
            f"{' and '.join(wants)} need{'s' if len(wants) == 1 else ''}",
            "turn fuse_attention off and clear blend_words (the Edit Sampler then samples the inverted noise with its "
            "prompt: the source prompt reconstructs the image, another prompt re-generates it from that noise; a Wan "
            "video is edited with fusion by the ContextDiff Video Edit)",
        )
    return process_of(model_sampling)


def require_trainable(info: ModelInfo) -> Family:
    """The trainer builds each family's conditioning itself, so it accepts only the tested families: SD1.x, SD2.x
    and SDXL (eps or v), SD3/SD3.5, Flux and Wan 2.x (flow matching, ComfyUI's CONST)."""
    if info.family is None:
        names = ", ".join(f"{f.name} ({', '.join(f.configs)})" for f in FAMILIES)
        raise ValueError(
            f"the trainer supports {names}; this checkpoint is ComfyUI's {info.config}, whose "
            "conditioning it does not build: train on one of those families"
        )
    wanted = ("flow",) if info.family.flow else ("eps", "v")
    if info.prediction not in wanted:
        kinds = "flow-matching" if info.family.flow else "eps- and v-prediction"
        raise ValueError(
            f"the trainer supports {kinds} {info.family.name} models; this one uses {info.prediction}: "
            f"train on a {' or '.join(wanted)} checkpoint"
        )
    return info.family
