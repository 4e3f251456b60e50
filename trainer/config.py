"""Training configuration: one flat dataclass, loaded from YAML, any key overridable on the CLI.

Each option names the modes it means something for; the adapter's stored training config keeps
only those (an adapter-mode file carries no joint-mode ``context_dim``).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

MODES = ("joint", "adapter", "video", "shapes")
FROM_SCRATCH = ("joint", "shapes")  # a denoiser trained with the adapter (Eq. 6)
BASE_MODES = ("adapter", "video")  # a frozen ComfyUI base model


class ConfigError(ValueError):
    """A bad option; the message says which and what to give instead."""


def opt(default, help_text: str, choices=None, modes: tuple[str, ...] = MODES):
    return field(default=default, metadata={"help": help_text, "choices": choices, "modes": modes})


@dataclass
class TrainConfig:
    # What to train
    mode: str = opt(
        "joint",
        "joint: denoiser + adapter from scratch (Eq. 6); adapter: adapter for a frozen "
        "ComfyUI checkpoint; video: one-shot tuning on one video (paper §4.2); shapes: denoiser + adapter + "
        "a CLIP text encoder from scratch on the captioned shapes world (text-to-image)",
        list(MODES),
    )
    output_dir: str = opt("", "where checkpoints, logs and plots go; empty: runs/<name>")
    name: str = opt("contextdiff", "file name stem of the adapter/joint checkpoint: <output_dir>/<name>.safetensors")
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
    bias_l2: float = opt(
        0.0,
        "penalty lambda * mean(b_t^2) on the bias magnitude; not in the paper (0), keeps "
        "the adapter from encoding x0 into x_t with a large, stiff bias",
    )
    # Adapter architecture
    adapter_dim: int = opt(256, "adapter width")
    adapter_depth: int = opt(4, "transformer blocks (Tables 7/8)")
    adapter_heads: int = opt(8, "attention heads")
    adapter_patch: int = opt(2, "latent patch size of the visual tokens")
    temporal_window: int = opt(3, "frames in the temporal causal attention", modes=("video",))
    # Data
    dataset: str = opt(
        "digits",
        "joint: 'digits' (scikit-learn); adapter: a folder of images with .txt captions "
        "or a .jsonl file of {image, caption}",
        modes=("joint", "adapter"),
    )
    image_size: int = opt(8, "joint: training resolution in pixels; adapter/video: image side before VAE encoding")
    # joint mode
    unet_channels: int = opt(48, "UNet model_channels", modes=FROM_SCRATCH)
    context_dim: int = opt(64, "class-token width; shapes: the text encoder's width", modes=FROM_SCRATCH)
    class_dropout: float = opt(
        0.1, "probability of the null class / empty caption (for classifier-free guidance)", modes=FROM_SCRATCH
    )
    val_fraction: float = opt(0.0, "share of the digits held out for validation (fixed split)", modes=("joint",))
    val_every: int = opt(0, "log the validation Eq. 6 loss every n steps (0 = off)", modes=FROM_SCRATCH)
    # shapes mode (the text-conditioned joint model; see contextdiff/text_joint.py)
    unet_mult: str = opt(
        "1,2,2", "UNet channel multiplier per level, comma-separated (one level per halving)", modes=("shapes",)
    )
    unet_res_blocks: int = opt(1, "UNet residual blocks per level", modes=("shapes",))
    attention_from_level: int = opt(
        1,
        "UNet level from which on blocks have attention (0 = every level; 1 skips "
        "the full resolution, which costs most)",
        modes=("shapes",),
    )
    norm_groups: int = opt(
        32,
        "groups of the UNet's GroupNorms (ComfyUI: 32); fewer keep more of each feature's "
        "mean over the image, which a small model needs",
        modes=("shapes",),
    )
    text_layers: int = opt(2, "layers of the CLIP text encoder", modes=("shapes",))
    text_heads: int = opt(4, "attention heads of the CLIP text encoder", modes=("shapes",))
    sample_classes: int = opt(10, "classes in the preview grid", modes=("joint",))
    # A frozen base model (adapter and video modes)
    checkpoint: str = opt("", "a ComfyUI checkpoint file (SD1.x, SD2.x, SDXL)", modes=BASE_MODES)
    base_factory: str = opt(
        "",
        "'module:function' returning a base model bundle instead of a checkpoint (research, tests)",
        modes=BASE_MODES,
    )
    lora_rank: int = opt(0, "also train LoRA of this rank on the UNet's attention (0 = off)", modes=BASE_MODES)
    on_bad_data: str = opt(
        "skip", "unreadable image / missing caption: skip and count, or stop", ["skip", "error"], modes=("adapter",)
    )
    cache_latents: bool = opt(
        False, "encode images and captions once and keep them (memory for speed)", modes=("adapter",)
    )
    # video mode: the first `frames` frames at `frame_stride` are read, encoded and tuned on
    video: str = opt("", "path of the source video", modes=("video",))
    prompt: str = opt("", "the source prompt", modes=("video",))
    frames: int = opt(8, "frames of the clip (Table 8: 8-24); only these are decoded", modes=("video",))
    frame_stride: int = opt(2, "sampling rate, keep every n-th frame (Table 8: 2)", modes=("video",))
    # Previews (samples.png at each checkpoint); on a CPU they can cost more than the training
    preview_count: int = opt(
        4, "pictures in samples.png: adapter images, joint samples per class, video frames (0 = no preview)"
    )
    preview_steps: int = opt(12, "DDIM steps of each preview")
    preview_size: int = opt(0, "preview image side in pixels (0 = image_size)", modes=BASE_MODES)
    # Runtime
    device: str = opt("auto", "auto, cpu, cuda, cuda:1 ...")
    precision: str = opt("fp32", "autocast precision on CUDA", ["fp32", "bf16", "fp16"])
    grad_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    save_every: int = opt(500, "checkpoint (and plots) every n steps; always at the end")
    log_every: int = opt(10, "log line every n steps")
    resume: bool = opt(False, "continue from output_dir/state if present")

    def validate(self) -> TrainConfig:
        """Check the values (not the files: see :meth:`check_inputs`); fills ``output_dir``."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            if not _has_type(value, kind):
                raise ConfigError(f"{f.name}={value!r}: expected a {kind.__name__}")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{f.name}={value!r}: choose one of {choices}")
        for key in (
            "steps",
            "batch_size",
            "preview_steps",
            "save_every",
            "log_every",
            "frames",
            "frame_stride",
            "image_size",
            "adapter_dim",
            "adapter_depth",
            "adapter_heads",
            "adapter_patch",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: must be at least 1")
        for key in ("preview_count", "preview_size", "lora_rank", "warmup_steps", "val_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)}: must be 0 or more")
        if not self.name or Path(self.name).name != self.name or self.name in (".", ".."):
            raise ConfigError(
                f"name={self.name!r}: give a file name stem without folders; --output_dir sets the folder"
            )
        if not self.output_dir:
            self.output_dir = str(Path("runs") / self.name)
        if self.mode in FROM_SCRATCH and self.unet_channels % 32:
            raise ConfigError(f"unet_channels={self.unet_channels}: the UNet's GroupNorm needs a multiple of 32")
        if self.mode == "shapes":
            self._check_shapes()
        if self.mode in BASE_MODES and not (self.checkpoint or self.base_factory):
            raise ConfigError(f"mode {self.mode} needs --checkpoint (a ComfyUI checkpoint file) or --base_factory")
        if self.mode == "video" and not (self.video and self.prompt):
            raise ConfigError("mode video needs --video PATH and --prompt TEXT")
        return self

    def unet_levels(self) -> tuple[int, ...]:
        """``unet_mult`` as integers."""
        try:
            mult = tuple(int(m) for m in self.unet_mult.split(","))
        except ValueError:
            raise ConfigError(f"unet_mult={self.unet_mult!r}: give integers separated by commas, e.g. 1,2,2") from None
        if not mult or min(mult) < 1:
            raise ConfigError(f"unet_mult={self.unet_mult!r}: give positive integers separated by commas, e.g. 1,2,2")
        return mult

    def _check_shapes(self) -> None:
        levels = len(self.unet_levels())
        if not 0 <= self.attention_from_level < levels:
            raise ConfigError(
                f"attention_from_level={self.attention_from_level}: name one of the {levels} UNet "
                f"levels (0..{levels - 1})"
            )
        if self.image_size % 2 ** (levels - 1):
            raise ConfigError(
                f"image_size={self.image_size}: the UNet halves it {levels - 1} times, give a multiple "
                f"of {2 ** (levels - 1)}"
            )
        if self.norm_groups < 1 or self.unet_channels % self.norm_groups:
            raise ConfigError(f"norm_groups={self.norm_groups} must divide unet_channels={self.unet_channels}")
        if min(self.text_layers, self.text_heads, self.unet_res_blocks) < 1 or self.context_dim % self.text_heads:
            raise ConfigError(
                f"context_dim={self.context_dim} (the text width) must be divisible by text_heads="
                f"{self.text_heads}, and text_layers, text_heads, unet_res_blocks must be at least 1"
            )

    def check_inputs(self) -> TrainConfig:
        """The files this run reads exist, checked before ComfyUI or any model is loaded."""
        wanted = {
            "checkpoint": self.checkpoint if self.mode in BASE_MODES and not self.base_factory else "",
            "video": self.video if self.mode == "video" else "",
            "dataset": self.dataset if self.mode == "adapter" else "",
        }
        for key, path in wanted.items():
            if path and not Path(path).exists():
                raise ConfigError(
                    f"--{key} {path} does not exist; give the path of an existing "
                    f"{'folder or .jsonl file' if key == 'dataset' else 'file'}"
                )
        return self

    @property
    def export_path(self) -> Path:
        """Where the adapter (or joint checkpoint) is written: what the nodes and the demo load."""
        return Path(self.output_dir) / f"{self.name}.safetensors"

    def to_dict(self) -> dict:
        """The options that mean something for this run's mode, with the values it uses."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if self.mode in f.metadata["modes"]}


def _has_type(value, kind: type) -> bool:
    """YAML gives ints where floats are meant (``lr: 1``); a bool is never a number here."""
    if isinstance(value, bool) != (kind is bool):
        return False
    return isinstance(value, kind) or kind is float and isinstance(value, int)


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def help_line(f: dataclasses.Field) -> str:
    """``--help`` text of one option: the modes it applies to (when not all), its help and default."""
    modes = f.metadata["modes"]
    where = "" if tuple(modes) == MODES else f"[{', '.join(modes)}] "
    return f"{where}{f.metadata['help']} (default: {f.default})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.train",
        description="Train a ContextDiff adapter (or a joint denoiser + adapter) and write checkpoints that "
        "the ComfyUI nodes load. Every option can also be a key of the --config YAML file; "
        "the command line wins. [modes] marks options used only by those modes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file with any of the keys below (recipes in trainer/configs/)")
    for f in dataclasses.fields(TrainConfig):
        kind = {bool: _parse_bool, int: int, float: float, str: str}[type(f.default)]
        p.add_argument(f"--{f.name}", type=kind, default=None, choices=f.metadata.get("choices"), help=help_line(f))
    return p


def load_config(argv=None) -> TrainConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {}
    if args.config:
        if not Path(args.config).is_file():
            raise SystemExit(f"--config {args.config} does not exist; recipes are in trainer/configs/")
        data = yaml.safe_load(Path(args.config).read_text()) or {}
        unknown = set(data) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise SystemExit(f"{args.config}: unknown keys {sorted(unknown)}; see --help")
        values.update(data)
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    return TrainConfig(**values).validate()
