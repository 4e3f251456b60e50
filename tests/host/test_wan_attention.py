"""Attention record and fusion on Wan 2.x (docs/design.md 1.3), in-process on the tiny Wan file through ComfyUI's own
model code and samplers: self-attention over all video tokens and the separate cross-attention to T5, one editor.

A source pass records (euler, the editor in ``record`` mode), a target pass fuses the recording; with the same prompt
the fused attention is the source's, so the target pass equals the plain run. The conditioning is random tokens at
umT5's width (``comfy_models.flow_conditioning``), so the alignment is given as positions.
"""

from __future__ import annotations

import math

import pytest
import test_dit_attention as dit
import torch
from helpers import pack_modules
from test_dit_attention import LATENT, STEPS, TOKENS, _Capture, editor_for, rel, sigmas_of  # noqa: F401 (the same runs)

FRAMES = 3  # latent frames
KIND = "wan"


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    return pack_modules(
        "nodes.attention_patch",
        "nodes.wan_attention",
        "contextdiff.attention_fusion",
        "contextdiff.attention_store",
        "contextdiff.editing",
        "contextdiff.blend_mask",
    )


@pytest.fixture(scope="module")
def model():
    from comfy_models import build_flow

    return build_flow(KIND, seed=0)


def sample(model, positive, seed=3, cfg=2.0):
    return dit.sample(model, KIND, positive, seed=seed, cfg=cfg, frames=FRAMES)


def cond(seed):
    return dit.cond(KIND, seed)


SIZE = (FRAMES, LATENT, LATENT)


def test_equal_prompts_fused_equal_the_plain_run_and_the_estimate_is_the_store(pack, model):
    patch = pack["attention_patch"].patched
    positive = cond(1)
    plain = sample(model, positive)
    recorder = editor_for(pack, model, "record")
    recorded = sample(patch(model, recorder, SIZE), positive)
    assert rel(recorded, plain) < 1e-6  # recording passes every call through
    layers = pack["wan_attention"].wan_layers(model.model.diffusion_model)
    assert recorder.store.layers() == layers and len(layers) == len(model.model.diffusion_model.blocks)
    assert {key[2] for key in recorder.store.entries} == {"self", "cross"}
    assert len(recorder.store.entries) == 2 * STEPS * len(layers)
    # The memory estimate, counted from the module tree alone, is the store's size exactly (float32 here).
    footprint = pack["wan_attention"].wan_footprint(model.model.diffusion_model, SIZE, TOKENS)
    assert footprint[0][1] == FRAMES * (LATENT // 2) ** 2
    assert pack["attention_store"].wan_store_bytes(footprint, STEPS, 4) == recorder.store.nbytes()
    everything = [(i, i) for i in range(TOKENS)]
    fuser = editor_for(pack, model, "fuse", store=recorder.store, shared=everything)
    fused = sample(patch(model, fuser, SIZE), positive)
    assert fuser.fused == 2 * STEPS * len(layers) and fuser.missing == 0
    assert rel(fused, plain) < 1e-5


def test_fusion_changes_the_target_pass_and_the_blend_maps_cover_every_frame(pack, model):
    patch = pack["attention_patch"].patched
    source, target = cond(1), cond(2)
    recorder = editor_for(pack, model, "record")
    sample(patch(model, recorder, SIZE), source)
    plain_target = sample(model, target)
    for shared in ([], [(i, i) for i in range(TOKENS)]):
        blend = pack["blend_mask"].BlendMask([3], [5], threshold=0.3)
        fuser = editor_for(pack, model, "fuse", store=recorder.store, shared=shared, blend=blend)
        fused = sample(patch(model, fuser, SIZE), target)
        assert fuser.missing == 0 and fuser.fused > 0
        assert rel(fused, plain_target) > 1e-3, f"fusion with {len(shared)} shared tokens left the target as it was"
        # The blend words' maps come from the cross-attention alone (one per block and step), frame by frame.
        assert blend.count == fuser.fused // 2 and set(blend.sums) == {(LATENT // 2, LATENT // 2)}
        mask = blend.mask((LATENT, LATENT))
        assert mask.shape == (FRAMES, 1, LATENT, LATENT) and 0 < float(mask.mean()) <= 1
        # The sampler's post step puts the video latent back on the source outside the mask, frame by frame.
        x, src = torch.ones(1, 16, *SIZE), torch.zeros(1, 16, *SIZE)
        step = pack["blend_mask"].latent_blend(blend, {0: src}, lambda sigma: 0)
        out = step(0, x, 0.5)
        assert torch.equal(out[:, 0], mask[:, 0].unsqueeze(0).expand(1, -1, -1, -1).to(out.dtype))


def test_recorded_maps_equal_softmax_of_the_hosts_queries_and_keys(pack, model):
    """The store's maps against ``softmax(q k^T / sqrt(d))`` in float64 on the q, k ComfyUI computed for the first
    block's first step (self-attention over all video tokens, then cross-attention to the text), caught by a
    foreign override that the recording composes with (it runs every call)."""
    model = model.clone()
    capture = _Capture()
    model.model_options["transformer_options"]["optimized_attention_override"] = capture
    patch = pack["attention_patch"].patched
    recorder = editor_for(pack, model, "record")
    sample(patch(model, recorder, SIZE), cond(1), cfg=1.0)
    diffusion_model = model.model.diffusion_model
    assert len(capture.calls) == 2 * STEPS * len(diffusion_model.blocks)
    heads, n = diffusion_model.num_heads, FRAMES * (LATENT // 2) ** 2
    for call, kind, keys in ((0, "self", n), (1, "cross", TOKENS)):
        q, k, split = capture.calls[call]  # the editor hands the host's kernel (B, heads, L, d)
        if not split:
            q, k = (x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2) for x in (q, k))
        q, k = q.double(), k.double()
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        got = recorder.store.probs((0, ("double_block", 0, 0), kind), heads, "cpu")
        assert got.shape == expected.shape == (1, heads, n, keys)
        assert float((got.double() - expected).abs().max()) < 1e-5


def test_fused_cross_attention_equals_the_explicit_map():
    """With text keys alone (Wan's cross-attention) the two kernels give the UNet's rule: the target's map with the
    shared words' columns from the source's map, applied to the target's values."""
    from contextdiff.attention_fusion import joint_fused_attention

    gen = torch.Generator().manual_seed(0)
    b, h, n, t, t_src, d = 2, 3, 6, 5, 4, 8
    q_src, q = torch.randn(b, h, n, d, generator=gen), torch.randn(b, h, n, d, generator=gen)
    k_src = torch.randn(b, h, t_src, d, generator=gen)
    k, v = torch.randn(b, h, t, d, generator=gen), torch.randn(b, h, t, d, generator=gen)
    shared = [(0, 0), (1, 1), (3, 2)]
    out, tgt_maps, src_maps = joint_fused_attention(q_src, k_src, q, k, v, shared, [2], [3], image_keys=False)
    p_src = torch.softmax(q_src.double() @ k_src.double().transpose(-1, -2) / math.sqrt(d), -1)
    p_tgt = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(d), -1)
    fused = p_tgt.clone()
    fused[..., [0, 1, 3]] = p_src[..., [0, 1, 2]]
    assert float((out.double() - fused @ v.double()).abs().max()) < 1e-5
    assert float((tgt_maps.double() - p_tgt[..., [2]]).abs().max()) < 1e-6
    assert float((src_maps.double() - p_src[..., [3]]).abs().max()) < 1e-6
