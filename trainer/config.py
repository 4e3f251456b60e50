"""Training configuration: one flat dataclass, loaded from YAML, any key overridable on the CLI."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def opt(default, help_text: str, choices=None):
    return field(default=default, metadata={"help": help_text, "choices": choices})


@dataclass
class TrainConfig:
    # What to train
    mode: str = opt("joint", "joint: denoiser + adapter from scratch (Eq. 6); adapter: adapter for a frozen "
                    "ComfyUI checkpoint; video: one-shot tuning on one video (paper §4.2)",
                    ["joint", "adapter", "video"])
    output_dir: str = opt("runs/contextdiff", "where checkpoints, logs and plots go")
    name: str = opt("contextdiff", "file name stem of the adapter/joint checkpoint")
    seed: int = opt(0, "seed of initialisation, data order, timesteps and noise")
    steps: int = opt(2000, "optimisation steps")
    batch_size: int = opt(64, "samples per step (per process under torchrun)")
    # Optimiser (defaults: Table 7; video recipes use Table 8's 1e-5)
    lr: float = opt(2e-4, "AdamW learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay (Table 8: 1e-2)")
    warmup_steps: int = opt(50, "linear learning-rate warm-up")
    lr_schedule: str = opt("cosine", "after warm-up", ["constant", "cosine"])
    grad_clip: float = opt(1.0, "gradient norm clip (0 = off)")
    ema_decay: float = opt(0.0, "EMA of the trained weights, saved instead of the raw ones (0 = off)")
    # The objective (Eq. 6)
    loss_weighting: str = opt("uniform", "lambda_t of Eq. 6", ["uniform", "snr", "min_snr", "truncated_snr"])
    min_snr_gamma: float = opt(5.0, "gamma of min_snr weighting")
    use_bias: bool = opt(True, "false trains the identical model without the context bias (the fair baseline)")
    bias_l2: float = opt(0.0, "penalty lambda * mean(b_t^2) on the bias magnitude; not in the paper (0), keeps "
                         "the adapter from encoding x0 into x_t with a large, stiff bias")
    # Adapter architecture
    adapter_dim: int = opt(256, "adapter width")
    adapter_depth: int = opt(4, "transformer blocks (Tables 7/8)")
    adapter_heads: int = opt(8, "attention heads")
    adapter_patch: int = opt(2, "latent patch size of the visual tokens")
    temporal_window: int = opt(3, "frames in the temporal causal attention (video)")
    # joint mode
    dataset: str = opt("digits", "joint: 'digits' (scikit-learn) ; adapter: a folder of images with .txt captions "
                       "or a .jsonl file of {image, caption}")
    image_size: int = opt(8, "joint: training resolution in pixels; adapter: image side before VAE encoding")
    unet_channels: int = opt(48, "joint: UNet model_channels")
    context_dim: int = opt(64, "joint: class-token width")
    class_dropout: float = opt(0.1, "joint: probability of the null class (for classifier-free guidance)")
    val_fraction: float = opt(0.0, "joint: share of the digits held out for validation (fixed split)")
    val_every: int = opt(0, "log the validation Eq. 6 loss every n steps (0 = off)")
    # adapter mode
    checkpoint: str = opt("", "adapter/video: a ComfyUI checkpoint file (SD1.x, SD2.x, SDXL)")
    base_factory: str = opt("", "adapter/video: 'module:function' returning a base model bundle instead of "
                            "a checkpoint (research, tests)")
    lora_rank: int = opt(0, "adapter: also train LoRA of this rank on the UNet's attention (0 = off)")
    on_bad_data: str = opt("skip", "unreadable image / missing caption: skip and count, or stop", ["skip", "error"])
    cache_latents: bool = opt(False, "encode images and captions once and keep them (memory for speed)")
    # video mode
    video: str = opt("", "video: path of the source video")
    prompt: str = opt("", "video: the source prompt")
    frames: int = opt(8, "video: frames per clip (Table 8: 8-24)")
    frame_stride: int = opt(2, "video: sampling rate, keep every n-th frame (Table 8: 2)")
    # Runtime
    device: str = opt("auto", "auto, cpu, cuda, cuda:1 ...")
    precision: str = opt("fp32", "autocast precision on CUDA", ["fp32", "bf16", "fp16"])
    grad_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    save_every: int = opt(500, "checkpoint (and plots) every n steps; always at the end")
    log_every: int = opt(10, "log line every n steps")
    sample_classes: int = opt(10, "joint: classes in the sample grid")
    resume: bool = opt(False, "continue from output_dir/state if present")

    def validate(self) -> "TrainConfig":
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name}={getattr(self, f.name)!r}: choose one of {choices}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if self.mode == "joint" and self.unet_channels % 32:
            raise ValueError(f"unet_channels={self.unet_channels}: the UNet's GroupNorm needs a multiple of 32")
        if self.mode in ("adapter", "video") and not (self.checkpoint or self.base_factory):
            raise ValueError(f"mode {self.mode} needs --checkpoint (a ComfyUI checkpoint file) or --base_factory")
        if self.mode == "video" and not (self.video and self.prompt):
            raise ValueError("mode video needs --video PATH and --prompt TEXT")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.train",
        description="Train a ContextDiff adapter (or a joint denoiser + adapter) and write checkpoints that "
                    "the ComfyUI nodes load. Every option can also be a key of the --config YAML file; "
                    "the command line wins.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with any of the keys below (recipes in trainer/configs/)")
    for f in dataclasses.fields(TrainConfig):
        kind = {bool: _parse_bool, int: int, float: float, str: str}[type(f.default)]
        p.add_argument(f"--{f.name}", type=kind, default=None, choices=f.metadata.get("choices"),
                       help=f"{f.metadata['help']} (default: {f.default})")
    return p


def load_config(argv=None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    values = {}
    if args.config:
        data = yaml.safe_load(Path(args.config).read_text()) or {}
        unknown = set(data) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise SystemExit(f"{args.config}: unknown keys {sorted(unknown)}; see --help")
        values.update(data)
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    return TrainConfig(**values).validate()
