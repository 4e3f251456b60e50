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
import comfy.sampler_helpers
import comfy.samplers
import torch

from ..contextdiff.attention_fusion import SOURCE_ROW, AttentionEditor

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

KEY = "contextdiff_source_branch"


def _require_one_entry(source: list) -> None:
    if len(source) != 1:
        raise ValueError(
            f"the source branch is recomputed from one source conditioning, got {len(source)} entries: "
            "use one source prompt"
        )


def source_inputs(base_model: Any, source: list, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """The source prompt's model inputs for the ``noise.shape[0]`` rows of one chunk, made by the host's own
    conditioning path (``convert_cond``, ``encode_model_conds`` with the model's ``extra_conds``, each cond's
    ``process_cond``): the cross-attention tokens, SD3's and Flux's pooled ``y``, Flux's ``guidance``. Inputs that are
    not one tensor per row (constants, lists of reference latents) are left out: the source rows take the target's."""
    conds = comfy.samplers.encode_model_conds(
        base_model.extra_conds, comfy.sampler_helpers.convert_cond(source), noise, noise.device, "positive"
    )
    inputs = {}
    for name, cond in conds[0]["model_conds"].items():
        value = cond.process_cond(batch_size=noise.shape[0], area=None).cond
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == noise.shape[0]:
            inputs[name] = value
    return inputs


class SourceBranch:
    """The ``APPLY_MODEL`` wrapper: at a fused step, a call that has the target's positive rows runs the source's
    rows after them: its latent of the step with the source prompt's inputs (:func:`source_inputs`), the target's
    timestep and whatever else the source has none of."""

    def __init__(self, editor: AttentionEditor, base_model: Any):
        # The trajectory and the source conditioning are the recompute inversion's, held by the editor's store.
        self.editor, self.base_model = editor, base_model
        _require_one_entry(editor.store.source)
        self.rows = 0  # source rows added over the run (a test and a report read it)
        self._inputs: dict = {}  # (device, chunk) -> the source's inputs there

    def _inputs_like(self, x: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
        """:func:`source_inputs` on ``x``'s device, made once per run: ComfyUI keeps conditioning on the CPU, and a
        plain copy at every step would make the host wait for the device."""
        key = (x.device, chunk)
        if key not in self._inputs:
            made = source_inputs(self.base_model, self.editor.store.source, x[:chunk])
            # From pageable memory CUDA stages the copy and returns: no wait for the queued kernels.
            self._inputs[key] = {name: value.to(x.device, non_blocking=True) for name, value in made.items()}
        return self._inputs[key]

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
        store = self.editor.store
        latent = store.latents.get(step) if step in store.fused_steps else None
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
        inputs = self._inputs_like(x, chunk)
        context = inputs["c_crossattn"]
        if context.shape[1:] != c_crossattn.shape[1:]:
            raise ValueError(
                f"the source prompt encodes to {context.shape[1]} text tokens and the target's to "
                f"{c_crossattn.shape[1]}: the source branch runs in the target's batch, so the two must be as long "
                "(shorten the longer prompt)"
            )
        first = flags.index(0) * chunk  # the target's positive rows lend the source rows what the prompts share

        def grown(name: str, value: Any) -> Any:
            """The call's input with the source rows after it: the source's own where it has one (its prompt,
            pooled vector, guidance), else the target's positive rows'."""
            if not (isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == x.shape[0]):
                return value
            own = inputs.get(name)
            if own is None or own.shape[1:] != value.shape[1:]:
                own = value[first : first + chunk]
            return torch.cat([value, own.to(dtype=value.dtype)])

        options = dict(
            transformer_options,
            cond_or_uncond=[*flags, SOURCE_ROW],
            uuids=[*(transformer_options.get("uuids") or [None] * len(flags)), None],
        )
        self.rows += chunk
        out = executor(
            torch.cat([x, latent.to(x)]),
            grown("t", t),
            grown("c_concat", c_concat),
            grown("c_crossattn", c_crossattn),
            control,
            options,
            **{name: grown(name, value) for name, value in kwargs.items()},
        )
        return out[: x.shape[0]]


def with_source_branch(model: ModelPatcher, editor: AttentionEditor) -> tuple[ModelPatcher, SourceBranch]:
    """A clone of ``model`` whose fused steps recompute the source's branch (``editor.store``: the trajectory and
    the source prompt of a recompute inversion) beside the target's."""
    branch = SourceBranch(editor, model.model)
    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, branch)
    return m, branch
