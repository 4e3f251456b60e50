"""A small text encoder of CLIP architecture with CLIP's BPE tokenizer, made of ComfyUI's own classes.

The encoder is ``comfy.sd1_clip.SDClipModel`` (the CLIP text transformer SD1.x uses) with a small
config, its tokenizer is ``comfy.sd1_clip.SDTokenizer`` with the CLIP vocabulary ComfyUI ships,
and both are wrapped as a ``comfy.sd.CLIP``: the core CLIPTextEncode node, prompt weights such as
``(red:1.3)``, long-prompt chunking and the edit nodes' word alignment run exactly as they do for
an SD checkpoint. The functions import ``comfy`` when called.
"""

from __future__ import annotations

import functools
import json
import os
from typing import TYPE_CHECKING

import torch

from .method import joint_model

if TYPE_CHECKING:  # annotations only: the functions import ComfyUI when called
    from comfy.sd import CLIP

TEXT_KEY = "l"  # the SD1.x layout: tokens come as {"l": [...]}, weights live under clip_l
# Bounds on a checkpoint's text config, checked before anything is built; the vocabulary and the 77
# positions are CLIP's tokenizer's.
TEXT_LIMITS = {
    "hidden_size": (1, 4096),
    "num_hidden_layers": (1, 64),
    "num_attention_heads": (1, 256),
    "intermediate_size": (1, 65536),
    "projection_dim": (1, 4096),
    "vocab_size": (49408, 49408),
    "max_position_embeddings": (77, 77),
}


def text_config(width: int = 128, layers: int = 2, heads: int = 4, mlp_ratio: int = 4) -> dict:
    """CLIP-L's text config (ComfyUI's ``sd1_clip_config.json``) at a smaller width and depth.

    Vocabulary (49,408 BPE tokens), 77 positions, quick-GELU and the start/end tokens stay CLIP's.
    """
    import comfy.sd1_clip

    if width % heads:
        raise ValueError(f"text width {width} must be divisible by its heads {heads}")
    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        config = json.load(f)
    config.update(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=width * mlp_ratio,
        projection_dim=width,
    )
    config.pop("_name_or_path", None)
    return config


def text_model_class(config: dict, **layer: object) -> type:
    """ComfyUI's SD1.x CLIP text model (``comfy.sd1_clip.SDClipModel``) with the text config ``config``.

    ``layer`` picks the output as ``SDClipModel`` does; the default, ``layer="last"`` without the projected
    pooled output, is the final layer-normed hidden states, as SD1.x uses its CLIP.
    """
    import comfy.sd1_clip

    options = {"layer": "last", "return_projected_pooled": False, **layer}

    class TextModel(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
            super().__init__(
                device=device,
                dtype=dtype,
                textmodel_json_config=dict(config),
                model_options=model_options or {},
                **options,
            )

    return TextModel


def empty_text_transformer(config: dict) -> torch.nn.Module:
    """The text transformer of ``build_text_clip(config)`` on the meta device: its shapes, nothing allocated."""
    with torch.device("meta"):
        return text_model_class(config)(device="meta").transformer


def build_text_clip(config: dict, init_seed: int | None = 0, dtype: torch.dtype = torch.float32) -> CLIP:
    """A ``comfy.sd.CLIP`` around a fresh text transformer of ``config`` (torch's default init, seeded).

    ``init_seed=None`` leaves the weights uninitialised, for loading a checkpoint into.
    """
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    width = config["hidden_size"]
    tokenizer = functools.partial(
        comfy.sd1_clip.SD1Tokenizer,
        clip_name=TEXT_KEY,
        tokenizer=functools.partial(comfy.sd1_clip.SDTokenizer, embedding_size=width),
    )
    target = comfy.supported_models_base.ClipTarget(
        tokenizer,
        functools.partial(comfy.sd1_clip.SD1ClipModel, clip_name=TEXT_KEY, clip_model=text_model_class(config)),
    )
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": dtype})
    if init_seed is not None:
        joint_model.reset_parameters(text_transformer(clip), init_seed)
    return clip


def text_transformer(clip: CLIP) -> torch.nn.Module:
    """The trainable CLIP text transformer inside a :func:`build_text_clip` object."""
    return getattr(clip.cond_stage_model, f"clip_{TEXT_KEY}").transformer


def token_ids(clip: CLIP, captions: list[str]) -> list[list[int]]:
    """The first 77-token window of each caption, as CLIPTextEncode tokenises it (weights dropped)."""
    out = []
    for text in captions:
        first = clip.tokenize(text)[TEXT_KEY][0]
        out.append([int(token) for token, *_ in first])
    return out


def encode_batch(clip: CLIP, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (B, 77, width), pooled (B, width))`` of a batch of captions, differentiable (for training).

    ComfyUI's ``CLIPLayer`` adds its residuals in place (it is inference code), which autograd
    refuses; this runs the same submodules of the same transformer with out-of-place residuals: the
    computation of ``SDClipModel`` with ``layer="last"``, and its unprojected pooled output (the state at
    the first end token), which CLIPTextEncode puts in ``pooled_output`` (tests compare both).
    Prompt weights are a host feature and are not applied here (training captions have none).
    """
    return encode_token_ids(clip, torch.tensor(token_ids(clip, captions)))


def encode_token_ids(clip: CLIP, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`encode_batch` of captions already tokenised by :func:`token_ids` (``ids``: (B, 77) integers, on
    any device), for a trainer that tokenises each caption once."""
    from comfy.ldm.modules.attention import optimized_attention_for_device

    text = text_transformer(clip).text_model
    device = text.embeddings.token_embedding.weight.device
    ids = ids.to(device, non_blocking=True)
    x = text.embeddings(ids, dtype=torch.float32)
    n = x.shape[1]
    causal = torch.full((n, n), -torch.finfo(x.dtype).max, dtype=x.dtype, device=device).triu_(1)
    attention = optimized_attention_for_device(device, mask=True, small_input=True)
    for layer in text.encoder.layers:
        x = x + layer.self_attn(layer.layer_norm1(x), causal, attention)
        x = x + layer.mlp(layer.layer_norm2(x))
    x = text.final_layer_norm(x)
    first_end = (ids == text.eos_token_id).int().argmax(dim=1)
    return x, x[torch.arange(len(ids), device=device), first_end]
