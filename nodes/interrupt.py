"""ComfyUI's interrupt flag checked inside every model call of a ContextDiff run, so that ``/interrupt`` (Cancel)
stops a run within one attention call (or one UNet block), at any image size, rather than at the end of a step.

ComfyUI checks the flag once per step (its progress hook) and, in 0.3.75, in each of its own layers
(``comfy.ops``). The adapter's layers are plain ``torch.nn``: nothing checked the flag there, and the adapter
of a pixel-space model at 768x768 attends over 36,864 tokens (seconds per attention call on a CPU).
:func:`checked_adapter` puts the check before each of the adapter's attention layers for the length of one
run. :func:`checked_options` appends it to the UNet's ``attn1``/``attn2`` patch lists (before every self- and
cross-attention) and to its block patch lists, on a copy of the run's ``model_options``, so the guarantee
does not rest on which layer classes a model is built from: other packs' patches stay and run first, and the
user's model is untouched. The check is a flag read under a lock: no device synchronisation, no effect on
any result.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import comfy.model_management
import comfy.model_patcher
import torch

from ..contextdiff.adapter import Attention


def check() -> None:
    """Raise ComfyUI's ``InterruptProcessingException`` if the user pressed Cancel (POST /interrupt)."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def _before_attention(n: torch.Tensor, context: Any, value: Any, extra_options: dict) -> tuple:
    check()
    return n, context, value


def _after_input_block(h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
    check()
    return h


def _before_output_block(h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict) -> tuple:
    check()
    return h, hsp


# ComfyUI's transformer_options["patches"] lists (comfy/ldm/modules/attention.py, diffusionmodules/openaimodel.py).
PATCHES = {
    "attn1_patch": _before_attention,
    "attn2_patch": _before_attention,
    "input_block_patch": _after_input_block,
    "output_block_patch": _before_output_block,
}


def checked_options(model_options: dict | None) -> dict:
    """A copy of ``model_options`` with the interrupt check appended to the UNet's patch lists."""
    options = comfy.model_patcher.create_model_options_clone(model_options or {})
    patches = options.setdefault("transformer_options", {}).setdefault("patches", {})
    for name, fn in PATCHES.items():
        if fn not in patches.get(name, []):  # once, however many ContextDiff calls wrap the same options
            patches[name] = [*patches.get(name, []), fn]
    return options


def checked_extra_args(extra_args: dict | None) -> dict:
    """A sampler's ``extra_args`` whose model calls check the interrupt flag (see :func:`checked_options`)."""
    extra_args = dict(extra_args or {})
    extra_args["model_options"] = checked_options(extra_args.get("model_options"))
    return extra_args


@contextmanager
def checked_adapter(module: torch.nn.Module | None) -> Iterator[None]:
    """The interrupt check before each attention layer of ``module`` (an adapter) while the block runs; the
    hooks are removed afterwards, whatever happens, so the loaded adapter is left as it was."""
    hooks = []
    if module is not None:
        hooks = [m.register_forward_pre_hook(lambda *_: check()) for m in module.modules() if isinstance(m, Attention)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
