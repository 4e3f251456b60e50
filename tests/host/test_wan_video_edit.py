"""The Video Edit's path on Wan 2.x (docs/design.md 1.3), in-process on the tiny Wan file, Wan 2.1's causal 3D VAE
(8 wide) and the umT5 class at test size: each chunk one video latent, its attention recorded and fused over all
its tokens; the checks made before any model call (frames per chunk, the store's memory)."""

from __future__ import annotations

import importlib

import pytest
import torch

STEPS = 3
FRAMES = 5  # 1 + 4: two latent frames
SIDE = 32  # pixels: 4x4 latent, 2x2 tokens per frame


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    from devkit import import_pack

    pack = import_pack()
    names = ("nodes.video_runs", "nodes.edit_runs", "nodes.wan_attention", "contextdiff.editing")
    return {n.split(".")[1]: importlib.import_module(f"{pack.__name__}.{n}") for n in names}


@pytest.fixture(scope="module")
def parts():
    import comfy.sd
    from comfy_models import build_flow, build_tiny_flow_clip, tiny_flow_vae_state_dict

    return build_flow("wan", seed=0), comfy.sd.VAE(sd=tiny_flow_vae_state_dict("wan")), build_tiny_flow_clip("wan")


def settings_of(pack, source="a red car on a road", target="a blue car on a road", chunk=FRAMES, **kw):
    editing = pack["editing"]
    edit = editing.EditSettings(cfg=2.0, source_prompt=source, target_prompt=target, blend_words=kw.pop("words", ""))
    inversion = editing.InversionSettings(steps=STEPS, fuse_start=0.0)
    return editing.VideoSettings(edit=edit, inversion=inversion, max_frames=FRAMES, chunk_size=chunk, overlap=0, **kw)


def frames(n=FRAMES):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, SIDE, SIDE, 3, generator=gen)


def test_the_estimate_is_the_recorded_store_and_refuses_before_any_model_call(pack, parts):
    model, vae, clip = parts
    runs = pack["video_runs"]
    settings = settings_of(pack)
    latent = vae.encode(frames())
    assert tuple(latent.shape) == (1, 16, 2, SIDE // 8, SIDE // 8)
    edit_runs = pack["edit_runs"]
    guide = edit_runs.Guide(model, runs.encode_prompt(clip, settings.edit.source_prompt))
    source = edit_runs.invert(guide, {"samples": latent}, settings.inversion, None, record=True)
    text = runs.wan_text_tokens(clip, settings.edit.source_prompt)
    need = runs.wan_need(model, runs.FrameShape(FRAMES, SIDE, SIDE), 8, settings, text)
    assert need.fused == STEPS and need.per_step * need.fused == source.store.nbytes() > 0
    shape = runs.FrameShape(FRAMES, SIDE, SIDE)
    held = shape.frame_bytes * 2 * FRAMES
    fits = dict(budget_bytes=need.total + held + 1, from_file=False, text_tokens=text)
    runs.memory_check(model, vae, shape, settings, **fits)
    with pytest.raises(MemoryError, match=f"{STEPS - 1} fused steps fit"):
        runs.memory_check(model, vae, shape, settings, **dict(fits, budget_bytes=need.total + held - 1))
    with pytest.raises(ValueError, match=r"1 \+ 4 k frames .* \[4\] frames"):
        runs.memory_check(model, vae, runs.FrameShape(4, SIDE, SIDE), settings_of(pack, chunk=4), **fits)


def test_the_video_edit_runs_on_wan_and_equal_prompts_fuse_into_every_block(pack, parts):
    model, vae, clip = parts
    runs = pack["video_runs"]
    pack["edit_runs"].require_video_edit(model)  # accepted: a native video model
    settings = settings_of(pack, words="red")
    plan = runs.plan_video(model, clip, settings)
    assert plan.blend_source  # the blend word found in the umT5 tokens
    shape = runs.FrameShape(FRAMES, SIDE, SIDE)
    memory = runs.memory_check(model, vae, shape, settings, budget_bytes=1e12, from_file=False)
    out, warnings = runs.edit_video(model, vae, clip, frames(), settings, memory=memory, plan=plan)
    assert out.shape == (FRAMES, SIDE, SIDE, 3) and torch.isfinite(out).all()
    assert not [w for w in warnings if "no recording" in w or "not masked" in w], warnings
