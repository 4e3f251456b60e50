"""The context-aware adapter ``r_phi(x0, c, t)``: a cross-modal relational network (paper §3.1, §4.1-4.2).

Visual tokens come from the latent ``x0`` itself (patchified; docs/design.md §2: a CLIP image embedding
of the decoded ``x0hat`` at every step would cost more than the whole sampler budget), text tokens
are the CONDITIONING the base model already uses. A stack of transformer blocks relates them:
spatial self-attention, optional temporal causal attention over a window of frames (video,
Table 8), cross-attention to the text (8 heads, Tables 7/8) and an MLP, all told the timestep.
The output projection starts at zero, so a fresh adapter leaves sampling exactly unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# Largest |r_phi| a sampler accepts. Latents are of order 1 (SD's scaled latents, pixels in [-1, 1]) and
# b_t = k_t r with k_t <= 1/4, so a larger output can only wreck the sample (a diverged or damaged adapter).
MAX_OUTPUT = 1e4


def bounded(default: float, low: float, high: float) -> Any:
    """A hyper-parameter with its default and its inclusive bounds: far above any adapter worth training (the paper's
    has dim 256-1024, depth 4, 8 heads), low enough that a forged file cannot make us build a giant."""
    return field(default=default, metadata={"bounds": (low, high)})


@dataclass(frozen=True)
class AdapterConfig:
    """Architecture hyper-parameters; stored in every adapter file's metadata."""

    latent_channels: int = bounded(4, 1, 64)
    context_dim: int = bounded(768, 1, 16384)  # SD1.x 768, SD2.x 1024, SDXL 2048
    dim: int = bounded(256, 2, 8192)
    depth: int = bounded(4, 1, 128)  # transformer blocks (Tables 7/8)
    heads: int = bounded(8, 1, 256)  # attention heads (paper §4.1)
    patch_size: int = bounded(2, 1, 16)
    mlp_ratio: float = bounded(4.0, 0.0, 16.0)
    video: bool = False  # adds temporal causal attention
    temporal_window: int = bounded(3, 1, 64)  # frames each frame attends to, itself included (Table 8)
    # False: r_phi(c, t) reads no image (its visual tokens are the patch grid's positions alone), so no image can leak
    # into x_t and sampling computes the very bias training used (issue 20; docs/bias_leak.md).
    image_input: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AdapterConfig:
        if not isinstance(d, dict):
            raise ValueError(f"adapter hyper-parameters must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown adapter hyper-parameters {sorted(unknown)}")
        return cls(**d)

    def __post_init__(self):
        # Checked before any module is built: a bad value must never reach a layer constructor.
        for f in fields(self):
            if "bounds" not in f.metadata:
                continue
            (low, high), name, value = f.metadata["bounds"], f.name, getattr(self, f.name)
            if isinstance(f.default, float):  # mlp_ratio: a ratio, 0 excluded
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low < value <= high
                span = f"a number in ({low:g}, {high:g}]"
            else:
                ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
                span = f"an integer in {low}..{high}"
            if not ok:
                raise ValueError(f"adapter hyper-parameter {name}={value!r} must be {span}")
        for flag in ("video", "image_input"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"adapter hyper-parameter {flag}={getattr(self, flag)!r} must be true or false")
        if self.dim % 2 or self.dim % self.heads:
            # Even: the sinusoidal timestep embedding has dim/2 frequencies; attention splits dim over heads.
            raise ValueError(
                f"adapter hyper-parameter dim={self.dim} must be even and a multiple of heads={self.heads}"
            )

    def hidden_mlp(self) -> int:
        """Width of each block's MLP."""
        return max(1, int(self.dim * self.mlp_ratio))


def match_text_batch(text: torch.Tensor, batch: int) -> torch.Tensor:
    """Conditioning ``(P, L, D)`` for a latent batch of ``batch``, exactly as ComfyUI's samplers do it.

    ComfyUI (``comfy.utils.repeat_to_batch_size``, applied to every cond in ``comfy/conds.py``)
    tiles the prompts over the batch and cuts at ``batch``: latent ``i`` is denoised with prompt
    ``i % P``, and a larger conditioning batch is cut to its first ``batch`` entries. The bias must
    read the prompt the denoiser reads.
    """
    p = text.shape[0]
    if p == batch:
        return text
    if p > batch:
        return text[:batch]
    if p == 1:
        return text.expand(batch, *text.shape[1:])
    return text.repeat(-(-batch // p), *([1] * (text.dim() - 1)))[:batch]


def frames_as_batch(x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A video latent ``(B, C, F, H, W)`` (Wan's) as the adapter reads it: ``(B F, C, H, W)``, each clip's frames in
    order, with per-clip conditioning ``(B, L, D)`` repeated for each frame (other batches are tiled as ComfyUI tiles
    them, :func:`match_text_batch`); returns ``(frames, text, F)``. :func:`frames_as_clips` undoes it."""
    b, c, n, h, w = x.shape
    text = text.repeat_interleave(n, 0) if text.shape[0] == b else text
    return x.movedim(2, 1).reshape(b * n, c, h, w), text, n


def frames_as_clips(r: torch.Tensor, frames: int) -> torch.Tensor:
    """``(B F, C, H, W)`` back to the video latent layout ``(B, C, F, H, W)``."""
    bn, c, h, w = r.shape
    return r.reshape(bn // frames, frames, c, h, w).movedim(1, 2)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a continuous training timestep ``t`` (0 .. 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def grid_position_embedding(h: int, w: int, dim: int, device: torch.device | str) -> torch.Tensor:
    """Fixed 2D sine-cosine positions for an ``h x w`` token grid, any size: ``(h*w, dim)``."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        ang = coord[:, None] * omega[None]
        parts += [ang.sin(), ang.cos()]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


class Attention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention``; ``kv_dim`` for cross-attention."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(self.to_kv(context), "b m (two h d) -> two b h m d", two=2, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


def causal_window_mask(frames: int, window: int, device: torch.device | str) -> torch.Tensor:
    """Boolean ``(frames, frames)``: frame i sees frames ``i-window+1 .. i`` (True = attend)."""
    i = torch.arange(frames, device=device)
    d = i[:, None] - i[None, :]
    return (d >= 0) & (d < window)


class AdapterBlock(nn.Module):
    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        d = cfg.dim
        self.time_proj = nn.Linear(d, d)
        self.norm_self = nn.LayerNorm(d)
        self.self_attn = Attention(d, cfg.heads)
        self.temporal = None
        if cfg.video:
            self.norm_temporal = nn.LayerNorm(d)
            self.temporal = Attention(d, cfg.heads)
            self.window = cfg.temporal_window
        self.norm_cross = nn.LayerNorm(d)
        self.cross_attn = Attention(d, cfg.heads, kv_dim=cfg.context_dim)
        self.norm_mlp = nn.LayerNorm(d)
        hidden = cfg.hidden_mlp()
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, frames: int) -> torch.Tensor:
        x = x + self.time_proj(temb)[:, None]
        x = x + self.self_attn(self.norm_self(x))
        if self.temporal is not None and frames > 1:
            # Each spatial token attends over its own position in the current and previous frames.
            n = x.shape[1]
            seq = rearrange(self.norm_temporal(x), "(s f) n d -> (s n) f d", f=frames)
            mask = causal_window_mask(frames, self.window, x.device)
            out = self.temporal(seq, mask=mask)
            x = x + rearrange(out, "(s n) f d -> (s f) n d", n=n)
        x = x + self.cross_attn(self.norm_cross(x), text)
        return x + self.mlp(self.norm_mlp(x))


class ContextAdapter(nn.Module):
    """``r_phi(x0, c, t)``: a bias of the shape of ``x0`` from the latent, text tokens and timestep.

    ``x0``: ``(B, C, H, W)`` latent, any ``H, W`` (padded to the patch size, cropped back).
    ``text``: ``(B or 1, L, context_dim)`` CONDITIONING tokens. ``t``: ``(B,)`` training timesteps.
    In video mode the batch is ``frames`` consecutive frames of each clip (ComfyUI's convention:
    frames are batch entries); ``frames=None`` treats the whole batch as one clip.
    """

    def __init__(self, cfg: AdapterConfig = AdapterConfig(), source: str = "the ContextDiff adapter"):
        super().__init__()
        self.cfg = cfg
        self.source = source  # what error messages call it: load_adapter names the file
        p, c, d = cfg.patch_size, cfg.latent_channels, cfg.dim
        self.patch_in = nn.Linear(c * p * p, d)
        self.time_embed = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(AdapterBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d)
        self.patch_out = nn.Linear(d, c * p * p)
        # Zero output: a fresh adapter gives r = 0, i.e. exactly the base sampler.
        nn.init.zeros_(self.patch_out.weight)
        nn.init.zeros_(self.patch_out.bias)

    def forward(self, x0: torch.Tensor, text: torch.Tensor, t: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        cfg = self.cfg
        if x0.dim() != 4 or x0.shape[1] != cfg.latent_channels:
            raise ValueError(f"adapter expects latents (B, {cfg.latent_channels}, H, W), got {tuple(x0.shape)}")
        if text.shape[-1] != cfg.context_dim:
            raise ValueError(
                f"adapter was built for context dim {cfg.context_dim}, the conditioning has {text.shape[-1]}"
            )
        b, _, h, w = x0.shape
        p = cfg.patch_size
        frames = b if frames is None else frames
        if cfg.video and b % frames:
            raise ValueError(f"batch {b} is not a whole number of {frames}-frame clips")
        ph, pw = -h % p, -w % p
        x = x0 if cfg.image_input else torch.zeros_like(x0)
        x = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        dtype = self.patch_in.weight.dtype
        tokens = self.patch_in(rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p).to(dtype))
        tokens = tokens + grid_position_embedding(gh, gw, cfg.dim, x.device).to(tokens.dtype)
        temb = self.time_embed(
            timestep_embedding(t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(-1), cfg.dim).to(dtype)
        )
        text = match_text_batch(text.to(dtype), b)
        for block in self.blocks:
            tokens = block(tokens, text, temb, frames if cfg.video else 1)
        out = self.patch_out(self.norm_out(tokens))
        out = rearrange(out, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=gh, w=gw, p1=p, p2=p)
        return out[..., :h, :w].to(x0.dtype)

    def pair(
        self,
        x0: torch.Tensor,
        text: torch.Tensor,
        t_pair: torch.Tensor,
        frames: int | None = None,
        check: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r(x0, c, t_a), r(x0, c, t_b))`` from one batched call (the two ends of a step).

        ``check`` refuses a non-finite or absurd output at once (one host read); the samplers pass ``False``
        and check the bound at the end of the run instead (:class:`contextdiff.bias.RunBias`).
        """
        b = x0.shape[0]
        t = torch.cat([t_pair[0].reshape(1).expand(b), t_pair[1].reshape(1).expand(b)])
        # Match the prompts to this batch first: tiling the doubled batch would shift the second half.
        text = match_text_batch(text, b)
        text = torch.cat([text, text]) if b > 1 else text
        if frames is None and self.cfg.video:
            frames = b
        out = self.forward(torch.cat([x0, x0]), text, t, frames=frames)
        if check:
            self.check_output(out)
        return out[:b], out[b:]

    max_output = MAX_OUTPUT

    def output_error(self, peak: float) -> str:
        """What to say about an output of magnitude ``peak`` (NaN, infinity or over :data:`MAX_OUTPUT`)."""
        size = "NaN or infinity" if not math.isfinite(peak) else f"{peak:.3g}"
        return (
            f"{self.source} gave a bias of magnitude {size} (latents are of order 1, at most {MAX_OUTPUT:g} is "
            "accepted): its weights are too large because training diverged or the file is damaged; use an "
            "earlier checkpoint or another adapter."
        )

    def check_output(self, r: torch.Tensor) -> None:
        """Refuse an output no sample survives (NaN, infinity or ``|r| > MAX_OUTPUT``), naming the adapter.

        Without this the sampler's next model call overflows and the error blames the model or fp16.
        """
        peak = r.detach().abs().amax().item() if r.numel() else 0.0
        if math.isfinite(peak) and peak <= MAX_OUTPUT:
            return
        raise FloatingPointError(self.output_error(peak))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
