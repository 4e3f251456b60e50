"""The Video Edit's path on Wan 2.x (docs/design.md 1.3), in-process on the tiny Wan file, Wan 2.1's causal 3D VAE
(8 wide) and the umT5 class at test size: each chunk one video latent, its attention recorded and fused over all
its tokens; the checks made before any model call (frames per chunk, the store's memory)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import pack_modules

STEPS = 3
FRAMES = 5  # 1 + 4: two latent frames
SIDE = 32  # pixels: 4x4 latent, 2x2 tokens per frame


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    return pack_modules(
        "nodes.video_runs", "nodes.edit_runs", "nodes.wan_attention", "nodes.store_budget", "contextdiff.editing"
    )


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
    assert not runs.memory_check(model, vae, shape, settings, **fits).recompute
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


def _edit_latents(pack, parts, settings, recompute: bool, fuse: bool = True):
    """The edited latent of one Wan chunk, its store and warnings: the source's attention stored, or recomputed."""
    model, vae, clip = parts
    runs, edit_runs = pack["video_runs"], pack["edit_runs"]
    guide = edit_runs.Guide(model, runs.encode_prompt(clip, settings.edit.source_prompt))
    target = guide._replace(positive=runs.encode_prompt(clip, settings.edit.target_prompt))
    latent = {"samples": vae.encode(frames())}
    source = edit_runs.invert(guide, latent, settings.inversion, None, record=True, recompute=recompute)
    plan = runs.plan_video(model, clip, settings)
    if not fuse:
        plan = dataclasses.replace(plan, fuse=False)
    result = edit_runs.edit(target, source, plan)
    return result.samples, source.store, result.warnings


def test_without_room_for_the_store_the_source_branch_is_recomputed_and_the_edit_is_the_same(pack, parts):
    """docs/design.md 1.3: where the store does not fit, each fused step runs the source's latent and prompt in the
    target's batch and fuses their q, k on the spot: the same edit as from a float32 store (kernels on another batch
    size differ in the last bits), and no attention kept."""
    settings = settings_of(pack, words="red")
    settings = dataclasses.replace(
        settings, inversion=dataclasses.replace(settings.inversion, store_dtype=torch.float32)
    )
    stored, store, warnings = _edit_latents(pack, parts, settings, recompute=False)
    live, live_store, live_warnings = _edit_latents(pack, parts, settings, recompute=True)
    plain, _, _ = _edit_latents(pack, parts, settings, recompute=True, fuse=False)
    assert store.nbytes() > 0 and live_store.nbytes() == 0 and live_store.latents.keys() == store.latents.keys()
    assert not [w for w in live_warnings if "no recording" in w or "not masked" in w], live_warnings
    assert [w for w in live_warnings if "recomputed beside the target" in w]
    scale = float(stored.abs().max())
    assert float((live - stored).abs().max()) <= 1e-5 * scale
    assert float((plain - stored).abs().max()) > 1e-2 * scale  # the fusion moves the edit: the match is not idle


def test_the_memory_check_chooses_the_store_then_recomputing_then_refuses(pack, parts):
    model, vae, clip = parts
    runs = pack["video_runs"]
    settings = settings_of(pack)
    shape = runs.FrameShape(FRAMES, SIDE, SIDE)
    text = runs.wan_text_tokens(clip, settings.edit.source_prompt)
    need = runs.wan_need(model, shape, 8, settings, text)
    held = shape.frame_bytes * 2 * FRAMES
    check = dict(from_file=False, text_tokens=(text, text))
    assert not runs.memory_check(model, vae, shape, settings, budget_bytes=need.total + held, **check).recompute
    assert runs.memory_check(model, vae, shape, settings, budget_bytes=need.total + held - 1, **check).recompute
    assert runs.memory_check(model, vae, shape, settings, budget_bytes=need.trajectory + held, **check).recompute
    with pytest.raises(MemoryError, match="even without an attention store"):
        runs.memory_check(model, vae, shape, settings, budget_bytes=need.trajectory + held - 1, **check)
    with pytest.raises(ValueError, match=f"{text} T5 tokens and the target prompt to {text + 1}"):
        runs.memory_check(
            model,
            vae,
            shape,
            settings,
            budget_bytes=need.total + held - 1,
            from_file=False,
            text_tokens=(text, text + 1),
        )


@pytest.mark.parametrize("recompute", [False, True], ids=["store", "recompute"])
def test_the_edit_sampler_route_fuses_wan_and_equal_prompts_reconstruct(pack, parts, recompute):
    """The DDIM Inversion node and the Edit Sampler on a Wan video latent (what their ``execute`` runs): the inversion
    records the attention (or, where the budget check says the store does not fit, only the trajectory and the
    prompt), refined to convergence; with equal prompts the fused edit is the unfused one to 1e-5 relative and returns
    the input to 1e-4 on the random-weight model."""
    model, vae, clip = parts
    edit_runs, editing = pack["edit_runs"], pack["editing"]
    store_budget = pack["store_budget"]
    source_prompt = "a red car on a road"
    settings = editing.EditSettings(cfg=1.0, source_prompt=source_prompt, target_prompt=source_prompt)
    edit_runs.require_editable(model, settings)  # fusion on Wan is not refused
    # A float32 store: fp16's rounding of q and k alone moves this edit by 2e-5. Wan's shift-8 schedule ends with a
    # step from sigma 0.8 to 0, which the refinement needs ~50 iterations to solve on this model (10 leave 19%).
    inversion = editing.InversionSettings(
        steps=STEPS, scheduler="simple", refine_steps=50, fuse_start=0.0, store_dtype=torch.float32
    )
    latent = vae.encode(frames()).detach()
    positive = pack["video_runs"].encode_prompt(clip, source_prompt)
    tokens = int(positive[0][0].shape[1])
    shape = tuple(latent.shape)
    assert store_budget.check_inversion_fits(model, shape, inversion, budget_bytes=1.0, text_tokens=tokens)
    assert not store_budget.check_inversion_fits(model, shape, inversion, budget_bytes=1e12, text_tokens=tokens)
    guide = edit_runs.Guide(model, positive)
    source = edit_runs.invert(guide, {"samples": latent.clone()}, inversion, recompute=recompute)
    assert (source.store.nbytes() == 0) == recompute and source.store.recompute == recompute
    plan = edit_runs.plan_edit(settings, inversion, clip, model=model)
    fused = edit_runs.edit(guide, source, plan)
    plain = edit_runs.edit(guide, source, dataclasses.replace(plan, fuse=False))
    scale = float(latent.norm())
    assert not [w for w in fused.warnings if "no recording" in w or "no attention layer" in w], fused.warnings
    assert float((fused.samples - plain.samples).norm()) <= 1e-5 * scale
    assert float((fused.samples - latent).norm()) <= 1e-4 * scale


def test_a_recomputed_source_refuses_a_target_of_another_length_before_sampling(pack, parts):
    model, vae, clip = parts
    edit_runs, editing = pack["edit_runs"], pack["editing"]
    inversion = editing.InversionSettings(steps=STEPS, fuse_start=0.0)
    positive = pack["video_runs"].encode_prompt(clip, "a red car")
    source = edit_runs.invert(
        edit_runs.Guide(model, positive), {"samples": vae.encode(frames())}, inversion, recompute=True
    )
    longer = [[torch.cat([positive[0][0], positive[0][0]], dim=1), positive[0][1]]]
    settings = editing.EditSettings(cfg=1.0, source_prompt="a red car", target_prompt="a red car")
    plan = edit_runs.plan_edit(settings, inversion, clip, model=model)
    with pytest.raises(edit_runs.EditInputError, match="as long"):
        edit_runs.edit(edit_runs.Guide(model, longer), source, plan)
