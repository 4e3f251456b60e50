"""ContextDiffVideoEdit: invert and edit a whole video, chunk by chunk, with sparse-causal attention."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..contextdiff.editing import VideoSettings
from ..media.video import VideoError, file_fingerprint, planned_frames, read_video, safe_input_path, write_video
from . import edit_runs, inputs, interrupt, video_runs
from .editing import report
from .pack_node import PackNode

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP, VAE

    from .types import LoadedAdapter

IMAGES_FPS = 8.0  # frames given as images carry no rate
# Declared ranges, checked by ComfyUI when queued and again by input_errors at run time (for values from links).
RANGES = {"chunk_size": (1, 64), "overlap": (0, 32)}


STEPS_TIP = "DDIM steps of the inversion and of the edit (paper: 20)."
MAX_FRAMES_TIP = "Refuse more frames than this (after frame_stride)."
SIZE_TIP = (
    "Video file: shorter side in pixels (multiple of 8). Frames given as images keep their size: resize them upstream."
)
CHUNK_SIZE_TIP = "Frames inverted and edited together (they attend to each other)."
OVERLAP_TIP = "Frames shared by neighbouring chunks, cross-faded; smaller than chunk_size."
MEMORY_LIMIT_GB_TIP = (
    "Memory the edit may use: the attention store of a chunk, the frames and the VAE's working memory. "
    "0: the store gets half of the free memory; a VAE on the CPU, the free memory. On Wan a store over it is not "
    "kept: the source's branch is recomputed in each fused step instead."
)
SAVE_MP4_TIP = "Also write an mp4 to the output folder, at the source frame rate."
FILENAME_PREFIX_TIP = "Name of the mp4 inside the output folder (a subfolder may be given)."
IMAGES_TIP = "Frames (e.g. from VideoHelperSuite's loader); or name a video file instead."
VIDEO_TIP = "Or a video file in ComfyUI's input folder, read with PyAV."


def output_prefix_error(prefix: str) -> str | None:
    """Why ``prefix`` cannot name a file in the output folder (ComfyUI's own rule), or ``None``."""
    if not prefix or not os.path.basename(os.path.normpath(prefix)).strip(". "):
        return "filename_prefix is empty: give a name such as contextdiff/edit"
    out = os.path.abspath(folder_paths.get_output_directory())
    folder = os.path.abspath(os.path.join(out, os.path.dirname(os.path.normpath(prefix))))
    if os.path.commonpath((out, folder)) != out:
        return (
            f"filename_prefix {prefix!r} points outside the output folder: use a name inside it, e.g. contextdiff/edit"
        )
    return None


def video_path_error(video: str | None) -> str | None:
    """Why ``video`` names no file inside the input folder, or ``None`` (also for a link or no video)."""
    if video:
        try:
            safe_input_path(folder_paths.get_input_directory(), video)
        except VideoError as err:
            return str(err)
    return None


def input_errors(
    chunk_size: int | None, overlap: int | None, save_mp4: bool | None, filename_prefix: str | None, video: str | None
) -> str | None:
    """The checks of the inputs' values and how they relate, before anything is read (``None``: not known yet)."""
    for name, value in (("chunk_size", chunk_size), ("overlap", overlap)):
        lo, hi = RANGES[name]
        if value is not None and not lo <= value <= hi:
            return f"{name} must be between {lo} and {hi}, got {value}"
    if chunk_size is not None and overlap is not None and overlap >= chunk_size:
        return f"overlap ({overlap}) must be smaller than chunk_size ({chunk_size})"
    if save_mp4 and filename_prefix is not None:
        error = output_prefix_error(filename_prefix)
        if error:
            return error
    return video_path_error(video)


class ContextDiffVideoEdit(PackNode, display="ContextDiff Video Edit", category="sampling/contextdiff/editing"):
    """Text-guided video editing (paper §4.2): bias-aware DDIM inversion of the frames with sparse-causal attention
    (each frame attends to the first and the previous one), then sampling with the target prompt while fusing the
    source attention. Long videos run in overlapping chunks; a memory estimate refuses jobs that would not fit."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            inputs=[
                inputs.edit_model(inputs.VIDEO_MODEL_TIP),
                inputs.vae("Encodes the frames to latents and decodes the edit."),
                inputs.clip("Encodes both prompts and aligns their shared words."),
                io.String.Input("source_prompt", multiline=True, default="", tooltip="What the video shows."),
                io.String.Input("target_prompt", multiline=True, default="", tooltip="What it should show."),
                inputs.blend_words(),
                inputs.edit_steps(200, STEPS_TIP),
                inputs.edit_cfg(),
                inputs.fuse_start(),
                inputs.blend_threshold(),
                io.Int.Input("max_frames", default=24, min=1, max=4096, tooltip=MAX_FRAMES_TIP),
                io.Int.Input("frame_stride", default=1, min=1, max=64, tooltip="Keep every n-th frame."),
                io.Int.Input("size", default=512, min=64, max=2048, step=8, tooltip=SIZE_TIP),
                io.Int.Input(
                    "chunk_size",
                    default=8,
                    min=RANGES["chunk_size"][0],
                    max=RANGES["chunk_size"][1],
                    tooltip=CHUNK_SIZE_TIP,
                ),
                io.Int.Input(
                    "overlap", default=2, min=RANGES["overlap"][0], max=RANGES["overlap"][1], tooltip=OVERLAP_TIP
                ),
                io.Float.Input(
                    "memory_limit_gb", default=0.0, min=0.0, max=1024.0, step=0.5, tooltip=MEMORY_LIMIT_GB_TIP
                ),
                io.Boolean.Input("save_mp4", default=False, tooltip=SAVE_MP4_TIP),
                io.String.Input("filename_prefix", default="contextdiff/edit", tooltip=FILENAME_PREFIX_TIP),
                inputs.adapter_strength(),
                io.Image.Input("images", optional=True, tooltip=IMAGES_TIP),
                io.String.Input("video", optional=True, default="", tooltip=VIDEO_TIP),
                inputs.adapter("A video adapter tuned with trainer --mode video. Leave empty for the base sampler."),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="The edited frames.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, video: str | None = "") -> bool | str:
        # ComfyUI files a message of this function under every input it takes: it takes only the path, so a path
        # outside the input folder is reported once, under 'video'. The ranges are ComfyUI's own checks (each under
        # its input); how overlap relates to chunk_size, and the output path, are checked first thing at run time.
        return video_path_error(video) or True

    @classmethod
    def fingerprint_inputs(cls, video: str = "", **kwargs: object) -> str:
        # The cache key follows the video file's content, not its name.
        if not video:
            return ""
        try:
            return file_fingerprint(safe_input_path(folder_paths.get_input_directory(), video))
        except VideoError:
            return ""

    @classmethod
    def execute(
        cls,
        model: ModelPatcher,
        vae: VAE,
        clip: CLIP,
        images: torch.Tensor | None = None,
        video: str = "",
        adapter: LoadedAdapter | None = None,
        **widgets: object,
    ) -> io.NodeOutput:
        edit_runs.require_video_edit(model)
        settings = VideoSettings.from_inputs(widgets)
        error = input_errors(settings.chunk_size, settings.overlap, settings.save_mp4, settings.filename_prefix, video)
        if error:
            raise ValueError(error)
        plan = video_runs.plan_video(model, clip, settings)  # before reading or encoding any frame
        shape = frames_to_read(images, video, settings)
        budget = (
            settings.memory_limit_gb * 1e9
            if settings.memory_limit_gb > 0
            else 0.5 * comfy.model_management.get_free_memory(torch.device("cpu"))
        )
        text = tuple(
            video_runs.wan_text_tokens(clip, p) for p in (settings.edit.source_prompt, settings.edit.target_prompt)
        )
        memory = video_runs.memory_check(
            model, vae, shape, settings, budget_bytes=budget, from_file=images is None, text_tokens=text
        )
        frames, fps, warnings = read_frames(images, video, settings)
        result, run_warnings = video_runs.edit_video(
            model, vae, clip, frames, settings, memory=memory, adapter=adapter, plan=plan
        )
        if settings.save_mp4:
            folder, name, counter, _, _ = folder_paths.get_save_image_path(
                settings.filename_prefix, folder_paths.get_output_directory()
            )
            path = os.path.join(folder, f"{name}_{counter:05}.mp4")
            write_video(path, result, fps, progress=lambda *_: interrupt.check())
        return io.NodeOutput(result, ui=report("ContextDiff Video Edit", warnings + run_warnings))


def frames_to_read(images: torch.Tensor | None, video: str, settings: VideoSettings) -> video_runs.FrameShape:
    """How many frames the edit will read and their size, from the images' shape or the video's header (nothing
    decoded); refuses what cannot be edited."""
    if images is not None and video:
        raise ValueError(
            "both images and a video file are given: connect frames to 'images' or name a video "
            "file in 'video', not both"
        )
    if images is not None:
        count = -(-images.shape[0] // settings.frame_stride)
        if count > settings.max_frames:
            raise ValueError(
                f"{count} frames given but max_frames is {settings.max_frames}: raise max_frames or trim the clip"
            )
        return video_runs.FrameShape(count, int(images.shape[1]), int(images.shape[2]))
    if not video:
        raise ValueError("connect frames to 'images' or name a video file from the input folder in 'video'")
    path = safe_input_path(folder_paths.get_input_directory(), video)
    count, width, height = planned_frames(
        path,
        max_frames=settings.max_frames,
        stride=settings.frame_stride,
        size=settings.size,
        memory_limit_bytes=_decode_limit(),
    )
    return video_runs.FrameShape(count or settings.max_frames, height, width)


def _decode_limit() -> int:
    # Decoding is refused before it starts when the frames alone would not fit in the free memory.
    return int(comfy.model_management.get_free_memory(torch.device("cpu")))


def read_frames(
    images: torch.Tensor | None, video: str, settings: VideoSettings
) -> tuple[torch.Tensor, float, list[str]]:
    """The frames to edit (images or the video file; checked by :func:`frames_to_read`), their rate, and
    warnings. Decoding shows its progress and stops on Cancel, frame by frame."""
    warnings = []
    if images is not None:
        frames, fps = images[:: settings.frame_stride], IMAGES_FPS
        if settings.save_mp4:
            warnings.append(f"frames given as images carry no frame rate: the mp4 is written at {IMAGES_FPS:g} fps")
    else:
        path = safe_input_path(folder_paths.get_input_directory(), video)
        bar = comfy.utils.ProgressBar(settings.max_frames)

        def progress(done: int, total: int) -> None:
            interrupt.check()  # each frame is decoded and resized at full resolution: Cancel between frames
            bar.update_absolute(done, total)

        frames, fps = read_video(
            path,
            max_frames=settings.max_frames,
            stride=settings.frame_stride,
            size=settings.size,
            memory_limit_bytes=_decode_limit(),
            progress=progress,
        )
    if frames.shape[0] == 0:
        raise VideoError("the video has no frames: pick another clip")
    return frames, fps, warnings
