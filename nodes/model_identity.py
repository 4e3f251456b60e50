"""The identity of what makes an edit source, cheaply: digests of a sample of the model's weights, of the weight
patches that change them and of its noise schedule, its prediction type, the functions other nodes hooked into its
sampling (FreeU, ...), and a digest of the adapter, once per node run (never per step)."""

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


def _changes_weight(entry: tuple) -> bool:
    """Whether one weight patch ``(strength_patch, patch, strength_model, offset, function)`` changes the weight:
    ComfyUI adds ``strength_patch`` times the patch's difference to ``strength_model`` times the weight, so a patch
    at strength 0 (a LoRA loaded with strength_model 0 for its CLIP strength) changes nothing, unless it is a
    ``("set", tensor)`` patch, which replaces the weight whatever its strength."""
    strength_patch, patch, strength_model = entry[:3]
    replaces = isinstance(patch, tuple) and len(patch) == 2 and patch[0] == "set"
    return strength_patch != 0 or strength_model != 1 or replaces


def _name(fn: object) -> str:
    """What made a patch function, briefly: the class or function that defined it (``FreeU`` for FreeU's)."""
    fn = getattr(fn, "func", fn)  # functools.partial
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return qualname.split(".<locals>")[0].split(".")[0]


def _names(value: object) -> str:
    """The makers of the functions in ``value`` (a function, or lists and dicts of them), sorted, comma-separated."""
    found: set[str] = set()

    def walk(v: object) -> None:
        if isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)
        elif callable(v):
            found.add(_name(v))

    walk(value)
    return ", ".join(sorted(found))


def _described(kind: str, value: object) -> str:
    names = _names(value)
    return f"{kind} ({names})" if names else kind


def model_wrappers(model: ModelPatcher) -> tuple[str, ...]:
    """The functions other nodes hooked into the model's sampling (FreeU's output block patch, attention patches and
    replacements, unet and cfg function wrappers, wrappers and callbacks, object patches but the noise schedule),
    each named with its kind and the class or function that made it; sorted, for comparison."""
    found = []
    options = model.model_options
    for key, value in options.items():
        if key != "transformer_options" and value:
            found.append(_described(key, value))
    for key, value in options.get("transformer_options", {}).items():
        # ComfyUI's names: patches "output_block_patch", "attn1_patch", ...; replacements "attn2", "dit", ...
        kind = {"patches": "", "patches_replace": " replace", "wrappers": " wrapper", "callbacks": " callback"}
        if key in kind and isinstance(value, dict):
            found += [_described(f"{name}{kind[key]}", v) for name, v in value.items() if v]
        elif value:
            found.append(_described(key, value))
    for kind, table in (("wrapper", getattr(model, "wrappers", {})), ("callback", getattr(model, "callbacks", {}))):
        found += [_described(f"{name} {kind}", v) for name, v in table.items() if v]
    found += [f"object patch {key}" for key in getattr(model, "object_patches", {}) if key != "model_sampling"]
    return tuple(sorted(set(found)))


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
    effective = {key: [e for e in entries if _changes_weight(e)] for key, entries in model.patches.items()}
    keys = sorted(key for key, entries in effective.items() if entries)
    sampled = set(_spread(keys, SAMPLED_TENSORS))
    for key in keys:
        for strength_patch, patch, strength_model, offset, function in effective[key]:
            patches.update(f"{key}|{strength_patch}|{strength_model}|{offset}|{function is not None}".encode())
            if key in sampled:
                for t in _tensors(patch):
                    _update(patches, t)
    sampling = model.get_model_object("model_sampling")
    # ComfyUI builds the class from a schedule and a prediction type (EPS, V_PREDICTION, ...: the first base class
    # that says how the output becomes x0) and names it freely; the schedule is the bases outside the prediction's.
    bases = type(sampling).__mro__[1:]
    predicts = next((c for c in bases if "calculate_denoised" in vars(c)), object)
    schedule = hashlib.sha256("/".join(c.__name__ for c in bases if c not in predicts.__mro__).encode())
    if isinstance(getattr(sampling, "sigmas", None), torch.Tensor):
        _update(schedule, sampling.sigmas)
    return ModelIdentity(
        weights=weights.hexdigest()[:16],
        patches=patches.hexdigest()[:16] if keys else "",
        patch_count=len(keys),
        sampling=schedule.hexdigest()[:16],
        prediction=predicts.__name__ if predicts is not object else "unknown",
        wrappers=model_wrappers(model),
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
