"""Training configuration: the options of every mode, and one section per mode, loaded from YAML and the CLI.

:class:`TrainConfig` holds what every mode means the same way (optimiser, objective, adapter,
previews, runtime) and, in :attr:`TrainConfig.options`, the section of its mode: :class:`JointOptions`,
:class:`ShapesOptions`, :class:`AdapterOptions` or :class:`VideoOptions`. An option whose meaning
depends on the mode (``image_size``, ``context_dim``, ``dataset``) is declared in each section that has
it, with that mode's meaning and help. The command line and the YAML recipes stay flat: ``--image_size``
sets the ``image_size`` of the chosen mode's section. The adapter's stored training config
(:meth:`TrainConfig.to_dict`) keeps only the chosen mode's options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

MODES = ("joint", "adapter", "video", "shapes")
SHAPES_UNET_HEADS = 4  # the shapes UNet's attention heads (not an option)
FROM_SCRATCH = ("joint", "shapes")  # a denoiser trained with the adapter (Eq. 6)
BASE_MODES = ("adapter", "video")  # a frozen ComfyUI base model


# What a resumed run may change: how long it trains, where it runs, how often it logs, saves and previews. Any other
# option would continue the state's weights and optimiser as the training of another model.
MAY_CHANGE = frozenset(
    {
        "steps",
        "resume",
        "output_dir",
        "name",
        "device",
        "prefetch",
        "grad_checkpointing",
        "save_every",
        "log_every",
        "preview_count",
        "preview_steps",
        "val_every",
    }
)


class ConfigError(ValueError):
    """A bad option; the message says which and what to give instead."""


def opt(default, help_text: str, choices=None, minimum: int | None = None):
    """One option: its default (whose type is the option's), help, allowed values and least value."""
    return field(default=default, metadata={"help": help_text, "choices": choices, "minimum": minimum})


def _check_values(section) -> None:
    """Types, choices and least values of a dataclass's options."""
    for f in dataclasses.fields(section):
        if "help" not in f.metadata:
            continue
        value, kind = getattr(section, f.name), type(f.default)
        if not _has_type(value, kind):
            raise ConfigError(f"{f.name}={value!r}: expected a {kind.__name__}")
        choices, minimum = f.metadata["choices"], f.metadata["minimum"]
        if choices and value not in choices:
            raise ConfigError(f"{f.name}={value!r}: choose one of {choices}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{f.name}={value}: must be {'at least 1' if minimum else '0 or more'}")


# --- per-mode sections -------------------------------------------------------------------------------


@dataclass
class ModeOptions:
    """The options of one mode; subclasses declare them, :meth:`check` relates them."""

    mode: ClassVar[str] = ""

    def check(self) -> None:
        """Relations between this section's values (each value alone is checked by type and range)."""

    def input_paths(self) -> dict[str, str]:
        """``{option: path}`` of the files this mode reads, checked before anything is loaded."""
        return {}

    def check_files(self) -> None:
        """What the existing input files say against these options (headers only, before anything is loaded)."""

    def input_digests(self) -> dict[str, str]:
        """``{option: sha256}`` of input files the trained weights depend on bit for bit: a resumed run must read
        the same (a run records them in its state)."""
        return {}


@dataclass
class FromScratchOptions(ModeOptions):
    """A denoiser trained from scratch together with the adapter (joint, shapes)."""

    unet_channels: int = opt(48, "UNet model_channels")
    class_dropout: float = opt(0.1, "probability of the null class / empty caption (for classifier-free guidance)")
    val_every: int = opt(0, "log the validation Eq. 6 loss every n steps (0 = off)", minimum=0)

    def check(self) -> None:
        if self.unet_channels % 32:
            raise ConfigError(f"unet_channels={self.unet_channels}: the UNet's GroupNorm needs a multiple of 32")


@dataclass
class JointOptions(FromScratchOptions):
    """Class-conditional joint model on scikit-learn's digits (paper §4.3)."""

    mode: ClassVar[str] = "joint"
    dataset: str = opt("digits", "'digits' (scikit-learn's bundled 8x8 digits)")
    image_size: int = opt(8, "training resolution in pixels", minimum=1)
    context_dim: int = opt(64, "class-token width")
    val_fraction: float = opt(0.0, "share of the digits held out for validation (fixed split)")
    sample_classes: int = opt(10, "classes in the preview grid")


@dataclass
class ShapesOptions(FromScratchOptions):
    """The text-conditioned joint model on the shapes world (see hostside/joint_checkpoints.py)."""

    mode: ClassVar[str] = "shapes"
    image_size: int = opt(8, "side of the rendered scenes in pixels", minimum=1)
    context_dim: int = opt(64, "the text encoder's width (its tokens are the adapter's and the UNet's context)")
    unet_mult: str = opt("1,2,2", "UNet channel multiplier per level, comma-separated (one level per halving)")
    unet_res_blocks: int = opt(1, "UNet residual blocks per level")
    attention_from_level: int = opt(
        1, "UNet level from which on blocks have attention (0 = every level; 1 skips the costly full resolution)"
    )
    norm_groups: int = opt(
        32,
        "groups of the UNet's GroupNorms (ComfyUI: 32); fewer keep more of each feature's "
        "mean over the image, which a small model needs",
    )
    text_layers: int = opt(2, "layers of the CLIP text encoder")
    text_heads: int = opt(4, "attention heads of the CLIP text encoder")
    base_checkpoint: str = opt(
        "",
        "a trained shapes checkpoint to train an adapter for, as --mode adapter does for an SD checkpoint: its UNet "
        "and text encoder are loaded and frozen (written back bit for bit), and only a fresh adapter is trained "
        "(Eq. 6 or a bias variant); its UNet, text and image_size options must be the file's (give the recipe it "
        "was trained with). Empty: train all three from scratch",
    )

    def unet_levels(self) -> tuple[int, ...]:
        """``unet_mult`` as integers."""
        try:
            mult = tuple(int(m) for m in self.unet_mult.split(","))
        except ValueError:
            raise ConfigError(f"unet_mult={self.unet_mult!r}: give integers separated by commas, e.g. 1,2,2") from None
        if not mult or min(mult) < 1:
            raise ConfigError(f"unet_mult={self.unet_mult!r}: give positive integers separated by commas, e.g. 1,2,2")
        return mult

    def check(self) -> None:
        super().check()
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

    def unet_config(self) -> dict:
        """The UNet these options build (ComfyUI's ``UNetModel`` config, see ``hostside/pixel_unet.py``)."""
        from hostside.pixel_unet import joint_unet_config

        return joint_unet_config(
            channels=3,
            model_channels=self.unet_channels,
            context_dim=self.context_dim,
            channel_mult=self.unet_levels(),
            num_res_blocks=self.unet_res_blocks,
            heads=SHAPES_UNET_HEADS,
            attention_from_level=self.attention_from_level,
            norm_groups=self.norm_groups,
            pooled_dim=self.context_dim,
        )

    def input_paths(self) -> dict[str, str]:
        return {"base_checkpoint": self.base_checkpoint}

    def check_files(self) -> None:
        """A ``base_checkpoint`` is a shapes checkpoint whose UNet, text encoder and image size are these options'."""
        if not self.base_checkpoint:
            return
        from contextdiff.checkpoint import TEXT_JOINT, CheckpointError, open_checkpoint

        path = self.base_checkpoint
        try:
            ckpt = open_checkpoint(path, TEXT_JOINT)
            unet, text, training = ckpt.json("unet_config"), ckpt.json("text_config"), ckpt.json("training", "{}")
        except CheckpointError as e:
            raise ConfigError(f"--base_checkpoint {path}: {e}") from None
        if ckpt.meta.get("recipe") != "shapes":
            raise ConfigError(
                f"--base_checkpoint {path} was trained on recipe {ckpt.meta.get('recipe')!r}: give a checkpoint of "
                "mode shapes"
            )
        ours = self.unet_config()
        ours_text = {"hidden_size": self.context_dim, "num_hidden_layers": self.text_layers}
        ours_text["num_attention_heads"] = self.text_heads
        differ = [k for k in sorted(unet.keys() | ours.keys()) if unet.get(k) != ours.get(k)]
        differ += [f"text {k}" for k, v in ours_text.items() if text.get(k) != v]
        if "image_size" in training and training["image_size"] != self.image_size:
            differ.append(f"image_size ({training['image_size']} in the file, {self.image_size} here)")
        if differ:
            raise ConfigError(
                f"--base_checkpoint {path} holds another model than these options build (differs in: "
                f"{', '.join(differ)}); give the options it was trained with (e.g. its recipe: --config "
                "trainer/configs/shapes.yaml)"
            )

    def input_digests(self) -> dict[str, str]:
        if not self.base_checkpoint:
            return {}
        from contextdiff.checkpoint import content_hash

        return {"base_checkpoint": content_hash(self.base_checkpoint)}


@dataclass
class FrozenBaseOptions(ModeOptions):
    """A frozen ComfyUI base model (adapter and video modes)."""

    checkpoint: str = opt(
        "",
        "a ComfyUI checkpoint file with its text encoders and VAE (SD1.x, SD2.x, SDXL; SD3/SD3.5 and Flux all-in-one "
        "files, adapter mode)",
    )
    base_factory: str = opt(
        "", "'module:function' returning a base model bundle instead of a checkpoint (research, tests)"
    )
    image_size: int = opt(8, "image side in pixels before VAE encoding", minimum=1)
    lora_rank: int = opt(0, "also train LoRA of this rank on the UNet's attention (0 = off)", minimum=0)
    preview_size: int = opt(0, "preview image side in pixels (0 = image_size)", minimum=0)

    def check(self) -> None:
        if not (self.checkpoint or self.base_factory):
            raise ConfigError(f"mode {self.mode} needs --checkpoint (a ComfyUI checkpoint file) or --base_factory")

    def input_paths(self) -> dict[str, str]:
        return {"checkpoint": "" if self.base_factory else self.checkpoint}


@dataclass
class AdapterOptions(FrozenBaseOptions):
    """The adapter (and LoRA) for a frozen base, on a folder or JSONL of captioned images."""

    mode: ClassVar[str] = "adapter"
    dataset: str = opt(
        "digits",
        "a folder of images with .txt captions or a .jsonl file of {image, caption}; every file is read before the "
        "model loads. Images of any PIL mode become 8-bit RGB (16-bit scaled by 1/257, float in [0, 1] by 255, "
        "transparency over white; other ranges and LAB are refused); captions must be UTF-8 (a BOM is allowed)",
    )
    on_bad_data: str = opt(
        "skip",
        "an unreadable, truncated or decompression-bomb image, a missing or non-UTF-8 caption: skip it (named and "
        "counted), or stop the run naming it",
        ["skip", "error"],
    )
    cache_latents: bool = opt(False, "encode images and captions once and keep them (memory for speed)")

    def input_paths(self) -> dict[str, str]:
        return {**super().input_paths(), "dataset": self.dataset}


@dataclass
class VideoOptions(FrozenBaseOptions):
    """One-shot tuning on one video (paper §4.2): the first ``frames`` frames at ``frame_stride``."""

    mode: ClassVar[str] = "video"
    video: str = opt("", "path of the source video")
    prompt: str = opt("", "the source prompt")
    frames: int = opt(8, "frames of the clip (Table 8: 8-24); only these are decoded", minimum=1)
    frame_stride: int = opt(2, "sampling rate, keep every n-th frame (Table 8: 2)", minimum=1)
    temporal_window: int = opt(3, "frames in the temporal causal attention")

    def check(self) -> None:
        super().check()
        if not (self.video and self.prompt):
            raise ConfigError("mode video needs --video PATH and --prompt TEXT")

    def input_paths(self) -> dict[str, str]:
        return {**super().input_paths(), "video": self.video}


SECTIONS: dict[str, type[ModeOptions]] = {
    "joint": JointOptions,
    "adapter": AdapterOptions,
    "video": VideoOptions,
    "shapes": ShapesOptions,
}


# --- the options of every mode -----------------------------------------------------------------------


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
    steps: int = opt(2000, "optimisation steps", minimum=1)
    batch_size: int = opt(64, "samples per step (per process under torchrun)", minimum=1)
    # Optimiser (defaults: Table 7; video recipes use Table 8's 1e-5)
    lr: float = opt(2e-4, "AdamW learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay (Table 8: 1e-2)")
    warmup_steps: int = opt(50, "linear learning-rate warm-up", minimum=0)
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
    # Training-time variants of the bias (issue 20, contextdiff/bias_variants.py); the defaults are Eq. 6
    objective: str = opt(
        "eq6",
        "eq6: the paper's simplified objective; eq5: Eq. 5 with x0hat inserted (paper §3.2), which keeps the bias "
        "terms Eq. 6 drops, so r_phi(x0hat) must agree with r_phi(x0)",
        ["eq6", "eq5"],
    )
    self_bias: float = opt(
        0.0,
        "share of samples whose bias is computed from the model's own stop-gradient x0hat (one extra forward "
        "pass), as at sampling, instead of from x0 (0 = Eq. 6; below 1 needs mode shapes)",
    )
    # Lemma 4 needs r_phi Lipschitz in x0 with constants C_t.
    lipschitz_weight: float = opt(
        0.0, "weight of a hinge on r_phi's quotient |r(x0hat) - r(x0)| / |x0hat - x0| above the bound (0 = off)"
    )
    lipschitz_bound: float = opt(1.0, "the bound C on Lemma 4's C_t that lipschitz_weight enforces")
    input_blur: float = opt(0.0, "Gaussian low-pass (sigma in pixels) of r_phi's image input in training (0 = off)")
    input_noise: float = opt(
        0.0, "std of Gaussian noise added to r_phi's image input in training (0 = off; needs mode shapes)"
    )
    bias_input: str = opt(
        "image",
        "what r_phi reads beside the text and t: image (x0 in training, x0hat in sampling: Eq. 1) or none "
        "(r_phi(c, t): no image leaks into x_t, and sampling computes the bias training used)",
        ["image", "none"],
    )
    # Adapter architecture
    adapter_dim: int = opt(256, "adapter width", minimum=1)
    adapter_depth: int = opt(4, "transformer blocks (Tables 7/8)", minimum=1)
    adapter_heads: int = opt(8, "attention heads", minimum=1)
    adapter_patch: int = opt(2, "latent patch size of the visual tokens", minimum=1)
    # Previews (samples.png at each checkpoint); on a CPU they can cost more than the training
    preview_count: int = opt(
        4,
        "pictures in samples.png: adapter images, joint samples per class, video frames (0 = no preview)",
        minimum=0,
    )
    preview_steps: int = opt(12, "DDIM steps of each preview", minimum=1)
    # Runtime
    device: str = opt("auto", "auto, cpu, cuda, cuda:1 ...")
    precision: str = opt("fp32", "autocast precision on CUDA", ["fp32", "bf16", "fp16"])
    prefetch: str = opt(
        "auto",
        "the shapes world's batches: made ahead on a thread (ahead) or by the loop as each step needs them (sync); "
        "auto: ahead on CUDA, sync on the CPU, where the thread gains nothing (docs/benchmarks.md); the other modes "
        "make their batches in the step. Same batches, same results either way",
        ["auto", "ahead", "sync"],
    )
    grad_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    save_every: int = opt(500, "checkpoint (and plots) every n steps; always at the end", minimum=1)
    log_every: int = opt(10, "log line every n steps", minimum=1)
    resume: bool = opt(False, "continue from output_dir/state if present")
    # The chosen mode's section (not an option: the flat keys of its options fill it)
    options: ModeOptions = None

    def __post_init__(self):
        if self.options is None and self.mode in SECTIONS:
            self.options = SECTIONS[self.mode]()

    @classmethod
    def from_flat(cls, values: dict) -> TrainConfig:
        """A config from flat ``{option: value}`` (the CLI's and YAML's form): the keys of every mode go to
        this config, the chosen mode's to its section; other modes' options are type-checked, then unused."""
        common = {f.name for f in _common_fields()}
        mode = values.get("mode", cls.mode)  # the class attribute is the default
        if mode not in SECTIONS:
            raise ConfigError(f"mode={mode!r}: choose one of {list(MODES)}")
        section = SECTIONS[mode]
        own = {f.name for f in dataclasses.fields(section)}
        flags = cli_options()
        for key, value in values.items():
            if key not in flags:
                raise ConfigError(f"unknown option {key!r}; see --help")
            if key not in common and key not in own:
                kind = type(flags[key][0][1].default)
                if not _has_type(value, kind):
                    raise ConfigError(f"{key}={value!r}: expected a {kind.__name__}")
        return cls(
            **{k: v for k, v in values.items() if k in common},
            options=section(**{k: v for k, v in values.items() if k in own}),
        )

    def __getattr__(self, name: str):
        # Read access to the section's options and methods as before the split (``cfg.image_size``,
        # ``cfg.unet_levels()``); only reached when ``name`` is not an option of every mode.
        options = self.__dict__.get("options")
        if options is not None and not name.startswith("_") and hasattr(options, name):
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__} of mode {self.__dict__.get('mode')!r} has no option {name!r}")

    def validate(self) -> TrainConfig:
        """Check the values (not the files: see :meth:`check_inputs`); fills ``output_dir``."""
        _check_values(self)
        from contextdiff.bias_variants import BiasVariant  # torch: only when a config is checked

        try:
            BiasVariant(**{name: getattr(self, name) for name in BiasVariant().to_dict()})
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not isinstance(self.options, SECTIONS[self.mode]):
            raise ConfigError(f"mode {self.mode}: its options must be a {SECTIONS[self.mode].__name__}")
        _check_values(self.options)
        if not self.name or Path(self.name).name != self.name or self.name in (".", ".."):
            raise ConfigError(
                f"name={self.name!r}: give a file name stem without folders; --output_dir sets the folder"
            )
        if not self.output_dir:
            self.output_dir = str(Path("runs") / self.name)
        self.options.check()
        if getattr(self.options, "base_checkpoint", "") and not self.use_bias:
            raise ConfigError(
                "--base_checkpoint freezes the model and trains only the adapter; with --use_bias false the adapter "
                "gets no gradient and nothing would be trained: drop one of the two"
            )
        return self

    def check_inputs(self) -> TrainConfig:
        """The files this run reads exist, and a state it resumes was trained with its options; checked before
        ComfyUI or any model is loaded."""
        for key, path in self.options.input_paths().items():
            if path and not Path(path).exists():
                raise ConfigError(
                    f"--{key} {path} does not exist; give the path of an existing "
                    f"{'folder or .jsonl file' if key == 'dataset' else 'file'}"
                )
        self.options.check_files()
        if self.resume:
            self.check_resumes()
        return self

    def check_resumes(self) -> None:
        """Refuse to continue a state saved with other options than this run's (but those in ``MAY_CHANGE``)."""
        from .checkpoint import latest_info

        info = latest_info(Path(self.output_dir))
        saved = None if info is None else info.get("config")  # states written before this check carry none
        if saved is None:
            return
        now = json.loads(json.dumps(self.to_dict(), default=str))  # as the state stored it
        changed = [k for k in sorted(saved.keys() | now.keys()) if k not in MAY_CHANGE and saved.get(k) != now.get(k)]
        if changed:
            diff = ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise ConfigError(
                f"--resume: the state in {self.output_dir}/state (step {info['step']}) was trained with other "
                f"options ({diff}); run with its options to continue it, or give another --output_dir to train anew"
            )
        inputs = info.get("inputs", {})
        changed = [k for k, digest in self.options.input_digests().items() if inputs.get(k, digest) != digest]
        if changed:
            raise ConfigError(
                f"--resume: the state in {self.output_dir}/state (step {info['step']}) was trained on other contents "
                f"of --{', --'.join(changed)} (the file changed since); restore that file to continue, or give "
                "another --output_dir to train anew"
            )

    @property
    def export_path(self) -> Path:
        """Where the adapter (or joint checkpoint) is written: what the nodes and the demo load."""
        return Path(self.output_dir) / f"{self.name}.safetensors"

    @property
    def lora_path(self) -> Path:
        """Where the LoRA trained beside the adapter (``lora_rank`` > 0) is written, in ComfyUI's LoRA format."""
        return Path(self.output_dir) / f"{self.name}-lora.safetensors"

    def to_dict(self) -> dict:
        """The options that mean something for this run's mode, with the values it uses (flat)."""
        return {f.name: getattr(self, f.name) for f in _common_fields()} | dataclasses.asdict(self.options)


def _common_fields() -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata)


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


def cli_options() -> dict[str, list[tuple[tuple[str, ...], dataclasses.Field]]]:
    """Every flag, in ``--help`` order, with its declarations: ``[(modes, field), ...]``; an option of every
    mode has one with all :data:`MODES`, a section's one per distinct meaning (the modes that share it)."""
    flags: dict[str, list[tuple[tuple[str, ...], dataclasses.Field]]] = {f.name: [(MODES, f)] for f in _common_fields()}
    for mode in MODES:
        for f in dataclasses.fields(SECTIONS[mode]):
            known = flags.setdefault(f.name, [])
            same = next((i for i, (_, g) in enumerate(known) if g.metadata is f.metadata), None)
            if same is None:
                known.append(((mode,), f))
            else:
                known[same] = ((*known[same][0], mode), f)
    for name, decls in flags.items():
        kinds = {type(f.default) for _, f in decls}
        assert len(kinds) == 1, f"option {name} is declared with different types {kinds}"
    return flags


def help_line(modes: tuple[str, ...], f: dataclasses.Field) -> str:
    """``--help`` text of one declaration: the modes it applies to (when not all), its help and default."""
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
    for name, decls in cli_options().items():
        f = decls[0][1]
        kind = {bool: _parse_bool, int: int, float: float, str: str}[type(f.default)]
        choices = next((g.metadata["choices"] for _, g in decls if g.metadata["choices"]), None)
        help_text = "; ".join(help_line(modes, g) for modes, g in decls)
        p.add_argument(f"--{name}", type=kind, default=None, choices=choices, help=help_text)
    return p


def load_config(argv=None) -> TrainConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {}
    if args.config:
        if not Path(args.config).is_file():
            raise SystemExit(f"--config {args.config} does not exist; recipes are in trainer/configs/")
        data = yaml.safe_load(Path(args.config).read_text()) or {}
        unknown = set(data) - set(cli_options())
        if unknown:
            raise SystemExit(f"{args.config}: unknown keys {sorted(unknown)}; see --help")
        values.update(data)
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    return TrainConfig.from_flat(values).validate()
