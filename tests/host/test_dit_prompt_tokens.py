"""The words of a DiT's joint text tokens (docs/design.md 1.2): Flux's T5 tokens, SD3's CLIP-L/G then T5 tokens,
aligned between two prompts and searched for blend words with the families' real tokenizers (ComfyUI's own)."""

from __future__ import annotations

import importlib

import pytest


@pytest.fixture(scope="module")
def tokens(comfy_inprocess):
    from devkit import import_pack

    return importlib.import_module(f"{import_pack().__name__}.nodes.prompt_tokens")


class _Tokenizer:
    """What the prompt alignment asks of a CLIP object, ``tokenize``, from the family's real tokenizers (no T5-XXL
    can be built here; CLIP.tokenize is this call on its tokenizer)."""

    def __init__(self, tokenizer):
        self.tokenize = tokenizer.tokenize_with_weights


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_joint_prompt_tokens_align_t5_and_clip_words(tokens, family):
    from comfy.text_encoders import flux, sd3_clip

    clip = _Tokenizer(flux.FluxTokenizer() if family == "flux" else sd3_clip.SD3Tokenizer())
    source = tokens.joint_prompt_tokens(clip, "a cat on a mat", "cat, dog", family)
    target = tokens.joint_prompt_tokens(clip, "a big dog on a mat", "cat, dog", family)
    # T5 writes "a" as two pieces and has no start token: "cat" is its third token; CLIP's start token comes first.
    clip_part = 77 if family == "sd3" else 0
    assert source.word_positions == {"cat": ([2] if family == "sd3" else []) + [clip_part + 2], "dog": []}
    assert len(target.word_positions["dog"]) == (2 if family == "sd3" else 1)
    assert len(source.ids) == (77 + 77 if family == "sd3" else 256)
    from contextdiff.edit_plan import token_alignment

    pairs = token_alignment(source.ids, target.ids)
    assert all((t < clip_part) == (s < clip_part) for t, s in pairs)  # CLIP tokens never align with T5 tokens
    shared_source = {s for _, s in pairs}
    assert set(source.word_positions["cat"]).isdisjoint(shared_source)  # the edited word keeps no source map
    mat = [p for p in range(len(source.ids)) if source.ids[p] % (1 << 20) in (6928, 9063)]  # "mat" in T5 / CLIP
    assert mat and set(mat) <= shared_source


def test_the_edit_plan_aligns_a_dit_models_joint_text(comfy_inprocess):
    """``edit_runs.plan_edit`` with an SD3 model: the shared words and the blend words in SD3's joint text columns
    (CLIP 0-76, T5 from 77), not in a UNet's first CLIP chunk."""
    from comfy.text_encoders import sd3_clip
    from comfy_models import build_flow

    from contextdiff.editing import EditSettings, InversionSettings
    from devkit import import_pack

    runs = importlib.import_module(f"{import_pack().__name__}.nodes.edit_runs")
    settings = EditSettings(source_prompt="a cat on a mat", target_prompt="a dog on a mat", blend_words="cat, dog")
    clip = _Tokenizer(sd3_clip.SD3Tokenizer())
    plan = runs.plan_edit(settings, InversionSettings(), clip, model=build_flow("sd3"))
    assert plan.blend_source == [2, 77 + 2] and plan.blend_target == [2, 77 + 2]
    assert (2, 2) not in plan.shared_tokens and (79, 79) not in plan.shared_tokens
    assert {(i, i) for i in (0, 1, 3, 4, 5, 77, 78, 80)} <= set(plan.shared_tokens)
    unet_plan = runs.plan_edit(settings, InversionSettings(), clip)  # no model: the UNet's first CLIP chunk
    assert unet_plan.blend_source == [2] and max(t for t, _ in unet_plan.shared_tokens) < 77
