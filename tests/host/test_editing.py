"""Attention store, fusion, blend mask and edit plan: the pure pieces, then the editing runs on a real
ComfyUI model in-process."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from contextdiff.attention_fusion import AttentionEditor, attend, sparse_causal
from contextdiff.attention_store import AttentionStore, attention_probs
from contextdiff.blend_mask import BlendMask
from contextdiff.chunking import chunk_starts, crossfade
from contextdiff.edit_plan import EditInputError, PromptTokens, check_prompt_text, plan_edit, token_alignment
from contextdiff.editing import EditSettings, InversionSettings, StepIndex, fused_steps


def test_token_alignment_keeps_shared_words_in_order():
    src = [0, 10, 11, 12, 13, 99]  # <start> a cat on grass <end>
    tgt = [0, 10, 20, 12, 13, 99]  # <start> a dog on grass <end>
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
    torch.testing.assert_close(
        attend(q, k, v, 4, probs=attention_probs(q, k, 4)), attend(q, k, v, 4), rtol=1e-5, atol=1e-5
    )


def test_fuse_window_and_step_index():
    assert fused_steps(20, 0.5) == set(range(10))
    assert fused_steps(20, 1.0) == set() and fused_steps(20, 0.0) == set(range(20))
    with pytest.raises(ValueError):
        fused_steps(20, 1.5)
    idx = StepIndex(torch.tensor([14.6, 3.0, 0.5, 0.0]))
    assert idx(3.0000001) == 1 and idx(0.0) == 3 and idx(7.0) is None


def _record_and_fuse(frames=None, batch=1, n=16):
    torch.manual_seed(1)
    store = AttentionStore({0})
    rec = AttentionEditor(store, "record", lambda s: 0, frames=frames)
    q_src, k_src = torch.randn(batch, n, 32), torch.randn(batch, n, 32)
    extra = {"n_heads": 4, "sigmas": torch.tensor([1.0]), "cond_or_uncond": [0], "block": ("input", 1)}
    rec.self_attention(q_src, k_src, torch.randn(batch, n, 32), extra)
    fuse = AttentionEditor(store, "fuse", lambda s: 0, frames=frames)
    q, k, v = torch.randn(2 * batch, n, 32), torch.randn(2 * batch, n, 32), torch.randn(2 * batch, n, 32)
    out = fuse.self_attention(q, k, v, dict(extra, cond_or_uncond=[1, 0]))
    return q_src, k_src, q, k, v, out, fuse


def test_editor_fuses_only_conditional_rows():
    """CFG batches: the unconditional half attends normally, the conditional half uses the source's maps."""
    q_src, k_src, q, k, v, out, fuse = _record_and_fuse()
    torch.testing.assert_close(out[0], attend(q[:1], k[:1], v[:1], 4)[0], rtol=1e-5, atol=1e-6)
    # Independent computation: the explicit source maps applied to the target's values.
    maps = torch.softmax(
        torch.einsum("bnhd,bmhd->bhnm", q_src.reshape(1, 16, 4, 8), k_src.reshape(1, 16, 4, 8)) / 8**0.5, dim=-1
    )
    expected = torch.einsum("bhnm,bmhd->bnhd", maps, v[1:].reshape(1, 16, 4, 8)).reshape(1, 16, 32)
    torch.testing.assert_close(out[1], expected[0], rtol=1e-5, atol=1e-6)
    assert (fuse.fused, fuse.missing) == (1, 0)


def test_sparse_causal_fusion_uses_the_source_keys_of_the_first_and_previous_frame():
    q_src, k_src, q, k, v, out, _ = _record_and_fuse(frames=3, batch=3, n=8)
    v_cond = sparse_causal(v[3:], 3)
    maps = attention_probs(q_src, sparse_causal(k_src, 3), 4)
    torch.testing.assert_close(out[3:], attend(q_src, k_src, v_cond, 4, probs=maps), rtol=1e-5, atol=1e-6)


def test_round4_combined_entries_record_the_first_and_fuse_each():
    """Issue 32.3, a positive of two entries (ConditioningCombine; ComfyUI tags each chunk of the batch with its
    entry's uuid, in any order): the inversion records the first entry's rows only; the edit gives every entry the
    source's self-attention maps, and the shared words' source maps only to the target entry, against explicit
    maps computed here."""
    torch.manual_seed(3)
    heads, n = 4, 16
    store = AttentionStore({0})
    rec = AttentionEditor(store, "record", lambda s: 0)
    rec.positive_entries(["first", "second"])
    extra = {"n_heads": heads, "sigmas": torch.tensor([1.0]), "block": ("input", 1)}
    recorded = dict(extra, cond_or_uncond=[0, 0], uuids=["second", "first"])  # ComfyUI batches them reversed
    q_src, k_src = torch.randn(2, n, 32), torch.randn(2, n, 32)
    text_k = torch.randn(2, 5, 32)
    rec.self_attention(q_src, k_src, torch.randn(2, n, 32), recorded)
    rec.cross_attention(q_src, text_k, torch.randn(2, 5, 32), recorded)
    kept_q, kept_k = store.queries_keys((0, ("input", 1, 0), "self"), "cpu")
    assert torch.equal(kept_q, q_src[1:]) and torch.equal(kept_k, k_src[1:]), "not the first entry's rows"
    fuse = AttentionEditor(store, "fuse", lambda s: 0, shared_tokens=[(1, 1)], target_entry=1)
    fuse.positive_entries(["first", "second"])
    layout = dict(extra, cond_or_uncond=[1, 0, 0], uuids=["neg", "second", "first"])
    q, k, v = torch.randn(3, n, 32), torch.randn(3, n, 32), torch.randn(3, n, 32)
    out = fuse.self_attention(q, k, v, layout)
    src_maps = attention_probs(q_src[1:], k_src[1:], heads)  # the first entry's recording
    torch.testing.assert_close(out[0], attend(q[:1], k[:1], v[:1], heads)[0], rtol=1e-5, atol=1e-5)
    for row in (1, 2):
        expected = attend(q[row : row + 1], k[row : row + 1], v[row : row + 1], heads, probs=src_maps)
        torch.testing.assert_close(out[row], expected[0], rtol=1e-5, atol=1e-5)
    assert (fuse.self_fused, fuse.entry_calls, fuse.missing) == (1, 2, 0)
    tk, tv = torch.randn(3, 5, 32), torch.randn(3, 5, 32)
    out = fuse.cross_attention(q, tk, tv, layout)
    src_cross = attention_probs(q_src[1:], text_k[1:], heads)
    for row in (0, 2):  # the negative and the style entry attend as they are
        torch.testing.assert_close(out[row], attend(q[row : row + 1], tk[row : row + 1], tv[row : row + 1], heads)[0])
    probs = attention_probs(q[1:2], tk[1:2], heads)
    probs[..., 1] = src_cross[..., 1]
    torch.testing.assert_close(out[1], attend(q[1:2], tk[1:2], tv[1:2], heads, probs=probs)[0], rtol=1e-5, atol=1e-5)


def test_fusion_counts_calls_without_a_recording():
    store = AttentionStore({0})
    fuse = AttentionEditor(store, "fuse", lambda s: 0)
    extra = {"n_heads": 4, "sigmas": torch.tensor([1.0]), "cond_or_uncond": [0], "block": ("input", 1)}
    q = torch.randn(1, 16, 32)
    torch.testing.assert_close(fuse.self_attention(q, q, q, extra), attend(q, q, q, 4))
    assert (fuse.fused, fuse.missing) == (0, 1)


def test_blend_mask_is_smoothed_thresholded_and_dilated():
    """Against an independent computation: Gaussian smoothing by conv2d, dilation by max-pooling.

    At 32x32 latents (256 px): sigma 1 (kernel 5) and a dilation radius of 2 latent pixels."""
    torch.manual_seed(2)
    blend = BlendMask([1], [], threshold=0.5)
    probs = torch.rand(1, 2, 256, 3).softmax(-1)  # one layer, 16x16 tokens, 3 text tokens
    blend.add(probs, probs, (16, 16))
    mask = blend.mask((32, 32))
    m = F.interpolate(probs[..., [1]].mean(dim=(1, 3)).reshape(1, 1, 16, 16), size=(32, 32), mode="bilinear")
    g = torch.exp(-(torch.arange(-2, 3).float() ** 2) / 2)
    g = (g / g.sum())[:, None] * (g / g.sum())[None, :]
    smooth = F.conv2d(F.pad(m, (2, 2, 2, 2), mode="reflect"), g[None, None])
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    binary = (smooth > 0.5).float()
    expected = F.max_pool2d(binary, 5, stride=1, padding=2)
    torch.testing.assert_close(mask, expected)
    assert 0 < binary.mean() < mask.mean() < 1  # the dilation grew it
    # An 8x8 latent (64 px) is too small to smooth or dilate: the thresholded map itself.
    small = BlendMask([1], [], threshold=0.5)
    small.add(probs[:, :, :64], probs[:, :, :64], (8, 8))
    m8 = probs[:, :, :64, [1]].mean(dim=(1, 3)).reshape(1, 1, 8, 8)
    torch.testing.assert_close(small.mask((8, 8)), ((m8 - m8.min()) / (m8.max() - m8.min()) > 0.5).float())
    assert BlendMask([], [], 0.3).active is False


def test_a_flat_map_says_nothing_so_its_frame_is_not_masked():
    """A word's map flat to within rounding (a random model's early steps: 1e-6 of its value) is all 1, the edit
    unmasked there, where min-max normalisation would threshold its rounding noise: the same map through another
    kernel (the store against the recomputed source, another device or dtype) then gave another mask. Frames are
    judged one by one, and a map with contrast is thresholded as before."""
    gen = torch.Generator().manual_seed(3)
    ramp = torch.linspace(1.0, 2.0, 64).reshape(1, 1, 64, 1)
    flat = 0.01 * (1 + 1e-6 * torch.rand(1, 1, 64, 1, generator=gen))  # (B, heads, N, words)
    masks = []
    for noise in (0.0, 1e-7):  # rounding-level noise on the flat frame
        blend = BlendMask([0], [], threshold=0.5)
        blend.add_maps(torch.cat([ramp, flat + noise * torch.rand(flat.shape, generator=gen)]), None, (8, 8))
        masks.append(blend.mask((8, 8)))
    for mask in masks:
        assert bool((mask[1] == 1).all())  # the flat frame: not masked
        expected = ((ramp - 1).reshape(1, 8, 8) > 0.5).float()  # min-max normalised ramp, thresholded
        torch.testing.assert_close(mask[0], expected)
    spread = BlendMask([0], [], threshold=0.5)
    spread.add_maps(0.01 * (1 + 1e-3 * ramp), None, (8, 8))  # 0.1% contrast is still a map
    assert 0 < float(spread.mask((8, 8)).mean()) < 1


def test_chunks_cover_the_clip_and_crossfade_overlaps():
    assert chunk_starts(6, 8, 2) == [0]
    assert chunk_starts(10, 8, 2) == [0, 6]
    assert chunk_starts(20, 8, 2) == [0, 6, 12]
    assert chunk_starts(5, 1, 0) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        chunk_starts(10, 4, 4)
    a, b = torch.zeros(4, 1), torch.ones(4, 1)
    out = crossfade([(0, a), (2, b)], 6)[:, 0]
    torch.testing.assert_close(out, torch.tensor([0, 0, 1 / 3, 2 / 3, 1, 1]))


# -- the edit plan: every input combination that would switch part of the edit off says so ---------
CAT = PromptTokens([0, 5, 6, 7, 99], {"cat": [2], "dog": []})
DOG = PromptTokens([0, 5, 8, 7, 99], {"cat": [], "dog": [2]})


def plan(**kw):
    """The plan of "a cat" -> "a dog" with blend words "cat, dog" over 20 steps, ``kw`` changed."""
    edit = {k: kw.pop(k) for k in list(kw) if k in EditSettings.__dataclass_fields__}
    inversion = {k: kw.pop(k) for k in list(kw) if k in InversionSettings.__dataclass_fields__}
    args = dict(dict(source=CAT, target=DOG, has_clip=True), **kw)
    settings = EditSettings(**dict(dict(source_prompt="a cat", target_prompt="a dog", blend_words="cat, dog"), **edit))
    return plan_edit(settings, InversionSettings(**dict(dict(steps=20, fuse_start=0.5), **inversion)), **args)


def test_edit_plan_aligns_words_and_finds_blend_words():
    p = plan()
    assert p.shared_tokens == [(0, 0), (1, 1), (3, 3), (4, 4)] and p.blend_target == [2] and p.blend_source == [2]
    assert p.warnings == []


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(fuse_start=1.0), "fused no step"),
        (dict(steps=1, fuse_start=0.6), "fused no step"),
        (dict(has_clip=False, source=None, target=None), "need the clip input"),
        (dict(target_prompt="", target=None), "need both prompt texts"),
        (dict(fuse=False), "need fuse_attention on"),
        (dict(blend_threshold=1.0), "nothing would be edited"),
        (dict(blend_words="horse"), "none of the blend words"),
    ],
)
def test_edit_plan_refuses_bad_combinations(change, words):
    with pytest.raises(EditInputError, match=words):
        plan(**change)


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(has_clip=False, source=None, target=None, blend_words=""), "no clip connected"),
        (dict(source_prompt="", source=None, blend_words=""), "only self-attention is fused"),
        (dict(target_prompt="a cat", target=CAT), "are the same"),
        (dict(blend_words="cat, horse"), "ignored: horse"),
        (dict(blend_threshold=0.0), "keeps almost nothing"),
        (dict(source=PromptTokens(CAT.ids, CAT.word_positions, chunks=2)), "longer than one CLIP chunk"),
    ],
)
def test_edit_plan_warns_where_a_feature_works_only_in_part(change, words):
    assert any(words in w for w in plan(**change).warnings), plan(**change).warnings


# -- issue 22.3: a blend word past the first 75-token chunk is named with its position, not "in neither prompt" --
LATE_DOG = PromptTokens(DOG.ids, {"cat": [], "dog": []}, chunks=2, late_positions={"dog": [80]})


def test_blend_word_past_the_first_chunk_is_named_with_its_position():
    with pytest.raises(EditInputError) as err:
        plan(blend_words="dog", source=PromptTokens(CAT.ids, {"dog": []}), target=LATE_DOG)
    message = str(err.value)
    assert "'dog' is at token 80 of the target prompt" in message and "first 75 tokens" in message, message
    assert "neither" not in message and "none of the blend words" not in message, message
    # One word found, the other only late: a warning with the position, the word ignored.
    late_cat = PromptTokens(DOG.ids, {"cat": [], "dog": [2]}, chunks=2, late_positions={"cat": [77]})
    p = plan(source=PromptTokens(CAT.ids, {"cat": [], "dog": []}), target=late_cat)
    assert any("'cat' is at token 77 of the target prompt" in w and "ignored" in w for w in p.warnings), p.warnings
    assert p.blend_target == [2] and p.blend_source == []


def test_blend_words_missing_from_the_texts_are_refused_before_tokenizing():
    """The text check (no tokenizer) refuses only what the token check would refuse as well."""
    from contextdiff.edit_plan import check_settings

    settings = EditSettings(source_prompt="a Cat on grass", target_prompt="a dog", blend_words="horse")
    with pytest.raises(EditInputError, match="none of the blend words"):
        check_settings(settings, InversionSettings(steps=20), has_clip=True)
    for words in ("cat", "CAT, horse", "on grass"):  # found (any case), or one of several found
        check_settings(
            EditSettings(source_prompt="a Cat on grass", target_prompt="a dog", blend_words=words),
            InversionSettings(steps=20),
            has_clip=True,
        )


def test_fused_steps_are_computed_once_per_settings():
    settings = InversionSettings(steps=20, fuse_start=0.5)
    assert settings.fused_steps == frozenset(range(10)) and settings.fused_steps is settings.fused_steps
    assert InversionSettings(steps=20, fuse_start=1.0).fused_steps == frozenset()


# -- issue 22.2: a typed prompt must be the text its conditioning was encoded from -----------------
def test_prompt_text_that_differs_from_the_encoded_one_is_refused_naming_both():
    def words(text):
        return " ".join(text.lower().split())

    with pytest.raises(EditInputError) as err:
        check_prompt_text("target_prompt", "a blue ball", "a green ball", "connected to the positive", words)
    assert "'a blue ball'" in str(err.value) and "'a green ball'" in str(err.value), str(err.value)
    check_prompt_text("target_prompt", "A  green ball", "a green ball", "here", words)  # what the tokenizer reads
    check_prompt_text("target_prompt", "a blue ball", None, "here", words)  # the graph does not say
    check_prompt_text("target_prompt", "", "a green ball", "here", words)  # empty: self-attention only, warned


# -- issue 22.1: an edit source names what made it, and the edit refuses anything else ------------
def test_identity_mismatch_names_what_differs():
    from contextdiff.editing import EditIdentity, ModelIdentity

    model = ModelIdentity(weights="w1", patches="", patch_count=0, sampling="s1")
    base = EditIdentity(model, "a.safetensors", "d1", 1.0)
    cases = {
        "UNet weights differ": EditIdentity(ModelIdentity("w2", "", 0, "s1"), "a.safetensors", "d1", 1.0),
        "0 weight patches on the model (LoRA, merges), this model has 3": EditIdentity(
            ModelIdentity("w1", "p", 3, "s1"), "a.safetensors", "d1", 1.0
        ),
        "another noise schedule": EditIdentity(ModelIdentity("w1", "", 0, "s2"), "a.safetensors", "d1", 1.0),
        "adapter a.safetensors, the edit uses none": EditIdentity(model),
        "adapter a.safetensors (one file's content), the edit uses a.safetensors (another's)": EditIdentity(
            model, "a.safetensors", "d2", 1.0
        ),
        "adapter_strength 1, the edit uses 0.5": EditIdentity(model, "a.safetensors", "d1", 0.5),
    }
    assert base.mismatch(base) is None
    for expected, other in cases.items():
        assert expected in (base.mismatch(other) or ""), (expected, base.mismatch(other))


def test_round4_messages_identity_names_the_prediction_type_and_hooks_on_one_side():
    """Issue 32.5: a prediction type alone is named as such (not "another noise schedule"), with the schedule when
    both differ; sampling hooks on one model only are notes, not a mismatch, each side named."""
    from contextdiff.editing import EditIdentity, ModelIdentity

    eps = EditIdentity(ModelIdentity("w1", "", 0, "s1", "EPS"))
    v = EditIdentity(ModelIdentity("w1", "", 0, "s1", "V_PREDICTION"))
    assert "predicts EPS, this model predicts V_PREDICTION (the prediction type" in eps.mismatch(v)
    v_zsnr = EditIdentity(ModelIdentity("w1", "", 0, "s2", "V_PREDICTION"))
    assert "predicts V_PREDICTION and another noise schedule" in eps.mismatch(v_zsnr)
    hooked = EditIdentity(ModelIdentity("w1", "", 0, "s1", "EPS", ("output_block_patch (FreeU)",)))
    assert eps.mismatch(hooked) is None and eps.hook_differences(eps) == []
    (edit_side,) = eps.hook_differences(hooked)
    (inversion_side,) = hooked.hook_differences(eps)
    assert "output_block_patch (FreeU) only on the edit's model" in edit_side, edit_side
    assert "output_block_patch (FreeU) only on the inversion's model" in inversion_side, inversion_side


@pytest.fixture(scope="module")
def edit_env(comfy_inprocess):
    from comfy_models import build_sd15, build_tiny_clip

    from devkit import import_pack

    pack = import_pack()
    runs = importlib.import_module(pack.__name__ + ".nodes.edit_runs")
    clip = build_tiny_clip()
    model = build_sd15(0, 32, 768, attn_scale=6.0)

    def enc(text):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    return runs, model, clip, enc


def test_fusion_from_queries_keys_equals_fusion_from_full_maps(edit_env):
    """The fused kernel on stored queries/keys against explicit stored maps: the same edit."""
    runs, model, clip, enc = edit_env
    src_p, tgt_p = "a cat sitting on the grass", "a dog sitting on the grass"
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    edit = EditSettings(cfg=3.0, source_prompt=src_p, target_prompt=tgt_p, blend_words="cat dog")
    fused = runs.plan_edit(edit, InversionSettings(steps=6), clip)
    outs = {}
    for store_maps in (False, True):
        settings = InversionSettings(steps=6, store_dtype=torch.float32, store_maps=store_maps)
        source = runs.invert(runs.Guide(model, enc(src_p)), latent, settings)
        result = runs.edit(runs.Guide(model, enc(tgt_p)), source, fused)
        assert result.mask is not None and result.warnings == []
        outs[store_maps] = (result.samples, source.store.nbytes())
    torch.testing.assert_close(outs[False][0], outs[True][0], rtol=1e-4, atol=1e-5)
    assert outs[False][1] < outs[True][1]
    # And fusion is not a no-op: without it the edit differs.
    unfused = runs.plan_edit(EditSettings(cfg=3.0, fuse=False), settings)
    plain = runs.edit(runs.Guide(model, enc(tgt_p)), source, unfused)
    assert (plain.samples - outs[False][0]).abs().max() > 1e-3


def test_runs_never_modify_the_users_model(edit_env):
    """Inversion and editing patch a clone: the model's options and weights are untouched."""
    import copy

    runs, model, clip, enc = edit_env
    options = copy.deepcopy(model.model_options)
    weights = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    source = runs.invert(runs.Guide(model, enc("a cat")), latent, InversionSettings(steps=3))
    edit = EditSettings(cfg=2.0, source_prompt="a cat", target_prompt="a dog", blend_words="cat dog")
    runs.edit(runs.Guide(model, enc("a dog")), source, runs.plan_edit(edit, source.settings, clip))
    assert model.model_options == options
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
    for k, v in model.model.diffusion_model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_interrupt_stops_within_one_unet_call(edit_env):
    """The interrupt flag, raised in the middle of a UNet call, stops the run at the next attention block."""
    import comfy.model_management as mm

    runs, model, clip, enc = edit_env
    calls = {"n": 0, "after": 0}

    def tripwire(n, context, value, extra):  # another pack's attn1 patch: counts blocks, interrupts at the 2nd
        calls["n"] += 1
        if calls["n"] == 2:
            mm.interrupt_current_processing(True)
        elif calls["n"] > 2:
            calls["after"] += 1
        return n, context, value

    patched = model.clone()
    patched.set_model_attn1_patch(tripwire)
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))}
    try:
        with pytest.raises(mm.InterruptProcessingException):
            runs.invert(runs.Guide(patched, enc("a cat")), latent, InversionSettings(steps=3))
    finally:
        mm.interrupt_current_processing(False)
    blocks = len(runs.attention_blocks(model.model.diffusion_model))
    assert blocks > 3 and calls["after"] == 0, (calls, blocks)


def test_edit_source_refuses_another_model_naming_it(edit_env):
    """Issue 22.1: inverted with one model, edited with another (same CLIP, VAE, adapter): refused before any
    model call, naming the weights, the patches or the schedule; the same model (or a clone) passes."""
    import comfy.model_management as mm
    from comfy_models import build_sd15

    runs, model, clip, enc = edit_env
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))}
    source = runs.invert(runs.Guide(model, enc("a cat")), latent, InversionSettings(steps=3))
    plain = runs.plan_edit(EditSettings(cfg=2.0, fuse=False), source.settings)
    merged = model.clone()
    other = build_sd15(1, 32, 768, attn_scale=6.0)
    merged.add_patches(other.get_key_patches("diffusion_model."), 0.5, 0.5)  # what ModelMergeSimple does
    for wrong, named in ((other, "UNet weights differ"), (merged, "weight patches")):
        with pytest.raises(ValueError, match=named):
            runs.edit(runs.Guide(wrong, enc("a dog")), source, plain)
    runs.edit(runs.Guide(model.clone(), enc("a dog")), source, plain)
    # The merged model loaded with its patches applied in place: the base model's identity is unchanged
    # (read from ComfyUI's backup of the original weights), so its edit source still fits.
    mm.load_models_gpu([merged])
    try:
        runs.check_source_fits(model, source, None, 1.0)
    finally:
        mm.unload_all_models()


def test_edit_source_refusal_guards_a_real_loss(edit_env):
    """Why an adapter mismatch is refused (issue 22.1): inverted with the bias, sampled without it (forced past
    the refusal by claiming the edit's identity), the reconstruction is worse than with the same adapter."""
    import dataclasses

    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from devkit import import_pack

    runs, model, clip, enc = edit_env
    types = importlib.import_module(import_pack().__name__ + ".nodes.types")
    torch.manual_seed(0)
    module = ContextAdapter(AdapterConfig(dim=64, depth=2))  # a smooth, small bias, like a trained adapter's
    torch.nn.init.normal_(module.patch_out.weight, std=0.02)
    torch.nn.init.normal_(module.patch_out.bias, std=0.05)
    adapter = types.LoadedAdapter(module.eval(), {}, "gentle")
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    source = runs.invert(runs.Guide(model, enc("a cat"), adapter=adapter), {"samples": x0}, InversionSettings(steps=6))
    plain = runs.plan_edit(EditSettings(cfg=1.0, fuse=False), source.settings)
    same = runs.edit(runs.Guide(model, enc("a cat"), adapter=adapter), source, plain).samples
    with pytest.raises(ValueError, match="inverted with adapter gentle, the edit uses none"):
        runs.edit(runs.Guide(model, enc("a cat")), source, plain)
    forced = dataclasses.replace(source, identity=type(source.identity)(source.identity.model))
    without = runs.edit(runs.Guide(model, enc("a cat")), forced, plain).samples
    err_same, err_without = (((x - x0).norm() / x0.norm()).item() for x in (same, without))
    assert err_without > 1.2 * err_same, (err_same, err_without)


def test_prompt_text_is_read_from_the_graph_through_conditioning_nodes(comfy_inprocess):
    """Issue 22.2: the text a conditioning was encoded from, found upstream in the API prompt (None where the
    graph does not say, so nothing is refused there)."""
    from devkit import import_pack

    graph = importlib.import_module(import_pack().__name__ + ".nodes.edit_graph")
    prompt = {
        "enc": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": "a cat"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": "blurry"}},
        "xl": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"clip": ["c", 0], "text_g": "a dog", "text_l": "x"}},
        "cn": {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {"positive": ["enc", 0], "negative": ["neg", 0], "control_net": ["n", 0], "image": ["i", 0]},
        },
        "both": {
            "class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": ["cn", 0], "conditioning_2": ["xl", 0]},
        },
        "adds": {"class_type": "SomeEncoder", "inputs": {"clip": ["c", 0], "conditioning": ["xl", 0], "text": "extra"}},
        "linked": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": ["s", 0]}},
        "odd": {"class_type": "Unknown", "inputs": {"samples": ["enc", 0]}},
    }
    unknown = graph.Unknown("s", "?")  # a text from a node the graph does not hold: named, not guessed
    expected = {
        "enc": ["a cat"],
        "xl": ["a dog"],
        "both": ["a cat", "a dog"],  # ConditioningCombine: conditioning_1's entries, then conditioning_2's
        "adds": ["a dog"],
        "linked": [unknown],
        "odd": None,
    }
    for node, texts in expected.items():
        assert graph.encoded_texts(prompt, [node, 0]) == texts, node
    assert graph.encoded_texts(prompt, ["cn", 1]) == ["blurry"]  # ControlNet's second output is the negative
    assert graph.encoded_texts(None, ["enc", 0]) is None and graph.encoded_texts(prompt, "a literal") is None


def test_round4_messages_weight_patches_that_change_nothing_are_no_other_model(edit_env):
    """Issue 32.5: patches at strength 0 (a LoRA at strength_model 0) leave every weight as it is, so the identity is
    the base model's; at any other strength, or a "set" patch (which replaces the weight whatever its strength), it
    is another model. The weights after ComfyUI applies the zero-strength patches are the base weights."""
    import comfy.model_management as mm
    from comfy_models import build_sd15

    runs, model, _, _ = edit_env
    identity = importlib.import_module(runs.__name__.rsplit(".", 1)[0] + ".model_identity").model_identity
    other = build_sd15(1, 32, 768, attn_scale=6.0).get_key_patches("diffusion_model.")
    at_zero, at_half, replaced = model.clone(), model.clone(), model.clone()
    at_zero.add_patches(other, 0.0)
    at_half.add_patches(other, 0.5)
    key = next(iter(other))
    replaced.add_patches({key: ("set", (other[key][0],))}, 0.0)
    base = identity(model)
    assert at_zero.patches and identity(at_zero) == base
    assert identity(at_half).patches != base.patches and identity(replaced).patches != base.patches
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    mm.load_models_gpu([at_zero])
    try:
        for k, v in at_zero.model.diffusion_model.state_dict().items():
            assert torch.equal(v.cpu(), before[k]), k
    finally:
        mm.unload_all_models()
