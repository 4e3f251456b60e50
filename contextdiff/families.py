"""Which base models ContextDiff runs on, decided in one place (the nodes and the trainer ask here).

ContextDiff's equations are written for variance-preserving diffusion (docs/design.md §1): every
model ComfyUI samples as ``x = x0 + sigma eps`` with a discrete training schedule, whatever it
predicts (eps, v, with or without zero terminal SNR). Flow-matching models (SD3, Flux) are refused.

This module is the family table and the rules; it never imports ComfyUI (``prediction_of`` reads a
sampling object's class names). What reads a ComfyUI ``BaseModel`` (``identify``) and builds its
conditioning is host-side, in ``hostside/families.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    @property
    def pooled(self) -> bool:
        return self.pooled_dim > 0


SD1 = Family("sd15", "SD1.x", 768, 512, 0, ("SD15",))
SD2 = Family("sd2", "SD2.x", 1024, 768, 0, ("SD20",))
SDXL = Family("sdxl", "SDXL", 2048, 1024, 1280, ("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"))
FAMILIES = (SD1, SD2, SDXL)

# Class names in ComfyUI's model_sampling hierarchy that mark a non-VP parameterisation.
FLOW_SAMPLING = {"CONST", "ModelSamplingFlux", "ModelSamplingDiscreteFlow", "COSMOS_RFLOW"}

FLOW_MESSAGE = (
    "ContextDiff samplers need a variance-preserving model (SD1.x, SD2.x, SDXL: eps or v-prediction); "
    "this model uses flow matching, for which the paper's equations do not hold."
)


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

    def describe(self) -> str:
        """E.g. ``SDXL (SSD1B, v-prediction, zero terminal SNR)``."""
        parts = [self.config, f"{self.prediction}-prediction"] + (["zero terminal SNR"] if self.zsnr else [])
        return f"{self.family.name if self.family else 'unknown family'} ({', '.join(parts)})"


def family_of_config(config_name: str) -> Family | None:
    return next((f for f in FAMILIES if config_name in f.configs), None)


def family_of_context_dim(context_dim: int) -> Family | None:
    return next((f for f in FAMILIES if f.context_dim == context_dim), None)


def prediction_of(model_sampling: ModelSampling) -> str:
    """The parameterisation of a ComfyUI ``model_sampling`` object, from its class hierarchy."""
    names = [c.__name__ for c in type(model_sampling).__mro__]
    if FLOW_SAMPLING.intersection(names) or not hasattr(model_sampling, "timestep"):
        return "flow"
    for cls, kind in (("EDM", "edm"), ("V_PREDICTION", "v"), ("X0", "x0"), ("IMG_TO_IMG", "x0"), ("EPS", "eps")):
        if cls in names:
            return kind
    return names[0]


def require_vp(model_sampling: ModelSampling) -> None:
    """Raise the one-sentence refusal for flow-matching models (samplers accept every VP model)."""
    if prediction_of(model_sampling) == "flow":
        raise ValueError(FLOW_MESSAGE)


def require_trainable(info: ModelInfo) -> Family:
    """The trainer builds each family's conditioning itself, so it accepts only the tested families."""
    if not info.variance_preserving:
        raise ValueError(FLOW_MESSAGE)
    if info.family is None:
        names = ", ".join(f"{f.name} ({', '.join(f.configs)})" for f in FAMILIES)
        raise ValueError(
            f"the trainer supports {names}; this checkpoint is ComfyUI's {info.config}, whose "
            "conditioning it does not build: train on one of those families"
        )
    if info.prediction not in ("eps", "v"):
        raise ValueError(
            f"the trainer supports eps- and v-prediction models; this {info.family.name} model uses "
            f"{info.prediction}: train on an eps or v checkpoint"
        )
    return info.family
