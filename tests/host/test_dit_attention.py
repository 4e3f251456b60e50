"""Attention record and fusion on DiT joint attention (docs/design.md 1.2), in-process on the tiny SD3 and Flux
files (Flux with one double and one single block) through ComfyUI's own model code and samplers.

A source pass records (the euler sampler, the editor in ``record`` mode), a target pass fuses the recording; with
the same prompt the fused attention is the source's, so the target pass equals the plain run. No T5-XXL can be built
at test size: the conditioning is random tensors at the real widths (``comfy_models.flow_conditioning``), so every
token of two equal prompts is shared and the alignment is given as positions.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import pack_modules
from test_flow_families import _free_models, model_of  # noqa: F401 (the tiny models, freed per module)

STEPS = 3
KINDS = ["sd3", pytest.param("flux_single", marks=pytest.mark.slow)]
TOKENS = 8  # text tokens of the test conditioning
LATENT = 8  # latent side: 4x4 image tokens


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    return pack_modules(
        "nodes.attention_patch",
        "nodes.dit_attention",
        "contextdiff.attention_fusion",
        "contextdiff.attention_store",
        "contextdiff.editing",
        "contextdiff.blend_mask",
        "nodes.store_budget",
    )


def sigmas_of(model):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS).cpu()


def sample(model, kind, positive, seed=3, cfg=2.0, frames=3):
    """SamplerCustom's run: ComfyUI's noise for ``seed``, euler, the model's ``simple`` sigmas, CFG batched
    (``frames``: a video latent's, Wan's)."""
    import comfy.sample
    import comfy.samplers
    from comfy_models import flow_conditioning, flow_latent

    latent = flow_latent(kind, size=LATENT, frames=frames)
    noise = comfy.sample.prepare_noise(latent, seed)
    negative = flow_conditioning(kind, 9, tokens=TOKENS)
    return comfy.sample.sample_custom(
        model,
        noise,
        cfg,
        comfy.samplers.ksampler("euler"),
        sigmas_of(model),
        positive,
        negative,
        latent,
        disable_pbar=True,
        seed=seed,
    )


def editor_for(pack, model, mode, store=None, shared=(), blend=None, store_maps=False):
    fusion, stores, editing = pack["attention_fusion"], pack["attention_store"], pack["editing"]
    store = store or stores.AttentionStore(set(range(STEPS)), store_maps=store_maps)
    step_of = editing.StepIndex(sigmas_of(model))
    return fusion.AttentionEditor(store, mode, step_of, shared_tokens=shared, blend=blend)


def cond(kind, seed):
    from comfy_models import flow_conditioning

    return flow_conditioning(kind, seed, tokens=TOKENS)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("kind", KINDS)
def test_equal_prompts_fused_equal_the_plain_run(pack, kind):
    model = model_of(kind)
    patch = pack["attention_patch"].patched
    positive = cond(kind, 1)
    plain = sample(model, kind, positive)
    recorder = editor_for(pack, model, "record")
    recorded = sample(patch(model, recorder, (LATENT, LATENT)), kind, positive)
    assert rel(recorded, plain) < 1e-6  # recording passes every call through
    layers = pack["dit_attention"].dit_layers(model.model.diffusion_model)
    assert recorder.store.layers() == layers
    assert len(recorder.store.entries) == STEPS * len(layers)
    # The size estimate, counted from the module tree alone, is the store's size exactly (float32 here).
    footprint = pack["dit_attention"].joint_footprint(model.model.diffusion_model, (LATENT, LATENT), TOKENS)
    assert pack["attention_store"].joint_store_bytes(footprint, STEPS, 4) == recorder.store.nbytes()
    everything = [(i, i) for i in range(TOKENS)]
    fuser = editor_for(pack, model, "fuse", store=recorder.store, shared=everything)
    fused = sample(patch(model, fuser, (LATENT, LATENT)), kind, positive)
    assert fuser.fused == STEPS * len(layers) and fuser.missing == 0
    assert rel(fused, plain) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_fusion_changes_the_target_pass(pack, kind):
    model = model_of(kind)
    patch = pack["attention_patch"].patched
    source, target = cond(kind, 1), cond(kind, 2)
    recorder = editor_for(pack, model, "record")
    sample(patch(model, recorder, (LATENT, LATENT)), kind, source)
    plain_target = sample(model, kind, target)
    for shared in ([], [(i, i) for i in range(TOKENS)]):
        blend = pack["blend_mask"].BlendMask([3], [5], threshold=0.3)
        fuser = editor_for(pack, model, "fuse", store=recorder.store, shared=shared, blend=blend)
        fused = sample(patch(model, fuser, (LATENT, LATENT)), kind, target)
        assert fuser.missing == 0 and fuser.fused > 0
        assert rel(fused, plain_target) > 1e-3, (
            f"fusion with {len(shared)} shared tokens left the target pass as it was"
        )
        # The blend words' maps of every fused layer, on the image tokens' 4x4 grid, make a latent-size mask.
        assert blend.count == fuser.fused and set(blend.sums) == {(LATENT // 2, LATENT // 2)}
        mask = blend.mask((LATENT, LATENT))
        assert mask.shape == (1, 1, LATENT, LATENT) and 0 < float(mask.mean()) <= 1


class _Capture:
    """Another pack's attention override: keeps each joint call's (q, k) in ComfyUI's shapes, runs the kernel."""

    def __init__(self):
        self.calls = []

    def __call__(self, func, *args, **kwargs):
        self.calls.append((args[0].detach().clone(), args[1].detach().clone(), kwargs.get("skip_reshape", False)))
        return func(*args, **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_recorded_maps_equal_softmax_of_the_hosts_queries_and_keys(pack, kind):
    """The store's maps against ``softmax(q k^T / sqrt(d))`` in float64 on the q, k ComfyUI computed for the first
    block's first step, caught by a foreign override that the recording composes with (it runs every call)."""
    model = model_of(kind).clone()
    capture = _Capture()
    model.model_options["transformer_options"]["optimized_attention_override"] = capture
    patch = pack["attention_patch"].patched
    positive = cond(kind, 1)
    recorder = editor_for(pack, model, "record")
    sample(patch(model, recorder, (LATENT, LATENT)), kind, positive, cfg=1.0)
    layers = pack["dit_attention"].dit_layers(model.model.diffusion_model)
    assert len(capture.calls) == STEPS * len(layers)  # the foreign override ran every joint call
    q, k, split = capture.calls[0]  # step 0, the first block
    heads = 24 if kind.startswith("flux") else model.model.diffusion_model.joint_blocks[0].x_block.attn.num_heads
    if not split:
        q, k = (x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2) for x in (q, k))
    q_img = q[:, :, TOKENS:].double()
    expected = torch.softmax(q_img @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    first = sorted(layers)[0] if kind == "sd3" else ("double_block", 0, 0)
    got = recorder.store.probs((0, first, "joint"), heads, "cpu")
    assert got.shape == expected.shape == (1, heads, (LATENT // 2) ** 2, TOKENS + (LATENT // 2) ** 2)
    assert float((got.double() - expected).abs().max()) < 1e-5
    maps = editor_for(pack, model, "record", store_maps=True)
    sample(patch(model, maps, (LATENT, LATENT)), kind, positive, cfg=1.0)
    assert float((maps.store.entries[(0, first, "joint")].double() - expected).abs().max()) < 1e-5


def test_fused_joint_attention_equals_the_explicit_map():
    """:func:`joint_fused_attention` against the rule written out on explicit maps: image keys and shared words
    weighed by the source's map, the other words by the target's; the blend words' maps are the maps' columns."""
    from contextdiff.attention_fusion import joint_fused_attention

    gen = torch.Generator().manual_seed(0)
    b, h, n, t, t_src, d = 2, 3, 6, 5, 4, 8
    q_src, q = torch.randn(b, h, n, d, generator=gen), torch.randn(b, h, n, d, generator=gen)
    k_src = torch.randn(b, h, t_src + n, d, generator=gen)
    k, v = torch.randn(b, h, t + n, d, generator=gen), torch.randn(b, h, t + n, d, generator=gen)
    shared = [(0, 0), (1, 1), (3, 2)]  # target word 2 and 4 are new; source word 3 is gone
    out, tgt_maps, src_maps = joint_fused_attention(q_src, k_src, q, k, v, shared, [2], [3])
    p_src = torch.softmax(q_src.double() @ k_src.double().transpose(-1, -2) / math.sqrt(d), -1)
    p_tgt = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(d), -1)
    fused = p_tgt.clone()
    fused[..., t:] = p_src[..., t_src:]
    fused[..., [0, 1, 3]] = p_src[..., [0, 1, 2]]
    assert float((out.double() - fused @ v.double()).abs().max()) < 1e-5
    assert float((tgt_maps.double() - p_tgt[..., [2]]).abs().max()) < 1e-6
    assert float((src_maps.double() - p_src[..., [3]]).abs().max()) < 1e-6


def test_a_foreign_block_patch_is_composed_and_a_foreign_override_refused(pack):
    model = model_of("sd3").clone()
    seen = []

    def theirs(args, extra):  # another pack's block replace: runs the block, then scales its image stream
        seen.append(1)
        out = extra["original_block"](args)
        return {"txt": out["txt"], "img": out["img"] * 0.5}

    model.set_model_patch_replace(theirs, "dit", "double_block", 0)
    patch = pack["attention_patch"].patched
    positive = cond("sd3", 1)
    alone = sample(model, "sd3", positive)
    calls = len(seen)
    recorder = editor_for(pack, model, "record")
    composed = sample(patch(model, recorder, (LATENT, LATENT)), "sd3", positive)
    assert len(seen) == 2 * calls > 0  # their patch ran in the editor's run as well
    assert rel(composed, alone) < 1e-6
    assert len(recorder.store.entries) == STEPS * 2  # the patched block's attention was reached too

    def switch_kernel(func, *args, **kwargs):
        return func(*args, **kwargs)

    model.model_options["transformer_options"]["optimized_attention_override"] = switch_kernel
    fuser = editor_for(pack, model, "fuse", store=recorder.store)
    with pytest.raises(ValueError, match="switch_kernel"):
        patch(model, fuser, (LATENT, LATENT))


def test_store_budget_counts_the_joint_store_and_recomputes_where_it_does_not_fit(pack):
    """The inversion's estimate on a DiT is the recorded store's size (counted from its blocks, no probe pass): a
    budget just over it keeps the store, just under it keeps none (the edit recomputes the source's branch)."""
    from contextdiff.editing import InversionSettings

    budget = pack["store_budget"]
    model = model_of("sd3")
    recorder = editor_for(pack, model, "record")
    sample(pack["attention_patch"].patched(model, recorder, (LATENT, LATENT)), "sd3", cond("sd3", 1))
    recorded = recorder.store.nbytes()
    settings = InversionSettings(steps=STEPS, fuse_start=0.0, store_dtype=torch.float32)
    assert len(settings.fused_steps) == STEPS
    shape = (1, 16, LATENT, LATENT)
    assert not budget.check_inversion_fits(model, shape, settings, budget_bytes=1.01 * recorded, text_tokens=TOKENS)
    assert budget.check_inversion_fits(model, shape, settings, budget_bytes=0.99 * recorded, text_tokens=TOKENS)
