"""Custom ComfyUI types of the pack and the objects that travel on them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from comfy_api.latest import io

from ..contextdiff import families
from ..contextdiff.adapter import ContextAdapter

Adapter = io.Custom("CONTEXTDIFF_ADAPTER")
EditSource = io.Custom("CONTEXTDIFF_EDIT_SOURCE")
Classes = io.Custom("CONTEXTDIFF_CLASSES")

# Context width -> family names, from the one family table (contextdiff/families.py).
FAMILY_OF_CONTEXT_DIM = {f.context_dim: families.families_of_context_dim(f.context_dim) for f in families.FAMILIES}


@dataclass
class LoadedAdapter:
    """An adapter module with its file's metadata; nodes never modify it in place."""

    module: ContextAdapter
    meta: dict
    name: str
    _device_copies: dict = field(default_factory=dict, repr=False)

    @property
    def context_dim(self) -> int:
        return self.module.cfg.context_dim

    @property
    def latent_channels(self) -> int:
        return self.module.cfg.latent_channels

    @property
    def family(self) -> families.Family | None:
        """The family the file says it was trained for (None for joint models and files without one)."""
        return families.family_of_key(self.meta.get("base_model", ""))

    def check_compatible(self, context_dim: int, latent_channels: int, family: families.Family | None = None) -> None:
        """Raise a one-sentence error when the model (its ``family``, if known) or latent does not fit this adapter."""
        if context_dim != self.context_dim:
            want = FAMILY_OF_CONTEXT_DIM.get(self.context_dim, "another model")
            have = FAMILY_OF_CONTEXT_DIM.get(context_dim, "this model")
            raise ValueError(
                f"ContextDiff adapter '{self.name}' was trained for context dim {self.context_dim} ({want}), "
                f"but this model's conditioning gives {context_dim} ({have}): load an adapter trained for "
                f"{have} or switch the checkpoint."
            )
        if latent_channels != self.latent_channels:
            raise ValueError(
                f"ContextDiff adapter '{self.name}' works on {self.latent_channels}-channel latents, "
                f"this latent has {latent_channels} channels: use an adapter trained for this model family."
            )
        # Families of the same widths (SD3, Flux, Wan) are told apart by the family the file records (a model of
        # other widths than its family's, a test model, is judged by its widths alone).
        mine = self.family
        if family is not None and mine is not None and family is not mine and family.context_dim == context_dim:
            raise ValueError(
                f"ContextDiff adapter '{self.name}' was trained for {mine.name}, but this model is {family.name}: "
                f"load an adapter trained for {family.name} or switch the model."
            )

    def on(self, device: torch.device) -> ContextAdapter:
        """The module on ``device``; a copy per device, so the loaded original stays where it is."""
        if device == next(self.module.parameters()).device:
            return self.module
        key = str(device)
        if key not in self._device_copies:
            copy = ContextAdapter(self.module.cfg, source=self.module.source)
            self._device_copies[key] = copy.to(device).eval().requires_grad_(False)
            self._device_copies[key].load_state_dict(self.module.state_dict())
        return self._device_copies[key]
