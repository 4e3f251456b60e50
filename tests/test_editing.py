"""Attention store and fusion: the pure pieces, then the editing runs on a real ComfyUI model in-process."""

import importlib

import pytest
import torch

from contextdiff.attention import (AttentionEditor, AttentionStore, attend, attention_probs, sparse_causal,
                                   token_alignment)
from contextdiff.editing import StepIndex, fused_steps


def test_token_alignment_keeps_shared_words_in_order():
    src = [0, 10, 11, 12, 13, 99]   # <start> a cat on grass <end>
    tgt = [0, 10, 20, 12, 13, 99]   # <start> a dog on grass <end>
    assert token_alignment(src, tgt) == [(0, 0), (1, 1), (3, 3), (4, 4), (5, 5)]
    inserted = [0, 10, 30, 11, 12, 13, 99]  # a big cat on grass
    assert token_alignment(src, inserted) == [(0, 0), (1, 1), (3, 2), (4, 3), (5, 4), (6, 5)]


def test_sparse_causal_sees_first_and_previous_frame():
    frames = torch.arange(2 * 4).float().reshape(8, 1, 1).expand(8, 3, 2)  # 2 clips of 4 frames, value = frame id
    out = sparse_causal(frames, 4)
    assert out.shape == (8, 6, 2)
    first, prev = out[:, :3, 0], out[:, 3:, 0]
    assert first[:4].eq(0).all() and first[4:].eq(4).all()
    assert prev[:, 0].tolist() == [0, 0, 1, 2, 4, 4, 5, 6]


def test_store_of_queries_keys_reproduces_maps():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 16, 32), torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    qk = AttentionStore({0}, store_maps=False)
    maps = AttentionStore({0}, store_maps=True)
    qk.put("a", q, k, 4)
    maps.put("a", q, k, 4)
    torch.testing.assert_close(qk.probs("a", 4, "cpu"), maps.probs("a", 4, "cpu"))
    assert qk.nbytes() == (16 + 7) * 32 * 2 * 4 and maps.nbytes() == 2 * 4 * 16 * 7 * 4
    torch.testing.assert_close(attend(q, k, v, 4, probs=attention_probs(q, k, 4)), attend(q, k, v, 4),
                               rtol=1e-5, atol=1e-5)


def test_fuse_window_and_step_index():
    assert fused_steps(20, 0.5) == set(range(10))
    assert fused_steps(20, 1.0) == set() and fused_steps(20, 0.0) == set(range(20))
    with pytest.raises(ValueError):
        fused_steps(20, 1.5)
    idx = StepIndex(torch.tensor([14.6, 3.0, 0.5, 0.0]))
    assert idx(3.0000001) == 1 and idx(0.0) == 3 and idx(7.0) is None


def test_editor_fuses_only_conditional_rows():
    """CFG batches: the unconditional half attends normally, the conditional half uses the source."""
    torch.manual_seed(1)
    store = AttentionStore({0})
    rec = AttentionEditor(store, "record", lambda s: 0)
    q_src, k_src = torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    extra = {"n_heads": 4, "sigmas": torch.tensor([1.0]), "cond_or_uncond": [0], "block": ("input", 1)}
    rec.self_attention(q_src, k_src, torch.randn(1, 16, 32), extra)
    fuse = AttentionEditor(store, "fuse", lambda s: 0)
    q, k, v = torch.randn(2, 16, 32), torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    out = fuse.self_attention(q, k, v, dict(extra, cond_or_uncond=[1, 0]))
    torch.testing.assert_close(out[0], attend(q[:1], k[:1], v[:1], 4)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], attend(q[1:], k_src, v[1:], 4, probs=attention_probs(q_src, k_src, 4))[0],
                               rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def edit_env(comfy_inprocess):
    from comfy_models import build_sd15, build_tiny_clip
    from host import import_pack
    pack = import_pack()
    runtime = importlib.import_module(pack.__name__ + ".nodes.edit_runtime")
    clip = build_tiny_clip()
    model = build_sd15(0, 32, 768, attn_scale=6.0)

    def enc(text):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    return runtime, model, clip, enc


def test_fusion_from_queries_keys_equals_fusion_from_full_maps(edit_env):
    runtime, model, clip, enc = edit_env
    src_p, tgt_p = "a cat sitting on the grass", "a dog sitting on the grass"
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    outs = {}
    for store_maps in (False, True):
        source = runtime.invert(model, latent, enc(src_p), steps=6, store_dtype=torch.float32, store_maps=store_maps)
        outs[store_maps] = (runtime.edit(model, source, enc(tgt_p), cfg=3.0, clip=clip, source_prompt=src_p,
                                         target_prompt=tgt_p, blend_words="cat dog")[0], source.store.nbytes())
    torch.testing.assert_close(outs[False][0], outs[True][0], rtol=1e-4, atol=1e-5)
    assert outs[False][1] < outs[True][1]
    # And fusion is not a no-op: without it the edit differs.
    plain, _ = runtime.edit(model, source, enc(tgt_p), cfg=3.0, fuse=False)
    assert (plain - outs[False][0]).abs().max() > 1e-3


def test_runs_never_modify_the_users_model(edit_env):
    """Inversion and editing patch a clone: the model's options and weights are untouched."""
    import copy
    runtime, model, clip, enc = edit_env
    options = copy.deepcopy(model.model_options)
    weights = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    source = runtime.invert(model, latent, enc("a cat"), steps=3)
    runtime.edit(model, source, enc("a dog"), cfg=2.0, clip=clip, source_prompt="a cat", target_prompt="a dog",
                 blend_words="cat dog")
    assert model.model_options == options and "patches_replace" not in model.model_options.get("transformer_options", {})
    for k, v in model.model.diffusion_model.state_dict().items():
        assert torch.equal(v, weights[k]), k
