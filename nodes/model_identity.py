"""The identity of what makes an edit source, cheaply: digests of a sample of the model's weights, of its weight
patches and its noise schedule, and of the adapter, once per node run (never per step)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from ..contextdiff.editing import EditIdentity, ModelIdentity

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

    from .types import LoadedAdapter

SAMPLED_TENSORS = 8  # tensors of the model hashed, spread over its layers
SAMPLED_VALUES = 4096  # values hashed per tensor, evenly strided


def _update(digest: hashlib._Hash, t: torch.Tensor) -> None:
    """Feed the shape, dtype and an evenly strided sample of ``t``'s values (its bytes, any dtype) to ``digest``."""
    digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
    try:
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLED_VALUES)
        sample = flat[::step][:SAMPLED_VALUES].contiguous().cpu()
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    except (RuntimeError, TypeError, NotImplementedError):
        pass  # a tensor type without plain storage (another pack's quantised weights): its shape and dtype only


def _spread(keys: list[str], n: int) -> list[str]:
    """``n`` of ``keys`` evenly spread (first and last included)."""
    if len(keys) <= n:
        return keys
    return [keys[round(i * (len(keys) - 1) / (n - 1))] for i in range(n)]


def _tensors(patch: object) -> Iterator[torch.Tensor]:
    """The tensors inside one weight patch (a tensor, a tuple of them, a weight adapter with ``.weights``)."""
    if isinstance(patch, torch.Tensor):
        yield patch
    elif isinstance(patch, (tuple, list)):
        for item in patch:
            yield from _tensors(item)
    elif isinstance(getattr(patch, "weights", None), (tuple, list)):
        yield from _tensors(patch.weights)


def model_identity(model: ModelPatcher) -> ModelIdentity:
    """The model's identity. Weights that a loaded patch changed in place are read from ComfyUI's backup of
    the originals (shared by every clone), so the answer does not depend on which clone was loaded last."""
    weights = hashlib.sha256()
    state = model.model.diffusion_model.state_dict(prefix="diffusion_model.")
    for key in _spread(sorted(state), SAMPLED_TENSORS):
        backup = model.backup.get(key)
        weights.update(key.encode())
        _update(weights, backup.weight if backup is not None else state[key])
    patches = hashlib.sha256()
    keys = sorted(model.patches)
    sampled = set(_spread(keys, SAMPLED_TENSORS))
    for key in keys:
        for strength_patch, patch, strength_model, offset, function in model.patches[key]:
            patches.update(f"{key}|{strength_patch}|{strength_model}|{offset}|{function is not None}".encode())
            if key in sampled:
                for t in _tensors(patch):
                    _update(patches, t)
    sampling = model.get_model_object("model_sampling")
    # The prediction type is in the base classes (EPS, V_PREDICTION, ...): ComfyUI names the class itself freely.
    schedule = hashlib.sha256("/".join(c.__name__ for c in type(sampling).__mro__[1:]).encode())
    if isinstance(getattr(sampling, "sigmas", None), torch.Tensor):
        _update(schedule, sampling.sigmas)
    return ModelIdentity(
        weights=weights.hexdigest()[:16],
        patches=patches.hexdigest()[:16] if keys else "",
        patch_count=len(keys),
        sampling=schedule.hexdigest()[:16],
    )


def edit_identity(model: ModelPatcher, adapter: LoadedAdapter | None, strength: float) -> EditIdentity:
    """The identity of an inversion or an edit; no adapter and strength 0 are the same (no bias)."""
    if adapter is None or strength == 0:
        return EditIdentity(model_identity(model))
    digest = hashlib.sha256()
    for name, t in sorted(adapter.module.state_dict().items()):
        digest.update(name.encode())
        _update(digest, t)
    return EditIdentity(model_identity(model), adapter.name, digest.hexdigest()[:16], float(strength))
