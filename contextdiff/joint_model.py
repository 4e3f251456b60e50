"""The joint models' pure-torch parts: class tokens and seeded initialisation.

The joint model itself is a ComfyUI ``UNetModel`` that predicts ``x0`` (paper Eq. 6) in pixel space; it is
built host-side (``hostside/pixel_unet.py``) and stored with its adapter and conditioning by
``hostside/joint_checkpoints.py``. What needs no ComfyUI stays here.
"""

from __future__ import annotations

import torch


def reset_parameters(module: torch.nn.Module, seed: int) -> None:
    """torch's default initialisation for every layer, including ComfyUI's init-skipping ones."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in module.modules():
            for cls in type(m).__mro__:
                if cls.__module__.startswith("torch.nn") and "reset_parameters" in cls.__dict__:
                    cls.reset_parameters(m)
                    break
    finally:
        torch.random.set_rng_state(gen_state)


class ClassEmbedding(torch.nn.Module):
    """Class labels as conditioning tokens; index ``num_classes`` is the null (unconditional) class."""

    def __init__(self, num_classes: int, context_dim: int, tokens: int = 1):
        super().__init__()
        self.num_classes, self.tokens = num_classes, tokens
        self.embed = torch.nn.Embedding(num_classes + 1, context_dim * tokens)
        torch.nn.init.normal_(self.embed.weight, std=1.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embed(labels).reshape(labels.shape[0], self.tokens, -1)
