"""The source's branch recomputed beside the target's, where no attention store fits (Wan at its native size:
docs/design.md 1.3).

At every fused step of the edit, ComfyUI's model call for the target's rows gains the source's rows: the inverted
latent of that step (the trajectory the inversion kept) with the source prompt's conditioning, flagged
:data:`~contextdiff.attention_fusion.SOURCE_ROW` in ``cond_or_uncond``. The source rows run the model unfused, as the
inversion did; in each attention call the editor takes their queries and keys for the target's fusion
(:meth:`AttentionEditor.joint_attention`), so nothing outlives the block it is computed in. The source rows' outputs
are dropped. It is a ComfyUI ``APPLY_MODEL`` wrapper on a clone, composed with any other pack's wrappers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import comfy.patcher_extension
import torch

from ..contextdiff.attention_fusion import SOURCE_ROW, AttentionEditor

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

KEY = "contextdiff_source_branch"


def _source_context(source: list) -> torch.Tensor:
    """The source prompt's cross-attention tokens: the one entry a Video Edit encodes."""
    if len(source) != 1:
        raise ValueError(
            f"the source branch is recomputed from one source conditioning, got {len(source)} entries: "
            "use one source prompt"
        )
    return source[0][0]


class SourceBranch:
    """The ``APPLY_MODEL`` wrapper: at a fused step, a call that has the target's positive rows runs the source's
    rows after them (its latent of the step, its prompt, the target's timestep and other conditioning)."""

    def __init__(self, editor: AttentionEditor, latents: dict, context: torch.Tensor):
        self.editor, self.latents, self.context = editor, latents, context
        self.rows = 0  # source rows added over the run (a test and a report read it)
        self._contexts: dict = {}  # (device, dtype) -> the source prompt's tokens there

    def _context_like(self, like: torch.Tensor) -> torch.Tensor:
        """The source prompt's tokens on ``like``'s device and dtype, moved once per run: ComfyUI keeps
        conditioning on the CPU, and a plain copy at every step would make the host wait for the device."""
        key = (like.device, like.dtype)
        if key not in self._contexts:
            # From pageable memory CUDA stages the copy and returns: no wait for the queued kernels.
            self._contexts[key] = self.context.to(like.device, like.dtype, non_blocking=True)
        return self._contexts[key]

    def __call__(
        self,
        executor: Callable,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: torch.Tensor | None,
        c_crossattn: torch.Tensor | None,
        control: Any,
        transformer_options: dict,
        **kwargs: Any,
    ) -> torch.Tensor:
        flags = list(transformer_options.get("cond_or_uncond") or [])
        level = self.editor.level
        step = None if level is None else self.editor.step_of(level)
        latent = self.latents.get(step) if step in self.editor.store.fused_steps else None
        if latent is None or 0 not in flags or c_crossattn is None or control is not None or x.shape[0] % len(flags):
            # Nothing to fuse in this call, or a ControlNet's residuals made for the target's batch alone: the
            # editor counts the fused calls left without a source and the edit reports them.
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        chunk = x.shape[0] // len(flags)
        if latent.shape[0] != chunk or latent.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"the source latent of step {step} has shape {tuple(latent.shape)} but the edit samples "
                f"{tuple(x.shape[1:])} in chunks of {chunk}: invert and edit the same latent"
            )
        context = self._context_like(c_crossattn)
        if context.shape[1:] != c_crossattn.shape[1:]:
            raise ValueError(
                f"the source prompt encodes to {context.shape[1]} text tokens and the target's to "
                f"{c_crossattn.shape[1]}: the source branch runs in the target's batch, so the two must be as long "
                "(shorten the longer prompt)"
            )
        first = flags.index(0) * chunk  # the target's positive rows lend the source rows what the prompts share

        def grown(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == x.shape[0]:
                return torch.cat([value, value[first : first + chunk]])
            return value

        options = dict(
            transformer_options,
            cond_or_uncond=[*flags, SOURCE_ROW],
            uuids=[*(transformer_options.get("uuids") or [None] * len(flags)), None],
        )
        self.rows += chunk
        out = executor(
            torch.cat([x, latent.to(x)]),
            grown(t),
            grown(c_concat),
            torch.cat([c_crossattn, context.expand(chunk, -1, -1)]),
            control,
            options,
            **{name: grown(value) for name, value in kwargs.items()},
        )
        return out[: x.shape[0]]


def with_source_branch(model: ModelPatcher, editor: AttentionEditor) -> tuple[ModelPatcher, SourceBranch]:
    """A clone of ``model`` whose fused steps recompute the source's branch (``editor.store``: the trajectory and
    the source prompt of a recompute inversion) beside the target's."""
    branch = SourceBranch(editor, editor.store.latents, _source_context(editor.store.source))
    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, branch)
    return m, branch
