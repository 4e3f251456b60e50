"""A tiny base-model bundle for the trainer's ``--base_factory`` (no checkpoint, no weights).

The text encoder maps each caption to fixed random tokens (seeded by the caption), the "VAE"
average-pools 8x8 pixels and projects RGB to 4 channels: enough to exercise every code path.
"""

import os
import zlib
from pathlib import Path

import torch
from comfy_models import build_sd15


def tiny_sd15(cfg, device):
    from trainer.base_model import BaseBundle

    model = build_sd15(0, 32, 768).model.to(device)
    proj = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))

    def encode_text(caption):
        g = torch.Generator().manual_seed(zlib.crc32(caption.encode()))
        return torch.randn(1, 77, 768, generator=g).to(device)

    def encode_images(pixels):
        x = torch.nn.functional.avg_pool2d(pixels.permute(0, 3, 1, 2), 8) * 2 - 1
        return torch.einsum("oc,bchw->bohw", proj, x).to(device)

    return BaseBundle(model, encode_text, encode_images, "sd15")


def counting_sd15(cfg, device):
    """:func:`tiny_sd15` whose image encoder appends the number of pictures of each call to the file
    ``$CONTEXTDIFF_TEST_ENCODE_LOG``: what a run really VAE-encodes."""
    bundle = tiny_sd15(cfg, device)
    log = Path(os.environ["CONTEXTDIFF_TEST_ENCODE_LOG"])
    encode = bundle.encode_images

    def counted(pixels):
        with open(log, "a") as f:
            f.write(f"{pixels.shape[0]}\n")
        return encode(pixels)

    bundle.encode_images = counted
    return bundle
