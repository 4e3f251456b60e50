"""Nodes for the trainer's ``joint`` checkpoints: a pixel-space denoiser + adapter + class tokens."""

from __future__ import annotations

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import torch
from comfy_api.latest import io, ui

from ..contextdiff.checkpoint import JOINT, TEXT_JOINT
from ..contextdiff.class_labels import batch_note, parse_labels
from ..contextdiff.joint_model import ClassEmbedding
from ..hostside.joint_checkpoints import load_joint, load_text_joint
from . import pixel_grid
from .loading import LOADERS, file_fingerprint, file_input, file_path
from .pack_node import PackNode
from .types import Adapter, Classes, LoadedAdapter


class ContextDiffJointLoader(PackNode, display=JOINT.loader, category=LOADERS):
    """Loads a checkpoint from python -m trainer.train --mode joint (e.g. the digits demo): the denoiser as a MODEL
    (pixel space, x0-prediction), its adapter, and its class tokens."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            [
                file_input(
                    "ckpt_name",
                    "A joint checkpoint in models/contextdiff/ (e.g. the digits demo's "
                    "runs/digits/digits-contextdiff.safetensors copied there).",
                )
            ],
            [io.Model.Output(), Adapter.Output(display_name="adapter"), Classes.Output(display_name="classes")],
        )

    @classmethod
    def fingerprint_inputs(cls, ckpt_name: str) -> str:
        return file_fingerprint(ckpt_name)

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        model, adapter, classes, meta = load_joint(file_path(ckpt_name, JOINT))
        return io.NodeOutput(model_patcher(model), LoadedAdapter(adapter, meta, ckpt_name), classes)


def model_patcher(model: comfy.model_base.BaseModel) -> comfy.model_patcher.ModelPatcher:
    """A loaded joint denoiser as a ComfyUI MODEL."""
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def pixel_space_vae() -> comfy.sd.VAE:
    """ComfyUI's own pixel-space VAE (the core VAE Loader's 'pixel_space'): IMAGE [0, 1] <-> latent [-1, 1]
    at full resolution, which is exactly the joint models' data space."""
    return comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})


class ContextDiffShapesLoader(PackNode, display=TEXT_JOINT.loader, category=LOADERS):
    """Loads a checkpoint of the shapes recipe (python -m trainer.train --config trainer/configs/shapes.yaml): a
    text-to-image model trained from scratch with its adapter and a CLIP text encoder. Prompts, weights like
    (red:1.3), blend words and word alignment run the same code as with an SD checkpoint."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            [
                file_input(
                    "ckpt_name",
                    "A shapes checkpoint in models/contextdiff/ (e.g. runs/shapes/shapes-contextdiff.safetensors "
                    "copied there).",
                )
            ],
            [
                io.Model.Output(tooltip="The denoiser: pixel space, 32x32 RGB, x0-prediction."),
                io.Clip.Output(tooltip="Its CLIP text encoder (CLIP's BPE tokenizer): use CLIPTextEncode."),
                io.Vae.Output(
                    tooltip="ComfyUI's pixel-space VAE: VAEEncode/VAEDecode map images to the "
                    "model's [-1, 1] pixels and back, no compression."
                ),
                Adapter.Output(
                    display_name="adapter",
                    tooltip="The adapter trained with the model; strength 0 gives the same model without the bias.",
                ),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, ckpt_name: str) -> str:
        return file_fingerprint(ckpt_name)

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        loaded = load_text_joint(file_path(ckpt_name, TEXT_JOINT), recipe="shapes")
        adapter = LoadedAdapter(loaded.adapter, loaded.meta, ckpt_name)
        return io.NodeOutput(model_patcher(loaded.model), loaded.clip, pixel_space_vae(), adapter)


class ContextDiffClassConditioning(
    PackNode, display="ContextDiff Class Conditioning", category="conditioning/contextdiff"
):
    """Class labels as conditioning tokens (paper §4.3, class-to-image). One label per latent in the batch, repeated to
    fill it; -1 is the null class (use it as the negative). The node's text lists the labels and, with the latent
    connected, which label each sample gets."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            inputs=[
                Classes.Input("classes", tooltip="The class tokens from Load ContextDiff Joint Model."),
                io.String.Input("labels", default="0-9", tooltip="e.g. '7', '0-9', '9-0' (downwards), '1, 3, 5', '-1'"),
                io.Int.Input("repeat", default=1, min=1, max=1024, tooltip="Each label this many times."),
                io.Latent.Input(
                    "latent",
                    optional=True,
                    tooltip="Optional: the latent these labels condition; the node's text then says which label "
                    "each sample gets (ComfyUI repeats the labels over a larger batch, cuts them for a smaller one).",
                ),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, classes: ClassEmbedding, labels: str, repeat: int, latent: dict | None = None) -> io.NodeOutput:
        named = parse_labels(labels, classes.num_classes)
        count, width = len(named) * repeat, classes.embed.weight.shape[1] * classes.embed.weight.element_size()
        free = comfy.model_management.get_free_memory(torch.device("cpu"))
        if count * width > free:
            raise MemoryError(
                f"{len(named)} labels {repeat} times each need {count * width / 1e9:.1f} GB of class tokens, more "
                f"than the {free / 1e9:.1f} GB free: lower repeat (one label per latent is enough)"
            )
        parsed = [c for c in named for _ in range(repeat)]
        idx = torch.tensor([classes.num_classes if c == -1 else c for c in parsed])
        with torch.no_grad():
            tokens = classes(idx)
        batch = int(latent["samples"].shape[0]) if latent is not None else None
        return io.NodeOutput([[tokens, {}]], ui=ui.PreviewText(batch_note(parsed, batch)))


class ContextDiffPixelsToImage(PackNode, display="ContextDiff Pixels To Image", category="latent/contextdiff"):
    """Shows a pixel-space latent (joint models have no VAE): [-1, 1] to an IMAGE, optionally as one grid, enlarged for
    viewing. An image that would not fit in memory, or is wider or taller than ComfyUI's 16384 pixels, is refused
    before anything is allocated."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            inputs=[
                io.Latent.Input("samples", tooltip="Pixel-space latents of a joint model."),
                io.Int.Input("scale", default=8, min=1, max=64, tooltip="Nearest-neighbour enlargement."),
                io.Int.Input(
                    "grid_columns",
                    default=0,
                    min=0,
                    max=256,
                    tooltip="0 = a batch of images; more columns than latents gives one row.",
                ),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, samples: dict, scale: int, grid_columns: int) -> io.NodeOutput:
        x = samples["samples"]
        free = comfy.model_management.get_free_memory(torch.device("cpu"))
        pixel_grid.check_fits(tuple(x.shape), scale, grid_columns, free)
        return io.NodeOutput(pixel_grid.to_image(x, scale, grid_columns))
