"""Resumable training state, written so that a kill at any moment loses at most the last interval.

Each save goes to a fresh ``state/step-XXXXXXX`` folder; only when it is complete does the
``state/latest`` pointer (itself replaced atomically) move to it, and older folders are removed.
Weights are safetensors; optimiser/scheduler/RNG state is a ``torch.save`` file read back with
``weights_only=True`` (tensors and plain containers only, no code). Files and folders get the
umask's modes, like every other output.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from contextdiff.atomic_file import atomic_path, create_temp_dir, stale_temp_files
from contextdiff.checkpoint import atomic_save_file


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def rng_state() -> dict:
    state = {
        "torch": torch.random.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_stale_temp_files(cfg) -> list[Path]:
    """Remove the temporary files a killed run left of this run's atomically written outputs (the exported checkpoint,
    its LoRA, the ``state/latest`` pointer): only the atomic writer's own temporary names, only in their folders
    (``state/.step-*`` folders are :func:`save_state`'s). The paths removed."""
    out = Path(cfg.output_dir)
    removed = []
    for output in (cfg.export_path, cfg.lora_path, out / "state" / "latest"):
        for stale in stale_temp_files(output):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def save_state(output_dir: Path, step: int, weights: dict, extra: dict, info: dict, keep: int = 1) -> Path:
    """Write the state of ``step`` and point ``state/latest`` at it."""
    root = Path(output_dir) / "state"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*"):  # half-written by a run that was killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:07d}"
    tmp = create_temp_dir(root, f".step-{step:07d}.")
    try:
        atomic_save_file(weights, tmp / "weights.safetensors")
        torch.save(extra, tmp / "optim.pt")
        with open(tmp / "optim.pt", "rb") as f:
            os.fsync(f.fileno())
        _atomic_write_text(tmp / "info.json", json.dumps(dict(info, step=step), indent=2, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _atomic_write_text(root / "latest", final.name)
    for old in sorted(root.glob("step-*"))[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_folder(output_dir: Path) -> Path | None:
    """The folder ``state/latest`` points at (the latest complete state), or ``None`` when there is none."""
    pointer = Path(output_dir) / "state" / "latest"
    return pointer.parent / pointer.read_text().strip() if pointer.exists() else None


def latest_info(output_dir: Path) -> dict | None:
    """The ``info.json`` of the latest complete state (its step, and the options it was trained with), or ``None``."""
    folder = latest_folder(output_dir)
    return None if folder is None else json.loads((folder / "info.json").read_text())


def load_state(output_dir: Path):
    """``(weights, extra, info)`` of the latest complete state, or ``None`` when there is none."""
    folder = latest_folder(output_dir)
    if folder is None:
        return None
    weights = load_file(str(folder / "weights.safetensors"))
    extra = torch.load(folder / "optim.pt", weights_only=True)
    info = json.loads((folder / "info.json").read_text())  # the same folder's, even if a save moves the pointer
    return weights, extra, info
