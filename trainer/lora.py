"""Optional LoRA on the frozen UNet's attention, saved in the format ComfyUI's LoRA loaders read."""

from __future__ import annotations

import torch
from torch import nn

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class LoRALinear(nn.Module):
    """``base(x) + up(down(x)) * alpha / rank``, ``up`` zero-initialised (starts as the base)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        self.base = base
        self.rank, self.alpha = rank, float(alpha if alpha is not None else rank)
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x.to(self.down.weight.dtype))).to(x.dtype) * (self.alpha / self.rank)


def add_lora(diffusion_model: nn.Module, rank: int) -> dict[str, LoRALinear]:
    """Wrap every attention projection; returns ``{path: LoRALinear}`` (paths inside the UNet)."""
    found = {}
    for name, _ in list(diffusion_model.named_modules()):
        if not (name.endswith("attn1") or name.endswith("attn2")):
            continue
        for target in TARGETS:
            parent, _, leaf = f"{name}.{target}".rpartition(".")
            holder = diffusion_model.get_submodule(parent)
            base = getattr(holder, leaf) if not leaf.isdigit() else holder[int(leaf)]
            if isinstance(base, LoRALinear) or not isinstance(base, nn.Linear):
                continue
            lora = LoRALinear(base, rank).to(base.weight.device)
            if leaf.isdigit():
                holder[int(leaf)] = lora
            else:
                setattr(holder, leaf, lora)
            found[f"{name}.{target}"] = lora
    return found


def lora_state_dict(loras: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """Keys ``diffusion_model.<path>.lora_down.weight`` etc.: ComfyUI's generic LoRA naming."""
    out = {}
    for path, m in loras.items():
        key = f"diffusion_model.{path}"
        out[f"{key}.lora_down.weight"] = m.down.weight.detach().float().cpu()
        out[f"{key}.lora_up.weight"] = m.up.weight.detach().float().cpu()
        out[f"{key}.alpha"] = torch.tensor(m.alpha)
    return out
