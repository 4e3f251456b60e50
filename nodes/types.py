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

# Context width -> family name, from the one family table (contextdiff/families.py).
FAMILY_OF_CONTEXT_DIM = {f.context_dim: f.name for f in families.FAMILIES}


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

    def check_compatible(self, context_dim: int, latent_channels: int) -> None:
        """Raise a one-sentence error when the model or latent does not fit this adapter."""
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
