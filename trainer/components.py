"""What every training mode builds the same way from its config: the adapter ``r_phi``, the modules
a from-scratch mode optimises, and those that gradient checkpointing wraps."""

from __future__ import annotations

from torch import nn

from contextdiff.adapter import AdapterConfig, ContextAdapter

from .runtime import enable_checkpointing


def build_adapter(cfg, latent_channels: int, context_dim: int, device, video: bool = False) -> ContextAdapter:
    """The adapter of ``--adapter_*`` (Tables 7/8) for latents of ``latent_channels`` and text tokens of
    ``context_dim``; its output projection starts at zero, so a fresh adapter is the base sampler.
    Video adapters add temporal causal attention over ``--temporal_window`` frames."""
    extra = {"video": True, "temporal_window": cfg.options.temporal_window} if video else {}
    return ContextAdapter(
        AdapterConfig(
            latent_channels=latent_channels,
            context_dim=context_dim,
            dim=cfg.adapter_dim,
            depth=cfg.adapter_depth,
            heads=cfg.adapter_heads,
            patch_size=cfg.adapter_patch,
            image_input=cfg.bias_input == "image",
            **extra,
        )
    ).to(device)


def trainable_modules(cfg, model, adapter: ContextAdapter, **conditioners: nn.Module) -> nn.ModuleDict:
    """What a from-scratch mode optimises: the ComfyUI model's UNet, the adapter and the conditioning
    modules (class embedding, text encoder); with ``--grad_checkpointing`` the UNet's and the adapter's
    blocks recompute their activations in backward."""
    if cfg.grad_checkpointing:
        checkpoint_blocks(adapter, model.diffusion_model)
    return nn.ModuleDict({"unet": model.diffusion_model, "adapter": adapter, **conditioners})


def unet_blocks(unet: nn.Module) -> list[nn.Module]:
    """The input, middle and output blocks of a ComfyUI UNet (``openaimodel.UNetModel``)."""
    return list(unet.input_blocks) + [unet.middle_block] + list(unet.output_blocks)


def checkpoint_blocks(adapter: ContextAdapter, unet: nn.Module | None = None) -> None:
    """``--grad_checkpointing``: recompute the adapter's blocks (and the UNet's, when given) in backward."""
    enable_checkpointing(list(adapter.blocks) + (unet_blocks(unet) if unet is not None else []))
