"""Inversion-then-edit bookkeeping that is independent of the host: the settings of the inversion, the edit and
the video edit (each built once from a node's inputs), the fused window, and what inversion hands to editing.

``t in [fuse_start * T, T]`` (paper §4.2: fuse_start = 0.5, T = 20 DDIM steps) are the first
``(1 - fuse_start)`` of the sampling steps, counted from the noisiest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from typing import TypeVar

import torch

from .attention_store import AttentionStore
from .errors import PackError

S = TypeVar("S")  # a settings dataclass


class EditSourceMismatch(PackError):
    """An edit source used with another model, adapter or strength than the one that made it."""


class StepIndex:
    """Maps a sigma to its index in a descending sampling schedule (``None`` if not in it)."""

    def __init__(self, sigmas_desc: torch.Tensor, rtol: float = 1e-4):
        self.sigmas = [float(s) for s in sigmas_desc]
        self.rtol = rtol

    def __call__(self, sigma: float) -> int | None:
        for i, s in enumerate(self.sigmas):
            if abs(sigma - s) <= self.rtol * max(abs(s), 1e-8):
                return i
        return None


def fused_steps(n_steps: int, fuse_start: float) -> set[int]:
    """Sampling-step indices (0 = noisiest) inside ``t in [fuse_start*T, T]``."""
    if not 0.0 <= fuse_start <= 1.0:
        raise ValueError(f"fuse_start must be in [0, 1], got {fuse_start}")
    return set(range(int(round((1.0 - fuse_start) * n_steps))))


def trajectory_recorder(store_latents: dict, step_of: Callable[[float], int | None]) -> Callable[[dict], None]:
    """An inversion callback keeping the inverted latent at every level (k-space) by step index."""

    def callback(info: dict) -> None:
        # The inversion passes its level as a host float: reading the device's sigma would block every step.
        step = step_of(info["sigma_host"] if "sigma_host" in info else float(info["sigma"]))
        if step is not None:
            store_latents[step] = info["x"].detach().clone()

    return callback


def from_node_inputs(cls: type[S], inputs: Mapping[str, object], **renamed: tuple[str, Callable] | None) -> S:
    """A settings dataclass from a node's inputs: each field from the input of its own name, converted to the
    type of its default; ``renamed`` maps a field to ``(input name, converter)``, or to ``None`` for a field that
    no input sets (it keeps its default). A missing input is a KeyError: the node's schema and the settings
    disagree, which is a bug, not a user's error."""
    values = {}
    for f in fields(cls):
        source = renamed.get(f.name, (f.name, type(f.default)))
        if source is not None:
            values[f.name] = source[1](inputs[source[0]])
    return cls(**values)


@dataclass(frozen=True)
class InversionSettings:
    """How an inversion is run; the edit samples the same schedule and fuses the same window."""

    steps: int = 20
    scheduler: str = "ddim_uniform"
    cfg: float = 1.0
    fuse_start: float = 0.5
    refine_steps: int = 0
    strength: float = 1.0  # adapter_strength
    store_dtype: torch.dtype = torch.float16
    store_maps: bool = False

    @cached_property
    def fused_steps(self) -> frozenset[int]:
        """The fused sampling steps (:func:`fused_steps`), computed once per settings object."""
        return frozenset(fused_steps(self.steps, self.fuse_start))

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, object]) -> InversionSettings:
        """From the inversion node's inputs (``adapter_strength``, ``store_precision`` named as the node names them)."""
        return from_node_inputs(
            cls,
            inputs,
            strength=("adapter_strength", float),
            store_dtype=("store_precision", lambda p: torch.float16 if p == "fp16" else torch.float32),
            store_maps=None,
        )


@dataclass(frozen=True)
class EditSettings:
    """The edit sampler's settings: guidance, the prompt texts, what is fused and the adapter strength."""

    cfg: float = 7.5
    source_prompt: str = ""
    target_prompt: str = ""
    blend_words: str = ""
    blend_threshold: float = 0.3
    fuse: bool = True  # the node's fuse_attention
    strength: float = 1.0  # adapter_strength

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, object]) -> EditSettings:
        """From a node's inputs, named as the Edit Sampler and the Video Edit node name them."""
        # The Video Edit node has no fuse_attention input: it always fuses.
        fuse = ("fuse_attention", bool) if "fuse_attention" in inputs else None
        return from_node_inputs(cls, inputs, fuse=fuse, strength=("adapter_strength", float))


@dataclass(frozen=True)
class VideoSettings:
    """The video edit node's settings: its inversion, its edit, the frames it reads and how it chunks them."""

    edit: EditSettings
    inversion: InversionSettings
    max_frames: int = 24
    frame_stride: int = 1
    size: int = 512
    chunk_size: int = 8
    overlap: int = 2
    memory_limit_gb: float = 0.0
    save_mp4: bool = False
    filename_prefix: str = "contextdiff/edit"

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, object]) -> VideoSettings:
        """From the video edit node's inputs. Its inversion is classic DDIM (cfg 1, fp16 store) on ``ddim_uniform``."""
        edit = EditSettings.from_inputs(inputs)
        inversion = InversionSettings(
            steps=int(inputs["steps"]), fuse_start=float(inputs["fuse_start"]), strength=edit.strength
        )
        names = ("max_frames", "frame_stride", "size", "chunk_size", "overlap")
        return cls(
            edit=edit,
            inversion=inversion,
            **{name: int(inputs[name]) for name in names},
            memory_limit_gb=float(inputs["memory_limit_gb"]),
            save_mp4=bool(inputs["save_mp4"]),
            filename_prefix=str(inputs["filename_prefix"]),
        )


@dataclass(frozen=True)
class ModelIdentity:
    """What a diffusion model computes with, cheaply: digests of a sample of its own weights, of the weight patches
    that change them (LoRA, merges: keys, strengths and sampled values) and of its noise schedule (model_sampling),
    its prediction type (``EPS``, ``V_PREDICTION``, ...), and the functions other nodes hooked into its sampling
    (FreeU's patch, wrappers: each named by its kind and maker)."""

    weights: str
    patches: str
    patch_count: int
    sampling: str
    prediction: str = ""
    wrappers: tuple[str, ...] = ()


@dataclass(frozen=True)
class EditIdentity:
    """What made an edit source: the model, the adapter (file name and content digest) and its strength.

    Without an adapter (or at strength 0) there is no bias: ``adapter`` is then ``None`` and ``strength`` 0.
    """

    model: ModelIdentity
    adapter: str | None = None
    adapter_digest: str | None = None
    strength: float = 0.0

    def mismatch(self, edit: EditIdentity) -> str | None:
        """One sentence naming what differs between this inversion's identity and the edit's, or ``None``."""
        same_model = "connect the model of the inversion to the edit sampler, or invert again with this one"
        if self.model.weights != edit.model.weights:
            return f"the edit_source was inverted with another model (its UNet weights differ): {same_model}"
        if self.model.patches != edit.model.patches:
            other = " with other values" if self.model.patch_count == edit.model.patch_count else ""
            return (
                f"the edit_source was inverted with {self.model.patch_count} weight patches on the model (LoRA, "
                f"merges), this model has {edit.model.patch_count}{other}: {same_model}"
            )
        if self.model.prediction != edit.model.prediction:
            schedule = " and another noise schedule" if self.model.sampling != edit.model.sampling else ""
            return (
                f"the edit_source was inverted with a model that predicts {self.model.prediction}, this model "
                f"predicts {edit.model.prediction}{schedule} (the prediction type, e.g. a ModelSamplingDiscrete node "
                f"on one of the two models): {same_model}"
            )
        if self.model.sampling != edit.model.sampling:
            return (
                "the edit_source was inverted with another noise schedule (model_sampling, e.g. a ModelSampling "
                f"node on one of the two models): {same_model}"
            )
        if (self.adapter, self.adapter_digest) != (edit.adapter, edit.adapter_digest):
            inv, ed = self.adapter or "none", edit.adapter or "none"
            if inv == ed:
                inv, ed = f"{inv} (one file's content)", f"{ed} (another's)"
            return (
                f"the edit_source was inverted with adapter {inv}, the edit uses {ed}: connect the same adapter "
                "(and adapter_strength) to both nodes for a faithful reconstruction"
            )
        if self.strength != edit.strength:
            return (
                f"the edit_source was inverted with adapter_strength {self.strength:g}, the edit uses "
                f"{edit.strength:g}: use the same strength on both nodes for a faithful reconstruction"
            )
        return None

    def require_match(self, edit: EditIdentity) -> None:
        """Raise :class:`EditSourceMismatch` naming the first difference."""
        problem = self.mismatch(edit)
        if problem:
            raise EditSourceMismatch(problem)

    def hook_differences(self, edit: EditIdentity) -> list[str]:
        """One sentence per side when the two models' sampling hooks differ (FreeU on the edit's model only, ...):
        the weights and schedule are the same, so the edit runs, but it starts from no exact reconstruction."""
        notes = []
        for side, ours, theirs in (
            ("the edit's", edit.model.wrappers, self.model.wrappers),
            ("the inversion's", self.model.wrappers, edit.model.wrappers),
        ):
            only = [w for w in ours if w not in theirs]
            if only:
                notes.append(
                    f"the edit model differs from the inversion's: {'; '.join(only)} only on {side} model, so the "
                    "edit does not start from an exact reconstruction of the source (connect the same model to both "
                    "nodes for one)"
                )
        return notes


@dataclass(frozen=True)
class Inversion:
    """What inversion hands to editing (it travels on the ``CONTEXTDIFF_EDIT_SOURCE`` socket)."""

    noise: torch.Tensor  # inverted x_T as unit-variance noise (model space), ComfyUI's noise convention
    store: AttentionStore
    sigmas: torch.Tensor  # descending sampling schedule, ends at 0
    latent_shape: tuple[int, ...]
    frames: int | None  # frames attending to each other (sparse-causal), None for images
    settings: InversionSettings
    identity: EditIdentity
