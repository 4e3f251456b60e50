"""ContextDiffVideoEdit: invert and edit a whole video, chunk by chunk, with sparse-causal attention."""

from __future__ import annotations

import os

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from ..contextdiff.editing import fused_steps
from ..media.video import VideoError, read_video, safe_input_path, write_video
from . import edit_runtime
from .types import Adapter


def encode_prompt(clip, text: str):
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def attention_footprint(model, latent_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """(tokens, channels) of every attention block at this latent size, from one probe forward pass."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    seen, hooks = [], []
    for module in model.model.diffusion_model.modules():
        if isinstance(module, BasicTransformerBlock):
            hooks.append(module.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape[-2:]))))
    try:
        comfy.model_management.load_models_gpu([model])
        base = model.model
        device = model.load_device
        c = base.latent_format.latent_channels
        x = torch.zeros(1, c, *latent_hw, device=device)
        ctx = torch.zeros(1, 77, base.model_config.unet_config["context_dim"], device=device)
        with torch.no_grad():
            base.apply_model(x, torch.ones(1, device=device), c_crossattn=ctx)
    finally:
        for h in hooks:
            h.remove()
    return seen


def store_bytes_per_frame(footprint, fused: int, bytes_per_value: int, text_tokens: int = 77) -> int:
    """Bytes the attention store needs per frame: q and k of self- and cross-attention per fused step."""
    per_step = sum(2 * n * c + n * c + text_tokens * c for n, c in footprint)
    return fused * per_step * bytes_per_value


def crossfade(chunks: list[tuple[int, torch.Tensor]], total: int) -> torch.Tensor:
    """Overlapping chunks ``(start, frames)`` joined with linear weights in the overlaps."""
    first = chunks[0][1]
    acc = torch.zeros((total,) + tuple(first.shape[1:]), dtype=first.dtype)
    weight = torch.zeros(total)
    for start, frames in chunks:
        n = frames.shape[0]
        w = torch.ones(n)
        if start > 0:
            overlap = max(0, int(weight[start:start + n].gt(0).sum()))
            if overlap:
                w[:overlap] = torch.linspace(0, 1, overlap + 2)[1:-1]
        acc[start:start + n] += frames * w.reshape(-1, *([1] * (frames.dim() - 1)))
        weight[start:start + n] += w
    return acc / weight.reshape(-1, *([1] * (acc.dim() - 1)))


class ContextDiffVideoEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextDiffVideoEdit",
            display_name="ContextDiff Video Edit",
            category="sampling/contextdiff/editing",
            description="Text-guided video editing (paper §4.2): bias-aware DDIM inversion of the frames with "
                        "sparse-causal attention (each frame attends to the first and the previous one), then "
                        "sampling with the target prompt while fusing the source attention. Long videos run in "
                        "overlapping chunks; a memory estimate refuses jobs that would not fit.",
            inputs=[
                io.Model.Input("model"),
                io.Vae.Input("vae"),
                io.Clip.Input("clip"),
                io.String.Input("source_prompt", multiline=True, default=""),
                io.String.Input("target_prompt", multiline=True, default=""),
                io.String.Input("blend_words", default="", tooltip="Edited words whose attention masks the edit."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="DDIM steps (paper: 20)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1, round=0.01),
                io.Float.Input("fuse_start", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Attention is fused for t in [fuse_start*T, T] (paper: 0.5)."),
                io.Float.Input("blend_threshold", default=0.3, min=0.0, max=1.0, step=0.01),
                io.Int.Input("max_frames", default=24, min=1, max=4096, tooltip="Refuse more frames than this."),
                io.Int.Input("frame_stride", default=1, min=1, max=64, tooltip="Video file: keep every n-th frame."),
                io.Int.Input("size", default=512, min=64, max=2048, step=8,
                             tooltip="Video file: shorter side in pixels (multiple of 8)."),
                io.Int.Input("chunk_size", default=8, min=1, max=64, tooltip="Frames inverted and edited together."),
                io.Int.Input("overlap", default=2, min=0, max=32, tooltip="Frames shared by neighbouring chunks."),
                io.Float.Input("memory_limit_gb", default=0.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="Attention store budget; 0 = half of the free memory."),
                io.Boolean.Input("save_mp4", default=False),
                io.String.Input("filename_prefix", default="contextdiff/edit"),
                io.Float.Input("adapter_strength", default=1.0, min=-10.0, max=10.0, step=0.05),
                io.Image.Input("images", optional=True, tooltip="Frames (e.g. from VideoHelperSuite's loader)."),
                io.String.Input("video", optional=True, default="",
                                tooltip="Or a video file in ComfyUI's input folder, read with PyAV."),
                Adapter.Input("adapter", optional=True, tooltip="A video adapter tuned with trainer --mode video."),
            ],
            outputs=[io.Image.Output(display_name="frames")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, overlap, chunk_size, **kwargs):
        if overlap >= chunk_size:
            return f"overlap ({overlap}) must be smaller than chunk_size ({chunk_size})"
        return True

    @classmethod
    def execute(cls, model, vae, clip, source_prompt, target_prompt, blend_words, steps, cfg, fuse_start,
                blend_threshold, max_frames, frame_stride, size, chunk_size, overlap, memory_limit_gb, save_mp4,
                filename_prefix, adapter_strength, images=None, video="", adapter=None) -> io.NodeOutput:
        fps = 8.0
        if images is not None:
            frames = images[::frame_stride]
            if frames.shape[0] > max_frames:
                raise ValueError(f"{frames.shape[0]} frames given but max_frames is {max_frames}: raise max_frames "
                                 "or trim the clip")
        elif video:
            path = safe_input_path(folder_paths.get_input_directory(), video)
            frames, fps = read_video(path, max_frames=max_frames, stride=frame_stride, size=size)
        else:
            raise ValueError("connect frames to 'images' or name a video file from the input folder in 'video'")
        if frames.shape[0] == 0:
            raise VideoError("the video has no frames: pick another clip")
        n = frames.shape[0]
        h, w = frames.shape[1] // 8, frames.shape[2] // 8
        fused = len(fused_steps(steps, fuse_start))
        per_frame = store_bytes_per_frame(attention_footprint(model, (h, w)), fused, 2)
        per_frame += (steps + 2) * 4 * h * w * 4 + frames[0].numel() * 4 * 2   # trajectory + frames in and out
        budget = memory_limit_gb * 1e9 if memory_limit_gb > 0 else \
            0.5 * comfy.model_management.get_free_memory(torch.device("cpu"))
        need = per_frame * min(chunk_size, n) + frames[0].numel() * 4 * 2 * n
        if need > budget:
            fit = max(0, int((budget - frames[0].numel() * 8 * n) // per_frame))
            raise MemoryError(f"editing needs about {need / 1e9:.2f} GB ({per_frame / 1e6:.1f} MB per frame in a "
                              f"chunk of {min(chunk_size, n)}), over the {budget / 1e9:.2f} GB budget; at most "
                              f"{fit} frames per chunk fit: lower chunk_size, size or steps")
        positive_src, positive_tgt = encode_prompt(clip, source_prompt), encode_prompt(clip, target_prompt)
        negative = encode_prompt(clip, "")
        latents = torch.cat([vae.encode(frames[i:i + 4, :, :, :3]) for i in range(0, n, 4)])
        step = max(1, chunk_size - overlap)
        starts = list(range(0, max(1, n - overlap), step)) if n > chunk_size else [0]
        outputs = []
        for start in starts:
            end = min(n, start + chunk_size)
            chunk = {"samples": latents[start:end]}
            frames_in_chunk = end - start if end - start > 1 else None
            source = edit_runtime.invert(model, chunk, positive_src, negative, steps, "ddim_uniform", 1.0, adapter,
                                         adapter_strength, 0, fuse_start, torch.float16, frames=frames_in_chunk)
            edited, _ = edit_runtime.edit(model, source, positive_tgt, negative, cfg, adapter, adapter_strength, clip,
                                          source_prompt, target_prompt, blend_words, blend_threshold)
            outputs.append((start, vae.decode(edited).reshape(-1, *frames.shape[1:3], 3).cpu()))
            if end == n:
                break
        result = crossfade(outputs, n).clamp(0, 1)
        if save_mp4:
            folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                           folder_paths.get_output_directory())
            write_video(os.path.join(folder, f"{name}_{counter:05}.mp4"), result, fps)
        return io.NodeOutput(result)
