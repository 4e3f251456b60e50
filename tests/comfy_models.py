"""Randomly initialised ComfyUI models for tests and benchmarks (no weights needed).

Imports ComfyUI, so the caller must have put the host on ``sys.path`` and set it to the CPU
(``tests/host.py`` does both).
"""

from __future__ import annotations

import torch


def sd15_unet_config(model_channels: int = 32, context_dim: int = 768, full_size: bool = False) -> dict:
    """An SD1.5-shaped UNet config; ``full_size`` gives the real 320-channel layout."""
    if full_size:
        model_channels = 320
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": model_channels,
        "num_res_blocks": [2, 2, 2, 2] if full_size else [1, 1],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0] if full_size else [1, 1],
        "channel_mult": [1, 2, 4, 4] if full_size else [1, 2],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": context_dim,
        "num_heads": 8, "num_head_channels": -1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0] if full_size else [1, 1, 1, 1],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def build_sd15(seed: int = 0, model_channels: int = 32, context_dim: int = 768, full_size: bool = False,
               weight_scale: float = 1.0, attn_scale: float = 1.0):
    """A ``ModelPatcher`` around an SD1.5-family model with random weights (deterministic per seed).

    The output convolution of a fresh ComfyUI UNet is zero-initialised; random weights everywhere
    (scaled by ``weight_scale``) make the denoiser a non-trivial function of its inputs;
    ``attn_scale`` multiplies the query and key projections.
    """
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    cfg = sd15_unet_config(model_channels, context_dim, full_size)
    model_config = comfy.supported_models.SD15(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            fan_in = max(1, p[0].numel()) if p.dim() > 1 else 1
            scale = weight_scale / fan_in ** 0.5 if p.dim() > 1 else 0.02 * weight_scale
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
        # Sharper attention than random projections give, so that attention maps carry information
        # (editing tests need peaked cross-attention, as trained models have).
        for name, p in model.diffusion_model.named_parameters():
            if name.endswith(("to_q.weight", "to_k.weight")):
                p.mul_(attn_scale)
    model.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def random_conditioning(seed: int = 0, tokens: int = 77, context_dim: int = 768, batch: int = 1):
    """A CONDITIONING list like CLIPTextEncode gives: ``[[tokens, {"pooled_output": ...}]]``."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, tokens, context_dim, generator=gen)
    return [[cond, {"pooled_output": torch.randn(batch, context_dim, generator=gen)}]]


def build_tiny_clip(seed: int = 0, layers: int = 2):
    """A real ComfyUI CLIP object (SD1.x tokenizer, CLIP-L text model of width 768) with a few
    random layers: CLIPTextEncode, tokenisation and prompts work as with real weights."""
    import functools
    import json
    import os

    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    from contextdiff.joint_model import reset_parameters

    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        config = json.load(f)
    config.update(num_hidden_layers=layers, intermediate_size=512, num_attention_heads=4)

    class TinyClipModel(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, textmodel_json_config=config, model_options=model_options,
                             layer="hidden", layer_idx=-1)

    target = comfy.supported_models_base.ClipTarget(
        comfy.sd1_clip.SD1Tokenizer, functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=TinyClipModel))
    clip = comfy.sd.CLIP(target=target)
    reset_parameters(clip.cond_stage_model, seed)
    return clip


def build_tiny_vae(seed: int = 0):
    """A real ComfyUI VAE object around a randomly initialised TAESD (4 latent channels, 8x)."""
    import comfy.sd
    import comfy.taesd.taesd

    from contextdiff.joint_model import reset_parameters

    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    reset_parameters(taesd, seed)
    # Random TAESD layers shrink the signal; rescale the last convolutions so that latents have
    # SD's scale (std ~5, i.e. 1 / 0.18215) and decoded images vary with them (std ~0.25).
    probe = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        enc_last, dec_last = taesd.taesd_encoder[-1], taesd.taesd_decoder[-1]
        lat = taesd.encode(probe * 2 - 1)
        enc_last.weight.mul_(5.0 / lat.std())
        enc_last.bias.mul_(5.0 / lat.std())
        out = taesd.decode(taesd.encode(probe * 2 - 1))
        dec_last.weight.mul_(1.5 / out.std())
        dec_last.bias.zero_()
    state = {k: v for k, v in taesd.state_dict().items()}
    return comfy.sd.VAE(sd=state)


def build_tiny_controlnet(seed: int = 0, model_channels: int = 32, context_dim: int = 768):
    """A ComfyUI CONTROL_NET for :func:`build_sd15`'s UNet, random weights (zero convs included,
    so that the control visibly changes the sample)."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management
    import comfy.ops

    from contextdiff.joint_model import reset_parameters

    cfg = sd15_unet_config(model_channels, context_dim)
    for key in ("out_channels", "transformer_depth_output", "use_temporal_attention", "use_temporal_resblock"):
        cfg.pop(key)
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, **cfg)
    reset_parameters(net, seed)
    return comfy.controlnet.ControlNet(net, load_device=comfy.model_management.get_torch_device())
