"""Nodes for the trainer's ``joint`` checkpoints: a pixel-space denoiser + adapter + class tokens."""

from __future__ import annotations

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import folder_paths
import torch
from comfy_api.latest import io

from ..contextdiff.joint_model import ClassEmbedding
from ..hostside.joint_checkpoints import load_joint, load_text_joint
from .adapter_loader import ContextDiffAdapterLoader
from .paths import FOLDER
from .types import Adapter, Classes, LoadedAdapter


def parse_classes(text: str, num_classes: int) -> list[int]:
    """'0-9' or '3, 5, 7' or '-1' (the null class) -> label list."""
    labels = []
    for part in [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]:
        if "-" in part[1:]:
            lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
            labels.extend(range(int(lo), int(hi) + 1))
        else:
            labels.append(int(part))
    if not labels:
        raise ValueError("no class given: write e.g. '7', '0-9' or '1, 3, 5' (-1 = unconditional)")
    bad = [c for c in labels if not -1 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} are outside 0..{num_classes - 1} (or -1 for unconditional)")
    return [num_classes if c == -1 else c for c in labels]


def checkpoint_input(tooltip: str) -> io.Combo.Input:
    """The loaders' ``ckpt_name``: a file in models/contextdiff/."""
    return io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list(FOLDER), tooltip=tooltip)


class ContextDiffJointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ContextDiffJointLoader",
            display_name="Load ContextDiff Joint Model",
            category="loaders/contextdiff",
            description="Loads a checkpoint from python -m trainer.train --mode joint (e.g. the digits demo): the "
            "denoiser as a MODEL (pixel space, x0-prediction), its adapter, and its class tokens.",
            inputs=[
                checkpoint_input(
                    "A joint checkpoint in models/contextdiff/ (e.g. the digits demo's "
                    "runs/digits/digits-contextdiff.safetensors copied there)."
                )
            ],
            outputs=[io.Model.Output(), Adapter.Output(display_name="adapter"), Classes.Output(display_name="classes")],
        )

    @classmethod
    def fingerprint_inputs(cls, ckpt_name: str) -> str:
        return ContextDiffAdapterLoader.fingerprint_inputs(ckpt_name)  # the file's content decides

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(FOLDER, ckpt_name)
        model, adapter, classes, meta = load_joint(path)
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


class ContextDiffShapesLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ContextDiffShapesLoader",
            display_name="Load ContextDiff Shapes Model",
            category="loaders/contextdiff",
            description="Loads a checkpoint of the shapes recipe (python -m trainer.train --config "
            "trainer/configs/shapes.yaml): a text-to-image model trained from scratch with its adapter "
            "and a CLIP text encoder. Prompts, weights like (red:1.3), blend words and word alignment "
            "run the same code as with an SD checkpoint.",
            inputs=[
                checkpoint_input(
                    "A shapes checkpoint in models/contextdiff/ (e.g. "
                    "runs/shapes/shapes-contextdiff.safetensors copied there)."
                )
            ],
            outputs=[
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
        return ContextDiffAdapterLoader.fingerprint_inputs(ckpt_name)

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(FOLDER, ckpt_name)
        loaded = load_text_joint(path, recipe="shapes")
        adapter = LoadedAdapter(loaded.adapter, loaded.meta, ckpt_name)
        return io.NodeOutput(model_patcher(loaded.model), loaded.clip, pixel_space_vae(), adapter)


class ContextDiffClassConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ContextDiffClassConditioning",
            display_name="ContextDiff Class Conditioning",
            category="conditioning/contextdiff",
            description="Class labels as conditioning tokens (paper §4.3, class-to-image). One label per latent in "
            "the batch, repeated to fill it; -1 is the null class (use it as the negative).",
            inputs=[
                Classes.Input("classes", tooltip="The class tokens from Load ContextDiff Joint Model."),
                io.String.Input("labels", default="0-9", tooltip="e.g. '7', '0-9', '1, 3, 5', '-1'"),
                io.Int.Input("repeat", default=1, min=1, max=1024, tooltip="Each label this many times."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, classes: ClassEmbedding, labels: str, repeat: int) -> io.NodeOutput:
        idx = torch.tensor(parse_classes(labels, classes.num_classes)).repeat_interleave(repeat)
        with torch.no_grad():
            tokens = classes(idx)
        return io.NodeOutput([[tokens, {}]])


class ContextDiffPixelsToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ContextDiffPixelsToImage",
            display_name="ContextDiff Pixels To Image",
            category="latent/contextdiff",
            description="Shows a pixel-space latent (joint models have no VAE): [-1, 1] to an IMAGE, optionally "
            "as one grid, enlarged for viewing.",
            inputs=[
                io.Latent.Input("samples", tooltip="Pixel-space latents of a joint model."),
                io.Int.Input("scale", default=8, min=1, max=64, tooltip="Nearest-neighbour enlargement."),
                io.Int.Input("grid_columns", default=0, min=0, max=256, tooltip="0 = a batch of images."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, samples: dict, scale: int, grid_columns: int) -> io.NodeOutput:
        x = samples["samples"].float().clamp(-1, 1).add(1).div(2)
        x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
        if scale > 1:
            x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
        if grid_columns:
            n, c, h, w = x.shape
            rows = -(-n // grid_columns)
            canvas = torch.ones(c, rows * (h + scale), grid_columns * (w + scale))
            for i in range(n):
                r, col = divmod(i, grid_columns)
                canvas[:, r * (h + scale) : r * (h + scale) + h, col * (w + scale) : col * (w + scale) + w] = x[i]
            x = canvas[None]
        return io.NodeOutput(x.permute(0, 2, 3, 1).contiguous())
