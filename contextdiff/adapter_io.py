"""Adapter files: the ``contextdiff-adapter`` format of :mod:`.checkpoint` (an r_phi for a base model).

Metadata keys besides the common ones (:func:`.checkpoint.metadata`): ``config`` (JSON of
:class:`AdapterConfig`), ``latent_channels``, ``context_dim`` and ``base_model`` (``sd15``, ``sd2``,
``sdxl``, ``sd3``, ``flux``, ``wan21``: :data:`contextdiff.families.FAMILIES`' keys; SD3, Flux and Wan share their
widths, so the loader tells them apart by this key). The tensors are the adapter's state dict, unprefixed. Joint
checkpoints hold an adapter too (``adapter_config``, tensors under ``adapter.``): :func:`declared_adapter` reads it
for both.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .adapter import AdapterConfig, ContextAdapter
from .checkpoint import (
    ADAPTER,
    PRODUCER,
    Checkpoint,
    PathLike,
    expected_shapes,
    metadata,
    open_checkpoint,
    save_modules,
)


def save_adapter(
    adapter: ContextAdapter, path: PathLike, base_model: str, training: dict | None = None, producer: str = PRODUCER
) -> Path:
    """Write ``adapter`` atomically with the metadata the loader validates."""
    cfg = adapter.cfg
    meta = metadata(
        ADAPTER,
        training,
        producer,
        config=json.dumps(cfg.to_dict(), sort_keys=True),
        latent_channels=str(cfg.latent_channels),
        context_dim=str(cfg.context_dim),
        base_model=base_model,
    )
    return save_modules(path, {"": adapter}, meta)


def declared_adapter(ckpt: Checkpoint, key: str) -> ContextAdapter:
    """The adapter that metadata ``key`` declares, bounded and built on the meta device (nothing allocated)."""
    try:
        cfg = AdapterConfig.from_dict(ckpt.json(key))
    except (ValueError, TypeError) as e:
        raise ckpt.error(f"has invalid adapter metadata ({e})") from None
    where = f"'{ckpt.name}'" if ckpt.format is ADAPTER else f"in '{ckpt.name}'"
    with torch.device("meta"):
        return ContextAdapter(cfg, source=f"ContextDiff adapter {where}")


def read_metadata(path: PathLike) -> dict:
    """Validated metadata of an adapter file (``config`` an :class:`AdapterConfig`), without loading its tensors."""
    ckpt = open_checkpoint(path, ADAPTER)
    return dict(ckpt.meta, config=declared_adapter(ckpt, "config").cfg, training=ckpt.json("training", "{}"))


def load_adapter(path: PathLike, device: torch.device | str = "cpu") -> tuple[ContextAdapter, dict]:
    """Load and validate an adapter file; returns ``(adapter in eval mode, metadata)``.

    Every check that needs no tensor (format, bounded hyper-parameters, the tensor table against
    the declared architecture) runs before anything is read or allocated.
    """
    ckpt = open_checkpoint(path, ADAPTER)
    adapter = declared_adapter(ckpt, "config")
    meta = dict(ckpt.meta, config=adapter.cfg, training=ckpt.json("training", "{}"))
    ckpt.check_table(expected_shapes({"": adapter}))
    ckpt.load_into({"": adapter}, device)
    return adapter.eval().requires_grad_(False), meta
