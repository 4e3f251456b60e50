"""Trainer ``--base_factory`` bundles for the model-family tests.

The family checkpoints (tests/comfy_models.py ``save_family_checkpoint``) load through ComfyUI's own
loader, the one ``--checkpoint`` uses; they carry no text encoder (SDXL's are 0.8B parameters at fixed
sizes), so the tiny dual-encoder SDXL CLIP stands in for it, with SDXL's true widths.
"""

from comfy_models import build_tiny_sdxl_clip


def checkpoint_with_tiny_sdxl_clip(cfg, device):
    from trainer.base_model import from_comfy, load_checkpoint

    patcher, clip, vae = load_checkpoint(cfg.checkpoint)
    assert clip is None, "the family test checkpoints carry no text encoder"
    return from_comfy(patcher, build_tiny_sdxl_clip(0), vae, device, source=cfg.checkpoint)
