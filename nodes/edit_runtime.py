"""Inversion and editing runs on ComfyUI models: the attention hooks on a clone, the sampler calls.

The user's model is never touched: every run patches ``model.clone()``, whose patches vanish with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..contextdiff.attention import AttentionEditor, AttentionStore, token_alignment
from ..contextdiff.editing import StepIndex, fused_steps, latent_blend, trajectory_recorder
from .sampler_function import INVERT, contextdiff_ksampler


@dataclass
class EditSource:
    """What inversion hands to editing: the noise, the recorded attention and trajectory."""

    noise: torch.Tensor            # inverted x_T as unit-variance noise (model space), ComfyUI's noise convention
    store: AttentionStore
    sigmas: torch.Tensor           # descending sampling schedule, ends at 0
    latent_shape: tuple
    frames: int | None
    fuse_start: float
    extra: dict = field(default_factory=dict)


def attention_layers(diffusion_model) -> list[tuple[str, int, int]]:
    """ComfyUI's replace-patch keys ``(block, number, transformer_index)`` of every attention block."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    keys = []
    for name, module in diffusion_model.named_modules():
        if not isinstance(module, BasicTransformerBlock):
            continue
        parts = name.split(".")
        if parts[0] == "middle_block":
            block, number = "middle", 0
        elif parts[0] in ("input_blocks", "output_blocks"):
            block, number = parts[0].split("_")[0], int(parts[1])
        else:
            continue
        keys.append((block, number, int(parts[parts.index("transformer_blocks") + 1])))
    return keys


def patched(model, editor: AttentionEditor):
    m = model.clone()
    for block, number, index in attention_layers(m.model.diffusion_model):
        m.set_model_attn1_replace(editor.self_attention, block, number, index)
        m.set_model_attn2_replace(editor.cross_attention, block, number, index)
    return m


def schedule(model, scheduler: str, steps: int) -> torch.Tensor:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def _negative_or_empty(positive, negative):
    if negative is not None:
        return negative
    return [[torch.zeros_like(c), {k: v for k, v in d.items() if k != "pooled_output"}] for c, d in positive]


def invert(model, latent: dict, positive, negative=None, steps: int = 20, scheduler: str = "ddim_uniform",
           cfg: float = 1.0, adapter=None, strength: float = 1.0, refine_steps: int = 0, fuse_start: float = 0.5,
           store_dtype=torch.float16, store_maps: bool = False, frames: int | None = None) -> EditSource:
    """Bias-aware DDIM inversion of ``latent`` with the source attention recorded."""
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    sigmas = schedule(model, scheduler, steps)
    step_of = StepIndex(sigmas)
    store = AttentionStore(fused_steps(steps, fuse_start), store_maps=store_maps, dtype=store_dtype,
                           device=comfy.model_management.intermediate_device())
    editor = AttentionEditor(store, "record", step_of, frames=frames)
    sampler = contextdiff_ksampler(adapter, INVERT, 0.0, strength, frames,
                                   trajectory=trajectory_recorder(store.latents, step_of), refine_steps=refine_steps)
    callback = latent_preview.prepare_callback(model, steps)
    out = comfy.sample.sample_custom(patched(model, editor), torch.zeros_like(samples), cfg, sampler,
                                     sigmas.flip(0), positive, _negative_or_empty(positive, negative), samples,
                                     callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
    base = model.model
    x_top = base.process_latent_in(out)   # undo the guider's process_latent_out: this is noise, not an image
    noise = x_top / noise_scale(model, sigmas[0])
    return EditSource(noise=noise.cpu(), store=store, sigmas=sigmas, latent_shape=tuple(samples.shape),
                      frames=frames, fuse_start=fuse_start, extra={"cfg": cfg, "steps": steps})


def noise_scale(model, sigma: torch.Tensor) -> torch.Tensor:
    """The factor ComfyUI's KSAMPLER puts on unit noise at ``sigma`` (see ``KSAMPLER.max_denoise``),
    so that the edit sampler starts from exactly the inverted latent."""
    sigma_max = float(model.get_model_object("model_sampling").sigma_max)
    at_max = math.isclose(sigma_max, float(sigma), rel_tol=1e-05) or float(sigma) > sigma_max
    return (1.0 + sigma ** 2).sqrt() if at_max else sigma


def token_ids(clip, text: str) -> list[int]:
    """Token ids of the first encoder and chunk, as the cross-attention keys see them."""
    tokens = clip.tokenize(text)
    first = tokens[sorted(tokens)[0]] if isinstance(tokens, dict) else tokens
    return [int(t[0]) for t in first[0]]


def word_positions(clip, prompt_ids: list[int], words: str) -> list[int]:
    """Positions of the tokens of ``words`` (comma or space separated) in a tokenised prompt."""
    found = []
    for word in [w for chunk in words.split(",") for w in chunk.split()]:
        ids = [i for i in token_ids(clip, word) if i not in (prompt_ids[0], prompt_ids[-1])][:4]
        for pos in range(len(prompt_ids)):
            if ids and prompt_ids[pos:pos + len(ids)] == ids:
                found.extend(range(pos, pos + len(ids)))
    return sorted(set(found))


def edit(model, source: EditSource, positive, negative=None, cfg: float = 7.5, adapter=None, strength: float = 1.0,
         clip=None, source_prompt: str = "", target_prompt: str = "", blend_words: str = "",
         blend_threshold: float = 0.3, fuse: bool = True):
    """Sample from the inverted noise with the target prompt, fusing the source attention.

    Returns ``(latents, mask)``: the mask (latent size, 1 = edited) is ``None`` without blend words.
    """
    shared, blend_tgt, blend_src = [], [], []
    if blend_words.strip() and clip is None:
        raise ValueError("blend_words need the clip input (to find the words' tokens): connect the CLIP, or clear "
                         "blend_words")
    if clip is not None and source_prompt and target_prompt:
        src_ids, tgt_ids = token_ids(clip, source_prompt), token_ids(clip, target_prompt)
        shared = token_alignment(src_ids, tgt_ids)
        if blend_words.strip():
            blend_tgt = word_positions(clip, tgt_ids, blend_words)
            blend_src = word_positions(clip, src_ids, blend_words)
            if not blend_tgt and not blend_src:
                raise ValueError(f"none of the blend words {blend_words!r} occurs in the source or target prompt; "
                                 "use words from the prompts (e.g. the object being replaced)")
    step_of = StepIndex(source.sigmas)
    editor = AttentionEditor(source.store, "fuse" if fuse else "plain", step_of, frames=source.frames,
                             shared_tokens=shared, blend_target=blend_tgt, blend_source=blend_src)
    post = latent_blend(editor, source.store.latents, step_of, blend_threshold) if fuse and (blend_tgt or blend_src) \
        else None
    sampler = contextdiff_ksampler(adapter, "ddim", 0.0, strength, source.frames, post_step=post)
    steps = len(source.sigmas) - 1
    callback = latent_preview.prepare_callback(model, steps)
    zeros = torch.zeros(source.latent_shape)
    out = comfy.sample.sample_custom(patched(model, editor), source.noise.clone(), cfg, sampler, source.sigmas,
                                     positive, _negative_or_empty(positive, negative), zeros, callback=callback,
                                     disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
    mask = editor.blend_mask(tuple(source.latent_shape[-2:]), blend_threshold) if post is not None else None
    return out, mask


def mask_image(mask: torch.Tensor | None, samples: torch.Tensor) -> torch.Tensor:
    """A latent-size mask as a ComfyUI MASK at image size (8x); all ones when nothing was masked."""
    b, _, h, w = samples.shape
    if mask is None:
        return torch.ones(b, h * 8, w * 8)
    up = torch.nn.functional.interpolate(mask.float().cpu(), scale_factor=8, mode="nearest")[:, 0]
    return up.expand(b, -1, -1) if up.shape[0] == 1 else up
