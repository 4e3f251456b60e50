"""The joint model's pure-torch parts: class tokens, seeded initialisation and the checkpoint helpers.

The joint model itself is a ComfyUI ``UNetModel`` that predicts ``x0`` (paper Eq. 6) in pixel space; it is
built and loaded host-side (``hostside/joint_model.py``). What needs no ComfyUI stays here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from . import __version__
from .adapter import AdapterConfig, ContextAdapter
from .adapter_io import AdapterFileError, atomic_save_file, check_tensor_table, expected_shapes, read_header

PathLike = str | os.PathLike

JOINT_FORMAT = "contextdiff-joint"
TEXT_JOINT_FORMAT = "contextdiff-text-joint"  # hostside/text_joint.py
JOINT_VERSION = 1


def reset_parameters(module: torch.nn.Module, seed: int) -> None:
    """torch's default initialisation for every layer, including ComfyUI's init-skipping ones."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in module.modules():
            for cls in type(m).__mro__:
                if cls.__module__.startswith("torch.nn") and "reset_parameters" in cls.__dict__:
                    cls.reset_parameters(m)
                    break
    finally:
        torch.random.set_rng_state(gen_state)


class ClassEmbedding(torch.nn.Module):
    """Class labels as conditioning tokens; index ``num_classes`` is the null (unconditional) class."""

    def __init__(self, num_classes: int, context_dim: int, tokens: int = 1):
        super().__init__()
        self.num_classes, self.tokens = num_classes, tokens
        self.embed = torch.nn.Embedding(num_classes + 1, context_dim * tokens)
        torch.nn.init.normal_(self.embed.weight, std=1.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embed(labels).reshape(labels.shape[0], self.tokens, -1)


def save_parts(path: PathLike, parts: dict[str, torch.nn.Module], meta: dict) -> Path:
    """One ``.safetensors`` with each module's state under its prefix (``unet.``, ``adapter.``, ...)."""
    tensors = {f"{prefix}.{k}": v for prefix, module in parts.items() for k, v in module.state_dict().items()}
    return atomic_save_file(tensors, path, meta)


def load_parts(path: Path, parts: dict[str, torch.nn.Module], device: str | torch.device = "cpu") -> None:
    """Fill each module from its prefix in a :func:`save_parts` file, strictly (every key, every shape)."""
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        keys = list(f.keys())
        for prefix, module in parts.items():
            state = {k[len(prefix) + 1 :]: f.get_tensor(k) for k in keys if k.startswith(prefix + ".")}
            try:
                module.load_state_dict(state)
            except RuntimeError as e:
                raise AdapterFileError(
                    f"{path.name}: the {prefix} weights do not match the stored "
                    f"configuration ({str(e).splitlines()[0]}); re-export the checkpoint."
                ) from None


def checkpoint_format(path: PathLike) -> tuple[str | None, dict]:
    """``(format, metadata)`` of a safetensors file's header (``format`` is ``None`` when absent)."""
    meta = read_header(Path(path)).get("__metadata__") or {}
    return meta.get("format"), meta


def check_version(path: Path, meta: dict, version: int) -> None:
    if meta.get("format_version") != str(version):
        raise AdapterFileError(
            f"{path.name} has {meta.get('format')} format version {meta.get('format_version')}, "
            f"this pack reads {version}; update the pack or retrain."
        )


def checked_adapter(path: Path, meta: dict) -> ContextAdapter:
    """The (empty) adapter a checkpoint declares, its tensor table checked against that architecture before
    anything is built: a forged header fails here, naming the file."""
    try:
        adapter_cfg = AdapterConfig.from_dict(json.loads(meta["adapter_config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise AdapterFileError(f"{path.name} has invalid adapter metadata ({e}); re-export the checkpoint.") from None
    check_tensor_table(path, read_header(path), expected_shapes(adapter_cfg), prefix="adapter.")
    return ContextAdapter(adapter_cfg, source=f"ContextDiff adapter in '{path.name}'")


def model_metadata(
    kind: tuple[str, int, str, str],
    unet_config: dict,
    adapter: ContextAdapter,
    training: dict | None,
    with_bias: bool,
    **extra: str,
) -> dict[str, str]:
    """The safetensors metadata every joint file carries; ``kind``: (format, version, recipe, base_model)."""
    fmt, version, recipe, base_model = kind
    return {
        "format": fmt,
        "format_version": str(version),
        "recipe": recipe,
        "unet_config": json.dumps(unet_config, sort_keys=True),
        "adapter_config": json.dumps(adapter.cfg.to_dict(), sort_keys=True),
        "latent_channels": str(unet_config["in_channels"]),
        "context_dim": str(unet_config["context_dim"]),
        "base_model": base_model,
        "with_bias": str(bool(with_bias)).lower(),
        "training": json.dumps(training or {}, sort_keys=True, default=str),
        "producer": f"contextdiff-comfyui {__version__}",
        **extra,
    }
