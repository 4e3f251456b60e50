"""The Edit Sampler's route on SD3's joint attention, in-process on the tiny SD3 file with SD3's own text encoders at
test size (``comfy_models.build_tiny_flow_clip``): ``edit_runs.invert`` (refined inversion to sigma 1, recording the
joint attention) then ``edit_runs.edit`` with the plan the node makes (``plan_edit(model=)``: the words aligned in
SD3's CLIP-L/G then T5 tokens). The random-weight model runs itself here (no Gaussian stand-in), so the recording
and the fusion see the host's own q, k, v.
"""

from __future__ import annotations

import importlib

import pytest
import torch

STEPS = 6
SIZE = 8  # latent side: 4x4 image tokens
SOURCE = "a cat sitting on a red mat"
TARGET = "a dog sitting on a red mat"


@pytest.fixture(scope="module")
def runs(comfy_inprocess):
    from helpers import pack_modules

    return pack_modules("nodes.edit_runs")["edit_runs"]


@pytest.fixture(scope="module")
def sd3():
    from comfy_models import build_flow, build_tiny_flow_clip

    return build_flow("sd3", seed=0), build_tiny_flow_clip("sd3", seed=0)


def encode(clip, text: str) -> list:
    """CLIPTextEncode's output for ``text``."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def invert(runs, model, clip, latent, **settings):
    from contextdiff.editing import InversionSettings

    recompute = settings.pop("recompute", False)
    settings = InversionSettings(steps=STEPS, scheduler="simple", refine_steps=10, fuse_start=0.5, **settings)
    guide = runs.Guide(model, encode(clip, SOURCE))
    return runs.invert(guide, {"samples": latent.clone()}, settings, recompute=recompute)


def edit(runs, model, clip, source, target: str, fuse: bool, blend_words: str = ""):
    from contextdiff.editing import EditSettings

    settings = EditSettings(
        cfg=1.0, source_prompt=SOURCE, target_prompt=target, blend_words=blend_words, fuse=fuse, blend_threshold=0.3
    )
    runs.require_editable(model, settings)  # what the node checks first: SD3's joint attention is fused
    plan = runs.plan_edit(settings, source.settings, clip, model=model)
    return runs.edit(runs.Guide(model, encode(clip, target)), source, plan), plan


@pytest.fixture(scope="module")
def inverted(runs, sd3):
    model, clip = sd3
    latent = torch.randn(1, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    return latent, invert(runs, model, clip, latent)


def test_equal_prompts_fused_equal_the_unfused_edit_and_reconstruct(runs, sd3, inverted):
    """Refined inversion records SD3's joint attention in the fused steps; with equal prompts the fused edit is the
    unfused one (the fused maps are the source's own) to 1e-5 relative, and both return the input."""
    model, clip = sd3
    latent, source = inverted
    layers = len(model.model.diffusion_model.joint_blocks)
    assert len(source.store.entries) == len(source.settings.fused_steps) * layers > 0
    (fused, plan), (plain, _) = (edit(runs, model, clip, source, SOURCE, fuse) for fuse in (True, False))
    assert plan.fuse and plan.shared_tokens
    errs = {"fused vs unfused": rel(fused.samples, plain.samples), "reconstruction": rel(fused.samples, latent)}
    print("SD3 equal prompts:", errs)
    assert errs["fused vs unfused"] < 1e-5, errs
    assert errs["reconstruction"] < 1e-4, errs  # refined inversion on the random-weight model


def test_fusion_changes_the_edit_and_the_blend_words_are_found_in_clip_and_t5(runs, sd3, inverted):
    """With another target prompt fusion changes the result (the source's attention replaces the target's), and the
    blend words are found in both parts of SD3's joint text (CLIP-L/G columns 0-76, T5 from 77): the blend mask is
    made from their maps and keeps part of the image on the source."""
    model, clip = sd3
    latent, source = inverted
    (fused, _), (plain, _) = (edit(runs, model, clip, source, TARGET, fuse) for fuse in (True, False))
    assert rel(fused.samples, plain.samples) > 1e-3
    blended, plan = edit(runs, model, clip, source, TARGET, True, blend_words="cat, dog")
    for positions in (plan.blend_source, plan.blend_target):
        assert any(p < 77 for p in positions) and any(p >= 77 for p in positions), positions
    assert blended.mask is not None and blended.mask.shape[-2:] == (SIZE, SIZE)
    assert 0 < float(blended.mask.float().mean()) < 1
    assert rel(blended.samples, fused.samples) > 1e-4  # the blend mask acts on the edit


def test_sd35_medium_image_only_attention_is_recorded_counted_and_fused(runs, sd3):
    """SD3.5-medium's MMDiT-X blocks run a second, image-only self-attention after the joint one: it is recorded as a
    layer of its own (the store's estimate counts it: equal to the recorded bytes), and with equal prompts the fused
    edit is still the unfused one to 1e-5 relative, while another target changes it."""
    from comfy_models import build_flow

    from contextdiff.attention_store import joint_store_bytes

    dit = importlib.import_module(runs.__name__.replace("edit_runs", "dit_attention"))
    model, clip = build_flow("sd35m", seed=0), sd3[1]
    diffusion_model = model.model.diffusion_model
    assert dit.image_only_blocks(diffusion_model) == 1  # ComfyUI's detection found the MMDiT-X block
    latent = torch.randn(1, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    source = invert(runs, model, clip, latent)
    fused_steps = len(source.settings.fused_steps)
    kinds = {key[2] for key in source.store.entries}
    assert kinds == {"joint", "image"}, kinds
    assert len(source.store.entries) == fused_steps * (len(diffusion_model.joint_blocks) + 1)
    tokens = int(encode(clip, SOURCE)[0][0].shape[1])
    footprint = dit.joint_footprint(diffusion_model, (SIZE, SIZE), tokens)
    assert joint_store_bytes(footprint, fused_steps, 2) == source.store.nbytes()
    (fused, _), (plain, _) = (edit(runs, model, clip, source, SOURCE, fuse) for fuse in (True, False))
    assert rel(fused.samples, plain.samples) < 1e-5
    (other, _), (other_plain, _) = (edit(runs, model, clip, source, TARGET, fuse) for fuse in (True, False))
    assert rel(other.samples, other_plain.samples) > 1e-3


@pytest.mark.parametrize("kind", ["sd3", pytest.param("flux", marks=pytest.mark.slow)])
def test_without_room_for_the_store_the_source_branch_is_recomputed_with_its_own_inputs(runs, sd3, kind):
    """Where the store does not fit (docs/design.md 1.3), the inversion keeps the trajectory and the source's
    conditioning, and each fused step of the edit runs the source's latent beside the target's with the source
    prompt's own inputs as ComfyUI's conditioning path makes them: its tokens, SD3's and Flux's pooled ``y``, Flux's
    guidance. The edit, blend words included, is then the float32 store's. The prompts differ (their pooled vectors
    too), so source rows given the target's pooled vector would not be."""
    from comfy_models import build_flow, build_tiny_flow_clip

    model, clip = sd3 if kind == "sd3" else (build_flow(kind, seed=0), build_tiny_flow_clip(kind, seed=0))
    latent = torch.randn(1, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    stored = invert(runs, model, clip, latent, store_dtype=torch.float32)
    live = invert(runs, model, clip, latent, recompute=True)
    assert live.store.recompute and live.store.nbytes() == 0 < stored.store.nbytes()
    assert rel(live.noise, stored.noise) < 1e-6  # the same inversion, one model call fewer
    (a, _), (b, _) = (edit(runs, model, clip, s, TARGET, True, blend_words="cat, dog") for s in (stored, live))
    assert [w for w in b.warnings if "recomputed beside the target" in w], b.warnings
    assert a.mask is not None and torch.equal(a.mask, b.mask)
    (plain, _) = edit(runs, model, clip, stored, TARGET, False)
    print(kind, "recomputed vs stored:", rel(b.samples, a.samples), "fused vs plain:", rel(a.samples, plain.samples))
    assert rel(b.samples, a.samples) < 1e-5
    assert rel(a.samples, plain.samples) > 1e-3  # the fusion acts


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", ["sd3", "wan"])
def test_half_precision_models_invert_and_edit_as_float32_ones_do(runs, sd3, kind, dtype):
    """On a GPU ComfyUI runs SD3, Flux and Wan in bf16 or fp16 and computes at that dtype (on the CPU it computes in
    float32 from half weights; here it is made to compute as a GPU does). The refined inversion, the store and the
    fused edit then run at the model's dtype: the fused edit stays within 2% of the float32 model's (bf16 on the
    random Wan block: 1%, as its unfused edit), and with blend words the recomputed source branch (a batch of
    another size) gives the store's edit to 5e-3. A blend mask itself is thresholded: half precision flips some of
    its pixels (Wan bf16: 9%), so the masked edits of two dtypes are not compared."""
    import comfy.sd
    from comfy_models import build_flow, build_tiny_flow_clip, flow_latent, flow_state_dict

    model32, clip = sd3 if kind == "sd3" else (build_flow(kind, seed=0), build_tiny_flow_clip(kind, seed=0))
    model = comfy.sd.load_diffusion_model_state_dict(dict(flow_state_dict(kind, 0)), model_options={"dtype": dtype})
    model.model.manual_cast_dtype = None  # compute at the weights' dtype, as on a GPU
    assert model.model.get_dtype() == dtype
    latent = torch.randn(flow_latent(kind).shape, generator=torch.Generator().manual_seed(5))
    float32, half = (edit(runs, m, clip, invert(runs, m, clip, latent), TARGET, True)[0] for m in (model32, model))
    stored, live = (invert(runs, model, clip, latent, recompute=recompute) for recompute in (False, True))
    (a, _), (b, _) = (
        edit(runs, model, clip, source, TARGET, True, blend_words="cat, dog") for source in (stored, live)
    )
    errs = {"half vs float32": rel(half.samples, float32.samples), "recomputed vs stored": rel(b.samples, a.samples)}
    print(kind, dtype, errs)
    assert not [w for w in [*half.warnings, *a.warnings] if "no attention layer" in w or "no recording" in w]
    assert live.store.nbytes() == 0 and [w for w in b.warnings if "recomputed beside the target" in w]
    assert errs["half vs float32"] < 2e-2, errs
    assert errs["recomputed vs stored"] < 5e-3, errs
