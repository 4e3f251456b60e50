"""Randomly initialised ComfyUI models for tests and benchmarks (no weights needed).

Imports ComfyUI, so the caller must have made the host importable and set it to the CPU first
(``devkit.comfyui()`` does both; ``devkit.tiny_models()`` calls it and returns this module).
"""

from __future__ import annotations

import torch


def sd15_unet_config(model_channels: int = 32, context_dim: int = 768, full_size: bool = False) -> dict:
    """An SD1.5-shaped UNet config; ``full_size`` gives the real 320-channel layout."""
    if full_size:
        model_channels = 320
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "model_channels": model_channels,
        "num_res_blocks": [2, 2, 2, 2] if full_size else [1, 1],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0] if full_size else [1, 1],
        "channel_mult": [1, 2, 4, 4] if full_size else [1, 2],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": False,
        "context_dim": context_dim,
        "num_heads": 8,
        "num_head_channels": -1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0] if full_size else [1, 1, 1, 1],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


def build_sd15(
    seed: int = 0,
    model_channels: int = 32,
    context_dim: int = 768,
    full_size: bool = False,
    weight_scale: float = 1.0,
    attn_scale: float = 1.0,
):
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
            scale = weight_scale / fan_in**0.5 if p.dim() > 1 else 0.02 * weight_scale
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
        def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
            if model_options is None:
                model_options = {}
            super().__init__(
                device=device,
                dtype=dtype,
                textmodel_json_config=config,
                model_options=model_options,
                layer="hidden",
                layer_idx=-1,
            )

    target = comfy.supported_models_base.ClipTarget(
        comfy.sd1_clip.SD1Tokenizer, functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=TinyClipModel)
    )
    clip = comfy.sd.CLIP(target=target)
    reset_parameters(clip.cond_stage_model, seed)
    return clip


def build_tiny_vae(seed: int = 0):
    """A real ComfyUI VAE object around a randomly initialised TAESD (4 latent channels, 8x)."""
    import comfy.sd

    return comfy.sd.VAE(sd=tiny_taesd_state_dict(seed))


def tiny_taesd_state_dict(seed: int = 0, latent_channels: int = 4) -> dict:
    """The weights of :func:`build_tiny_vae`'s TAESD (ComfyUI's VAE loader recognises the keys and reads the latent
    channels from them: 16 for SD3's and Flux's latents)."""
    import comfy.taesd.taesd

    from contextdiff.joint_model import reset_parameters

    taesd = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
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
    return {k: v for k, v in taesd.state_dict().items()}


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


# --- Model families: SD2.x, SDXL and its variants (random weights), and single-file checkpoints ---------
#
# Two sizes of each family. In-Python models (``build_family``) have reduced widths for CPU tests.
# Checkpoint files (``save_family_checkpoint``) keep what ComfyUI's ``model_detection`` reads to name
# the family: ``input_blocks.0.0`` 320 channels wide, the context width, linear/conv transformer
# projections, the ADM width and, for SDXL and its variants, the transformer depth of every input res
# block ([0, 0, 2, 2, 10, 10] for SDXL). Detection does not read the channel multipliers, so the files
# keep every level 320 wide (channel_mult 1): an SDXL-format file is then 0.27B parameters, not 2.6B.

SDXL_VARIANTS = {  # ComfyUI class: (transformer depth per input res block, res blocks per level)
    "SDXL": ([0, 0, 2, 2, 10, 10], 2),
    "SSD1B": ([0, 0, 2, 2, 4, 4], 2),
    "Segmind_Vega": ([0, 0, 1, 1, 2, 2], 2),
    "KOALA_700M": ([0, 2, 5], 1),
    "KOALA_1B": ([0, 2, 6], 1),
}


def sdxl_unet_config(variant: str = "SDXL", model_channels: int = 32, channel_mult=(1, 2, 4)) -> dict:
    """An SDXL-family UNet config: dual-encoder context 2048, ADM 2816 (pooled CLIP-G 1280 + six size
    embeddings of 256), linear transformer projections, 64-channel heads and the variant's depths. The
    decoder mirrors each level's depth (SDXL's own [0, 0, 0, 2, 2, 2, 10, 10, 10], middle 10)."""
    depth, res = SDXL_VARIANTS[variant]
    per_level = depth[::res]
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": 2816,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": model_channels,
        "num_res_blocks": [res] * len(per_level),
        "transformer_depth": depth,
        "transformer_depth_output": [d for d in per_level for _ in range(res + 1)],  # finest level first
        "channel_mult": list(channel_mult),
        "transformer_depth_middle": per_level[-1],
        "use_linear_in_transformer": True,
        "context_dim": 2048,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    }


def sd2_unet_config(model_channels: int = 64, checkpoint: bool = False) -> dict:
    """An SD2.x-shaped UNet config (OpenCLIP-H context 1024, linear projections, 64-channel heads).

    ``checkpoint``: 320 channels, four levels of two res blocks with attention on the first three, as
    SD2 has; ComfyUI tells v-prediction from eps by a weight of output block 11's transformer.
    """
    if checkpoint:
        levels, res, depth = 4, 2, [1, 1, 1, 0]
        model_channels = 320
    else:
        levels, res, depth = 2, 1, [1, 1]
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": model_channels,
        "num_res_blocks": [res] * levels,
        "channel_mult": [1] * levels if checkpoint else [1, 2],
        "transformer_depth": [d for d in depth for _ in range(res)],
        "transformer_depth_output": [d for d in depth for _ in range(res + 1)],  # finest level first
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": True,
        "context_dim": 1024,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    }


def family_unet_config(config_name: str, checkpoint: bool = False) -> dict:
    """The UNet config of ComfyUI's ``config_name`` (SD15, SD20, SDXL, SSD1B, ...): small, or detectable."""
    if config_name == "SD15":
        cfg = sd15_unet_config(320 if checkpoint else 32)
        if checkpoint:
            cfg["channel_mult"] = [1, 1]
        return cfg
    if config_name == "SD20":
        return sd2_unet_config(checkpoint=checkpoint)
    if checkpoint:
        return sdxl_unet_config(config_name, 320, (1, 1, 1))
    return sdxl_unet_config(config_name)


def randomize(module: torch.nn.Module, seed: int, weight_scale: float = 1.0, attn_scale: float = 1.0) -> None:
    """Random weights everywhere (a fresh ComfyUI UNet's output convolution is zero), fan-in scaled, with
    sharper attention (``attn_scale`` on queries and keys) so that attention maps carry information."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = max(1, p[0].numel()) if p.dim() > 1 else 1
            scale = weight_scale / fan_in**0.5 if p.dim() > 1 else 0.02 * weight_scale
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
            if name.endswith(("to_q.weight", "to_k.weight")):
                p.mul_(attn_scale)


def build_family(
    config_name: str = "SDXL",
    seed: int = 0,
    prediction: str = "eps",
    zsnr: bool = False,
    checkpoint: bool = False,
    weight_scale: float = 1.0,
    attn_scale: float = 1.0,
):
    """A ``ModelPatcher`` around a random model of ComfyUI's ``config_name`` family (see
    :func:`family_unet_config`), with eps or v prediction and optionally zero terminal SNR."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    model_config = getattr(comfy.supported_models, config_name)(family_unet_config(config_name, checkpoint))
    model_config.set_inference_dtype(torch.float32, None)
    if zsnr:
        model_config.sampling_settings["zsnr"] = True
    model_type = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}[prediction]
    model_class = (
        comfy.model_base.SDXL
        if "adm_in_channels" in model_config.unet_config and model_config.unet_config["adm_in_channels"] == 2816
        else comfy.model_base.BaseModel
    )
    model = model_class(model_config, model_type=model_type)
    randomize(model.diffusion_model, seed, weight_scale, attn_scale)
    model.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def family_conditioning(
    seed: int = 0, context_dim: int = 2048, pooled_dim: int = 1280, tokens: int = 77, batch: int = 1
):
    """A CONDITIONING list like CLIPTextEncode gives for a family: tokens and the pooled embedding."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, tokens, context_dim, generator=gen)
    return [[cond, {"pooled_output": torch.randn(batch, pooled_dim, generator=gen)}]]


def build_tiny_sdxl_clip(seed: int = 0, layers: int = 3):
    """A real ComfyUI SDXL CLIP object: both tokenizers, CLIP-L (768) and CLIP-G (1280, projected pooled
    output) at their true widths with a few random layers (3: SDXL reads the penultimate layer), so
    CLIPTextEncode gives SDXL's 2048-wide tokens and 1280-wide pooled output."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base

    from contextdiff.joint_model import reset_parameters

    small = {"num_hidden_layers": layers, "intermediate_size": 512, "num_attention_heads": 4}
    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    clip = comfy.sd.CLIP(target=target, model_options={"clip_l_model_config": small, "clip_g_model_config": small})
    reset_parameters(clip.cond_stage_model, seed)
    return clip


def save_family_checkpoint(
    path, config_name: str, seed: int = 0, v_pred: bool = False, zsnr: bool = False, dtype: torch.dtype = torch.float16
):
    """Write a single-file checkpoint in the layout CheckpointLoaderSimple reads (``model.diffusion_model.*``
    and a TAESD VAE under ``first_stage_model.*``), detectable as ComfyUI's ``config_name``.

    No text encoders: SDXL's CLIP-L + CLIP-G have fixed sizes in ComfyUI (0.8B parameters, 3.3 GB in fp32),
    too large for CPU tests; the tests connect :func:`build_tiny_sdxl_clip` (same widths) instead.
    ``v_pred``/``zsnr`` add the marker keys ComfyUI reads (SDXL family: ``v_pred``, ``ztsnr``; SD2.x:
    the spread of output block 11's first norm bias).
    """
    from safetensors.torch import save_file

    patcher = build_family(config_name, seed, checkpoint=True)
    state = {f"model.diffusion_model.{k}": v.to(dtype) for k, v in patcher.model.diffusion_model.state_dict().items()}
    del patcher
    if v_pred and config_name == "SD20":
        key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
        state[key] = torch.randn(state[key].shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    elif v_pred:
        state["v_pred"] = torch.tensor([])
        if zsnr:
            state["ztsnr"] = torch.tensor([])
    for k, v in tiny_taesd_state_dict(seed).items():
        state[f"first_stage_model.{k}"] = v.to(dtype)
    save_file(state, str(path))
    return path


def save_sd15_checkpoint(path, seed: int = 0, dtype: torch.dtype = torch.float16):
    """An SD1.5-format single-file checkpoint with random weights, written by ComfyUI's own
    ``comfy.sd.save_checkpoint`` (what the CheckpointSave node writes) and detected as SD15 on load.

    Unlike :func:`save_family_checkpoint` it carries a text encoder, so that the README's real-checkpoint
    commands (trainer ``--checkpoint``, the text-to-image demo) run on it unchanged: ComfyUI's SD1.x
    CLIP-L at its fixed size (123M parameters), the detectable 320-channel UNet of
    ``build_family("SD15", checkpoint=True)`` and the tiny TAESD VAE; about 0.6 GB.
    """
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    from contextdiff.joint_model import reset_parameters

    patcher = build_family("SD15", seed, checkpoint=True)
    clip = comfy.sd.CLIP(
        target=comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    )
    reset_parameters(clip.cond_stage_model, seed)
    vae = comfy.sd.VAE(sd=tiny_taesd_state_dict(seed))
    for module in (patcher.model.diffusion_model, clip.cond_stage_model, vae.first_stage_model):
        module.to(dtype)
    comfy.sd.save_checkpoint(str(path), patcher, clip, vae)
    return path


def save_tiny_digits_checkpoint(path):
    """A small randomly initialised class-conditional joint model (1-channel pixels, 10 classes), written as the
    digits recipe's trainer writes its checkpoint."""
    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from contextdiff.joint_model import ClassEmbedding
    from hostside.joint_checkpoints import save_joint
    from hostside.pixel_unet import build_joint_model, joint_unet_config

    cfg = joint_unet_config(model_channels=32, context_dim=32)
    adapter = ContextAdapter(AdapterConfig(latent_channels=1, context_dim=32, dim=32, depth=1, heads=4))
    return save_joint(path, build_joint_model(cfg, 0), adapter, ClassEmbedding(10, 32), cfg)


def save_tiny_shapes_checkpoint(path, seed: int = 0, recipe: str = "shapes"):
    """A small randomly initialised text-conditioned joint model (3-channel pixels, CLIP text encoder, a live
    adapter), written as the shapes trainer writes its checkpoint; ``recipe`` names the world it claims."""
    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from hostside.joint_checkpoints import save_text_joint
    from hostside.pixel_unet import build_joint_model, joint_unet_config
    from hostside.text_encoder import build_text_clip, text_config

    unet, text = joint_unet_config(3, 32, 64, (1, 2), 1, 4, 1, norm_groups=8, pooled_dim=64), text_config(64, 1, 4)
    torch.manual_seed(seed)
    adapter = ContextAdapter(AdapterConfig(latent_channels=3, context_dim=64, dim=32, depth=1, heads=4, patch_size=4))
    torch.nn.init.normal_(adapter.patch_out.weight, std=0.02)  # a small non-zero bias, like a trained adapter's
    return save_text_joint(
        path, build_joint_model(unet, seed), adapter, build_text_clip(text, seed + 1), unet, text, recipe
    )


# --- Flow-matching families (SD3/SD3.5, Flux, Wan 2.x): tiny DiTs in the real key layouts ---

# ComfyUI class -> the unet config its detection (comfy/model_detection.py) derives from the smallest state dict it
# still names as that family. SD3 (MMDiT): 64 channels per block of depth, head dim 64, depth 2. Flux: detection
# fixes 24 heads of 128 (axes 16+56+56) and an MLP ratio of 4, so the width is the real 3072; one double block, no
# single blocks (about 400M parameters: the Flux tests are marked slow). Wan 2.1 t2v: head dim 128, one head, one
# block. Text widths are the real ones (4096: T5-XXL / umT5-XXL; SD3's CLIP-L/G padded to 4096).
FLOW_MODELS = {
    "sd3": (
        "SD3",
        {
            "in_channels": 16,
            "out_channels": 16,
            "patch_size": 2,
            "depth": 2,
            "input_size": None,
            "adm_in_channels": 2048,
            "context_embedder_config": {
                "target": "torch.nn.Linear",
                "params": {"in_features": 4096, "out_features": 128},
            },
            "num_patches": 1024,
            "pos_embed_max_size": 32,
            "pos_embed_scaling_factor": None,
            "x_block_self_attn_layers": [],
        },
    ),
    "wan": (
        "WAN21_T2V",
        {
            "image_model": "wan2.1",
            "model_type": "t2v",
            "dim": 128,
            "out_dim": 16,
            "num_heads": 1,
            "ffn_dim": 256,
            "num_layers": 1,
            "patch_size": (1, 2, 2),
            "freq_dim": 256,
            "window_size": (-1, -1),
            "qk_norm": True,
            "cross_attn_norm": True,
            "eps": 1e-6,
            "in_dim": 16,
        },
    ),
}
_FLUX = {
    "image_model": "flux",
    "axes_dim": [16, 56, 56],
    "num_heads": 24,
    "mlp_ratio": 4.0,
    "theta": 10000,
    "out_channels": 16,
    "qkv_bias": True,
    "in_channels": 16,
    "hidden_size": 3072,
    "context_in_dim": 4096,
    "patch_size": 2,
    "vec_in_dim": 768,
    "depth": 1,
    "depth_single_blocks": 0,
}
# SD3.5-medium's layout: its first blocks also run an image-only self-attention (MMDiT-X, ``x_block.attn2``).
FLOW_MODELS["sd35m"] = ("SD3", dict(FLOW_MODELS["sd3"][1], x_block_self_attn_layers=[0]))
FLOW_MODELS["flux"] = ("Flux", dict(_FLUX, guidance_embed=True))
FLOW_MODELS["flux_schnell"] = ("FluxSchnell", dict(_FLUX, guidance_embed=False))
# Flux dev with one single-stream block as well (about 510M parameters): the DiT editing tests reach both kinds.
FLOW_MODELS["flux_single"] = ("Flux", dict(_FLUX, guidance_embed=True, depth_single_blocks=1))


def host_flux_fields(unet_config: dict) -> dict:
    """Fields this host's Flux model requires that older hosts lack, with the values its detection gives a Flux
    dev/schnell file: ComfyUI 0.8 added ``txt_ids_dims`` (``[]`` for Flux). Asked of the host's ``FluxParams``, not
    of its version."""
    if unet_config.get("image_model") != "flux":
        return {}
    import dataclasses

    from comfy.ldm.flux.model import FluxParams

    fields = {f.name for f in dataclasses.fields(FluxParams)}
    return {"txt_ids_dims": []} if "txt_ids_dims" in fields and "txt_ids_dims" not in unet_config else {}


def random_weights(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter and saved buffer (ComfyUI's layers skip initialisation: left alone they hold whatever
    memory held): fan-in scaled normals for matrices, small ones for biases, modulations and buffers, 1 + small
    noise for norm scales (so attention and modulation carry signal)."""
    gen = torch.Generator().manual_seed(seed)
    params = {id(p) for p in module.parameters()}
    with torch.no_grad():
        for name, p in module.state_dict(keep_vars=True).items():
            if id(p) not in params:  # a saved buffer (SD3's pos_embed): allocated empty, so filled here too
                if p.is_floating_point():
                    p.normal_(0.0, 0.02, generator=gen)
            elif p.dim() > 1 and "modulation" not in name:
                p.normal_(0.0, 1.0 / max(1, p[0].numel()) ** 0.5, generator=gen)
            elif "norm" in name or name.endswith("scale"):
                p.normal_(1.0, 0.02, generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)


def flow_state_dict(kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-weight diffusion-model state dict of ``kind`` (a :data:`FLOW_MODELS` key) in the key layout of the
    real files (ComfyUI's modules carry the original checkpoints' names), float32."""
    import comfy.supported_models

    config_name, unet_config = FLOW_MODELS[kind]
    unet_config = dict(unet_config, **host_flux_fields(unet_config))
    model_config = getattr(comfy.supported_models, config_name)(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    random_weights(model.diffusion_model, seed)
    return {k: v.contiguous() for k, v in model.diffusion_model.state_dict().items()}


def build_flow(kind: str, seed: int = 0, state_dict: dict | None = None):
    """A ``ModelPatcher`` of a tiny flow model loaded the way UNETLoader loads a file: ComfyUI's detection
    (``comfy.sd.load_diffusion_model_state_dict``) decides the family from the keys and shapes alone."""
    import comfy.sd

    sd = flow_state_dict(kind, seed) if state_dict is None else state_dict
    patcher = comfy.sd.load_diffusion_model_state_dict(dict(sd), model_options={"dtype": torch.float32})
    if patcher is None:
        raise AssertionError(f"ComfyUI's detection did not recognise the tiny {kind} state dict")
    return patcher


def save_flow_model(path, kind: str, seed: int = 0) -> None:
    """Write :func:`flow_state_dict` as a ``.safetensors`` file for UNETLoader (models/diffusion_models)."""
    from safetensors.torch import save_file

    save_file(flow_state_dict(kind, seed), str(path))


def flow_conditioning(kind: str, seed: int = 0, tokens: int = 8, batch: int = 1):
    """CONDITIONING as the family's text encoders give it, at the real widths (no T5-XXL can be built at test
    size): SD3 4096-wide tokens (CLIP-L/G padded + T5) and a 2048 pooled CLIP-L+G; Flux T5 tokens, a 768 pooled
    CLIP-L and (dev) FluxGuidance's 3.5; Wan umT5 tokens only."""
    from contextdiff import families

    family = next(f for f in families.FLOW_FAMILIES if FLOW_MODELS[kind][0] in f.configs)
    gen = torch.Generator().manual_seed(seed)
    extra = {}
    cond = torch.randn(batch, tokens, family.context_dim, generator=gen)
    if family.pooled:
        extra["pooled_output"] = torch.randn(batch, family.pooled_dim, generator=gen)
    if kind in ("flux", "flux_single"):
        extra["guidance"] = 3.5
    return [[cond, extra]]


def flow_latent(kind: str, size: int = 8, frames: int = 3, batch: int = 1) -> torch.Tensor:
    """An empty latent of the family's shape: 16 channels; Wan's has a frame axis (EmptyHunyuanLatentVideo)."""
    if kind == "wan":
        return torch.zeros(batch, 16, frames, size, size)
    return torch.zeros(batch, 16, size, size)


# --- The flow families' text encoders and VAEs, tiny, for the shipped workflows' loaders ---
#
# ComfyUI builds T5-XXL and umT5-XXL at fixed sizes (4.7B parameters; umT5's 256k-row vocabulary alone is 1B at
# width 4096), so no CLIP loader can read a test-size file. The workflows' tests put :func:`build_tiny_flow_clip`
# in place of TripleCLIPLoader / DualCLIPLoader / CLIPLoader: the family's own ComfyUI text-encoder classes and
# tokenizers with few, narrow layers at the real output widths, the T5 ids folded into FLOW_TEXT_ROWS rows.

FLOW_TEXT_ROWS = 1024
FLOW_CLIP = {  # kind -> ComfyUI text-encoder module, tokenizer, model, the T5 stream's name in the tokens
    "sd3": ("sd3_clip", "SD3Tokenizer", "SD3ClipModel", "t5xxl"),
    "flux": ("flux", "FluxTokenizer", "FluxClipModel", "t5xxl"),
    "flux_schnell": ("flux", "FluxTokenizer", "FluxClipModel", "t5xxl"),
    "wan": ("wan", "WanT5Tokenizer", "WanT5Model", "umt5xxl"),
}


def build_tiny_flow_clip(kind: str, seed: int = 0):
    """A real ComfyUI CLIP object for a flow family (``sd3``: CLIP-L, CLIP-G and T5-XXL as TripleCLIPLoader gives;
    ``flux``: CLIP-L and T5-XXL, DualCLIPLoader type flux; ``wan``: umT5-XXL, CLIPLoader type wan), built from the
    family's own ComfyUI classes: CLIPTextEncode gives the real widths (4096-wide tokens; SD3's 2048 and Flux's 768
    pooled outputs). Small: 3 CLIP layers of 4 heads, one T5 layer of 4 heads, T5 token ids folded into
    :data:`FLOW_TEXT_ROWS` embedding rows. Wan's umT5 tokenizer ships inside the real umT5 file (ComfyUI hands its
    ``spiece_model`` to the tokenizer); none is on this machine, so ComfyUI's T5 (Pile) SentencePiece model stands
    in for it, handed over the same way."""
    import importlib
    import os

    import comfy.sd
    import comfy.supported_models_base

    module_name, tokenizer_name, model_name, t5_key = FLOW_CLIP[kind]
    module = importlib.import_module(f"comfy.text_encoders.{module_name}")
    tokenizer_class = getattr(module, tokenizer_name)

    class FoldedTokenizer(tokenizer_class):
        """The family's tokenizer; the T5 ids folded into the tiny T5's embedding rows (pad 0 and end 1 kept)."""

        def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
            out = super().tokenize_with_weights(text, return_word_ids, **kwargs)
            out[t5_key] = [
                [(t % FLOW_TEXT_ROWS if isinstance(t, int) else t, *rest) for t, *rest in batch]
                for batch in out[t5_key]
            ]
            return out

    small_clip = {"num_hidden_layers": 3, "intermediate_size": 512, "num_attention_heads": 4}
    small_t5 = {"num_layers": 1, "d_ff": 256, "num_heads": 4, "d_kv": 64, "vocab_size": FLOW_TEXT_ROWS}
    options = {
        "clip_l_model_config": small_clip,
        "clip_g_model_config": small_clip,
        f"{t5_key}_model_config": small_t5,
        "dtype": torch.float32,
    }
    tokenizer_data = {}
    if kind == "wan":
        pile = os.path.join(os.path.dirname(module.__file__), "t5_pile_tokenizer", "tokenizer.model")
        with open(pile, "rb") as f:
            tokenizer_data["spiece_model"] = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    target = comfy.supported_models_base.ClipTarget(FoldedTokenizer, getattr(module, model_name))
    clip = comfy.sd.CLIP(target=target, tokenizer_data=tokenizer_data, model_options=options)
    random_weights(clip.cond_stage_model, seed)
    return clip


def tiny_flow_vae_state_dict(kind: str, seed: int = 0) -> dict:
    """A VAE file's weights for a flow family, in a layout ComfyUI's VAE loader recognises: a TAESD of 16 latent
    channels for SD3 and Flux (their 8x, 16-channel latents); for Wan 2.1 (and 2.2 14B) its causal 3D VAE with 8
    base channels (the loader reads the width from ``decoder.head.0.gamma``; the real one has 96)."""
    if kind != "wan":
        return tiny_taesd_state_dict(seed, latent_channels=16)
    import comfy.ldm.wan.vae

    vae = comfy.ldm.wan.vae.WanVAE(
        dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]
    )
    random_weights(vae, seed)
    return {k: v.contiguous() for k, v in vae.state_dict().items()}
