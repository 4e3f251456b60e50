"""Sparse-causal attention reaches every frame however ComfyUI batches cond and uncond (issue 19).

On a GPU with free memory ComfyUI runs the conditional and unconditional halves of CFG in one UNet call
(``_calc_cond_batch`` batches while ``memory_required * 1.5 < free memory``); short of memory it runs them one
by one. The first CUDA run saw frames of a video edit that were not linked to frame 0, so both layouts are
forced here on the CPU, through ComfyUI's own batching decision (its free-memory reading), and the edit of a
clip whose frame 0 alone changes must change every frame.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from contextdiff.editing import EditSettings, InversionSettings

FRAMES = 3


@pytest.fixture(scope="module")
def env(comfy_inprocess):
    from comfy_models import build_sd15, build_tiny_clip

    from devkit import import_pack

    pack = import_pack()
    runs = importlib.import_module(pack.__name__ + ".nodes.edit_runs")
    clip = build_tiny_clip()

    def enc(text):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    return runs, build_sd15(0, 32, 768, attn_scale=6.0), clip, enc


def edited(env, latents: torch.Tensor, layouts: list) -> torch.Tensor:
    runs, model, clip, enc = env
    settings = InversionSettings(steps=3, fuse_start=0.5)
    edit = EditSettings(cfg=3.0, source_prompt="a cat", target_prompt="a dog", blend_words="cat dog")
    plan = runs.plan_edit(edit, settings, clip)
    seen = runs.AttentionEditor.self_attention

    def spy(self, q, k, v, extra, **kw):
        layouts.append((q.shape[0], tuple(extra.get("cond_or_uncond") or ())))
        return seen(self, q, k, v, extra, **kw)

    runs.AttentionEditor.self_attention = spy
    try:
        source = runs.invert(runs.Guide(model, enc("a cat")), {"samples": latents}, settings, FRAMES)
        return runs.edit(runs.Guide(model, enc("a dog")), source, plan).samples
    finally:
        runs.AttentionEditor.self_attention = seen


@pytest.mark.parametrize("batched", [True, False], ids=["cond+uncond in one call", "one call each"])
def test_sparse_causal_attention_links_every_frame_to_the_first(env, monkeypatch, batched):
    import comfy.model_management as mm

    # ComfyUI's batching decision reads the free memory: plenty batches cond and uncond, none runs them apart.
    real = mm.get_free_memory

    def free_memory(dev=None, torch_free_too=False):
        if torch_free_too:  # the attention kernels' own reading (chunk sizes): the real one
            return real(dev, torch_free_too)
        return 1e15 if batched else 1.0

    monkeypatch.setattr(mm, "get_free_memory", free_memory)
    clip = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    changed = clip.clone()
    changed[0] = -changed[0]
    layouts: list = []
    a, b = edited(env, clip, layouts), edited(env, changed, layouts)
    edit_calls = [n for n, flags in layouts if len(flags) == 2] if batched else [n for n, _ in layouts]
    assert edit_calls and all(n == (2 * FRAMES if batched else FRAMES) for n in edit_calls), layouts
    diff = (a - b).flatten(1).abs().amax(1)
    assert (diff > 1e-4).all(), diff  # every frame attends to frame 0 (directly: sparse-causal keys)
