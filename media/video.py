"""Video files in and out with PyAV, as ComfyUI ``IMAGE`` tensors (F, H, W, 3), float32 in [0, 1].

Reading follows ComfyUI-VideoHelperSuite's loader: a frame cap, a stride, a start frame, an
optional resize, and a memory limit checked *before* decoding so a long clip is refused instead
of exhausting RAM. Every failure is a :class:`VideoError` whose message names the problem and the
fix; PyAV's own exceptions never escape.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

try:  # inside the node pack (ComfyUI imports the repository as one package)
    from ..contextdiff.atomic_file import create_temp_file
except ImportError:  # as the top-level package ``media`` (the trainer, analysis, tests)
    from contextdiff.atomic_file import create_temp_file

# Leading bytes of containers we can recognise, so a damaged video and a non-video file get
# different advice (offset, bytes).
_VIDEO_SIGNATURES = (
    (4, b"ftyp"),  # MP4 / MOV / M4V / 3GP
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"GIF8"),  # GIF
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"OggS"),  # Ogg (Theora)
)


class VideoError(ValueError):
    """A video that cannot be read or written; the message says what is wrong and what to do."""


# ComfyUI's error dialog names an error by its module, which for a custom node is its install path: the
# pack-relative name reads cleanly (see contextdiff/errors.py).
VideoError.__module__ = "media.video"


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream."""

    frames: int  # exact when the container stores it, else duration x fps
    fps: float
    width: int
    height: int
    duration_s: float
    frames_estimated: bool = False


def estimate_frame_bytes(height: int, width: int, channels: int = 3, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one (height, width, channels) frame of ``dtype``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(height) * int(width) * int(channels) * itemsize


def _fmt_bytes(n: float) -> str:
    # Decimal units, as file managers and most users count them.
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB"


def _existing_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path} does not exist; check the path or put the video in ComfyUI's input folder")
    if not path.is_file():
        # A FIFO or device would block av.open forever; a folder is a plain mistake.
        raise VideoError(f"{path} is not a regular file; point to the video file itself")
    return path


def _open_error(path: Path, err: Exception) -> VideoError:
    size = path.stat().st_size
    if size == 0:
        return VideoError(f"{path.name} is empty (0 bytes); copy the video again or pick another file")
    with open(path, "rb") as f:
        head = f.read(16)
    if any(head[o : o + len(sig)] == sig for o, sig in _VIDEO_SIGNATURES):
        return VideoError(
            f"{path.name} looks like a video but is truncated or corrupt ({err.__class__.__name__}); "
            f"copy it again or re-encode it (for example with ffmpeg -i {path.name} out.mp4)"
        )
    return VideoError(
        f"{path.name} is not a video file that FFmpeg recognises; pick an .mp4, .webm, .mkv, .mov or .gif file"
    )


def _open(path: Path):
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise _open_error(path, err) from err


def _info(container, path: Path) -> VideoInfo:
    if not container.streams.video:
        raise VideoError(f"{path.name} has no video stream (audio only?); pick a file that contains video")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise VideoError(
            f"{path.name} does not state a frame rate; re-encode it (for example with "
            f"ffmpeg -i {path.name} -r 24 out.mp4)"
        )
    fps = float(rate)
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = 0.0
    frames, estimated = int(stream.frames or 0), False
    if frames <= 0:
        # WebM/MKV usually do not store a frame count; estimate it from duration and rate.
        frames, estimated = max(0, round(duration * fps)), True
    if not duration and frames:
        duration = frames / fps
    if stream.codec_context is None:
        raise VideoError(
            f"{path.name} has a video stream this FFmpeg cannot decode (unknown or damaged codec data); "
            f"re-encode it (for example with ffmpeg -i {path.name} out.mp4)"
        )
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise VideoError(
            f"{path.name} has a video stream without a size; re-encode it "
            f"(for example with ffmpeg -i {path.name} out.mp4)"
        )
    return VideoInfo(
        frames=frames, fps=fps, width=width, height=height, duration_s=duration, frames_estimated=estimated
    )


def probe_video(path) -> VideoInfo:
    """Frame count, rate, size and duration of the first video stream, without decoding."""
    path = _existing_file(path)
    container = _open(path)
    try:
        return _info(container, path)
    finally:
        container.close()


def target_size(width: int, height: int, size) -> tuple[int, int]:
    """Output (width, height) for ``size``; sides of a resize are rounded down to multiples of 8."""
    if size is None:
        return width, height
    if isinstance(size, bool) or not isinstance(size, (int, tuple, list)):
        raise VideoError(f"size must be None, an int or a (width, height) pair, not {size!r}")
    if isinstance(size, int):
        if size < 8:
            raise VideoError(f"size {size} is too small; use at least 8 (pixels of the shorter side)")
        scale = size / min(width, height)
        w, h = width * scale, height * scale
    else:
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
            raise VideoError(f"size must be a (width, height) pair of ints, not {size!r}")
        w, h = size
        if w < 8 or h < 8:
            raise VideoError(f"size {tuple(size)} is too small; use at least 8x8")
    # Latent diffusion models need sides divisible by 8 (the VAE's downsampling factor).
    return max(8, int(w) // 8 * 8), max(8, int(h) // 8 * 8)


def _check_int(name: str, value, minimum: int, allow_none: bool = False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise VideoError(f"{name} must be an integer >= {minimum}, not {value!r}")


def _check_read_args(max_frames, stride, start_frame, memory_limit_bytes) -> None:
    _check_int("max_frames", max_frames, 1, allow_none=True)
    _check_int("stride", stride, 1)
    _check_int("start_frame", start_frame, 0)
    _check_int("memory_limit_bytes", memory_limit_bytes, 1, allow_none=True)


def _decoded_frame_bytes(width: int, height: int) -> int:
    return estimate_frame_bytes(height, width) + estimate_frame_bytes(height, width, dtype=torch.uint8)


def _planned(
    info: VideoInfo, path: Path, max_frames, stride: int, start_frame: int, size, memory_limit_bytes
) -> tuple[int, int, int]:
    out_w, out_h = target_size(info.width, info.height, size)
    if not info.frames_estimated and info.frames and start_frame >= info.frames:
        raise VideoError(
            f"start_frame {start_frame} is past the end of {path.name} "
            f"({info.frames} frames); use a start_frame below {info.frames}"
        )
    expected = math.ceil(max(0, info.frames - start_frame) / stride)
    if max_frames is not None:
        expected = min(expected, max_frames) if expected else max_frames
    per_frame = _decoded_frame_bytes(out_w, out_h)
    if memory_limit_bytes is not None and expected * per_frame > memory_limit_bytes:
        raise VideoError(_memory_message(expected, out_w, out_h, per_frame, memory_limit_bytes))
    return expected, out_w, out_h


def planned_frames(
    path,
    max_frames: int | None = None,
    stride: int = 1,
    start_frame: int = 0,
    size: int | Sequence[int] | None = None,
    memory_limit_bytes: int | None = None,
) -> tuple[int, int, int]:
    """``(frames, width, height)`` that :func:`read_video` with these arguments will decode, from the container's
    header alone (nothing decoded): what a memory estimate needs before decoding starts. The frame count is the
    container's (an estimate from its duration where it stores none; ``max_frames`` when it says nothing).
    Refuses, as :func:`read_video` would, frames that would not fit in ``memory_limit_bytes``."""
    _check_read_args(max_frames, stride, start_frame, memory_limit_bytes)
    path = _existing_file(path)
    container = _open(path)
    try:
        return _planned(_info(container, path), path, max_frames, stride, start_frame, size, memory_limit_bytes)
    finally:
        container.close()


def read_video(
    path,
    max_frames: int | None = None,
    stride: int = 1,
    start_frame: int = 0,
    size: int | Sequence[int] | None = None,
    memory_limit_bytes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, float]:
    """Decode frames ``start_frame, start_frame + stride, ...`` (at most ``max_frames``).

    Returns ``(frames, fps)``: frames (F, H, W, 3) float32 in [0, 1]; fps is the source rate
    divided by ``stride``. ``size``: None (native), an int (shorter side, aspect kept) or
    (width, height). Peak memory is the float32 output plus a uint8 staging copy; it is checked
    against ``memory_limit_bytes`` before decoding starts.
    """
    _check_read_args(max_frames, stride, start_frame, memory_limit_bytes)
    path = _existing_file(path)
    container = _open(path)
    try:
        info = _info(container, path)
        expected, out_w, out_h = _planned(info, path, max_frames, stride, start_frame, size, memory_limit_bytes)
        per_frame = _decoded_frame_bytes(out_w, out_h)

        stream = container.streams.video[0]
        # Slice threads only: frame threading hides decode errors, so a truncated file would
        # come back short instead of being reported.
        stream.thread_type = "SLICE"
        staged: list[np.ndarray] = []
        index = -1
        try:
            for frame in _frames(container, stream):
                index += 1
                if index < start_frame or (index - start_frame) % stride:
                    continue
                if memory_limit_bytes is not None and (len(staged) + 1) * per_frame > memory_limit_bytes:
                    # Only reachable when the frame count was an estimate that proved too low.
                    raise VideoError(
                        _memory_message(len(staged) + 1, out_w, out_h, per_frame, memory_limit_bytes, at_least=True)
                    )
                staged.append(_resize_uint8(frame.to_ndarray(format="rgb24"), out_w, out_h))
                if progress is not None:
                    progress(len(staged), max(expected, len(staged)))
                if max_frames is not None and len(staged) >= max_frames:
                    break
        except (av.error.FFmpegError, _CutPacket) as err:
            if index <= 0 and not staged:
                raise VideoError(
                    f"{path.name} has no decodable video frames; re-encode it (for example "
                    f"with ffmpeg -i {path.name} out.mp4) or pick another file"
                ) from err
            raise VideoError(
                f"{path.name} is truncated or corrupt after {index + 1} frames; re-encode it "
                f"(for example with ffmpeg -i {path.name} out.mp4) or lower max_frames "
                f"to stay before the damage"
            ) from err
    finally:
        container.close()

    if not staged:
        if index >= 0:
            raise VideoError(
                f"start_frame {start_frame} is past the end of {path.name} ({index + 1} "
                f"frames); use a start_frame below {index + 1}"
            )
        raise VideoError(
            f"{path.name} has no decodable video frames; re-encode it (for example "
            f"with ffmpeg -i {path.name} out.mp4) or pick another file"
        )
    # Fill a preallocated float tensor and drop each staged frame as it is copied, so peak
    # memory stays at the output plus the uint8 staging, not two float copies.
    frames = torch.empty((len(staged), out_h, out_w, 3), dtype=torch.float32)
    for i in range(0, len(staged), 16):
        chunk = staged[i : i + 16]
        frames[i : i + len(chunk)].copy_(torch.from_numpy(np.stack(chunk)))
        staged[i : i + len(chunk)] = [None] * len(chunk)
    frames.div_(255.0)
    return frames, info.fps / stride


class _CutPacket(Exception):
    """The demuxer read less than the index promised for a packet: the file ends (or is damaged) there."""


def _frames(container, stream):
    """The stream's frames in order, refusing a packet the demuxer could not read whole.

    Decoders differ on a cut packet: H.264 usually raises, MPEG-4 Part 2 conceals the damage and goes on,
    and either way the frames after it are missing. The demuxer marks a short read as corrupt whatever the
    codec, so the check is made there rather than left to the decoder.
    """
    for packet in container.demux(stream):
        if packet.is_corrupt:
            raise _CutPacket(f"packet at byte {packet.pos} is cut short")
        yield from packet.decode()


def _memory_message(n: int, w: int, h: int, per_frame: int, limit: int, at_least: bool = False) -> str:
    fit = limit // per_frame
    more = "at least " if at_least else ""
    return (
        f"reading this video needs {more}{_fmt_bytes(n * per_frame)} for {n} frames at {w}x{h}; "
        f"at most {fit} frames fit in the {_fmt_bytes(limit)} limit: lower max_frames or size"
    )


def _resize_uint8(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return rgb
    x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    # Antialiased bilinear: a plain bilinear downscale aliases (moire on fine texture).
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.squeeze(0).permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _to_uint8(frames) -> np.ndarray:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, torch.Tensor):
        raise VideoError(f"frames must be a tensor or array, not {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise VideoError(f"frames must have shape (F, H, W, 3) with F >= 1, not {tuple(frames.shape)}")
    frames = frames.detach().cpu()
    if frames.dtype == torch.uint8:
        return frames.numpy()
    if not frames.is_floating_point():
        raise VideoError(f"frames must be float in [0, 1] or uint8, not {frames.dtype}")
    return (frames.float().clamp(0, 1) * 255).round_().to(torch.uint8).numpy()


def write_video(
    path,
    frames,
    fps: float,
    codec: str = "libx264",
    crf: int = 18,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Encode (F, H, W, 3) frames (float in [0, 1] or uint8) to ``path``, atomically.

    Odd sizes are padded to even (yuv420p halves the chroma); libx264 falls back to mpeg4 when the
    installed PyAV lacks it. ``progress(done, total)`` is called before each frame is encoded (an exception
    it raises, such as a cancel, stops the encoding and leaves no file). Returns the path written.
    """
    path = Path(path)
    if not (isinstance(fps, (int, float, Fraction)) and fps > 0 and math.isfinite(fps)):
        raise VideoError(f"fps must be a positive number, not {fps!r}")
    data = _to_uint8(frames)
    n, h, w, _ = data.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        # Repeat the last row/column instead of adding black so the border does not bleed.
        data = np.pad(data, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    if codec == "libx264" and "libx264" not in av.codecs_available:
        codec = "mpeg4"
    if codec not in av.codecs_available:
        raise VideoError(f"codec {codec!r} is not available in this PyAV build; use libx264 or mpeg4")

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same folder so os.replace is an atomic rename; the real suffix lets FFmpeg pick the muxer.
        # Mode 0666 & ~umask like every other output (mkstemp's 0600 would hide it from other users).
        tmp = str(create_temp_file(path.parent, f".{path.stem}.", f".tmp{path.suffix}"))
    except OSError as err:
        raise VideoError(
            f"cannot create {path.name} in {path.parent} ({err.strerror}); pick a writable output folder"
        ) from err
    try:
        options = {"movflags": "+faststart"} if path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
        with av.open(tmp, mode="w", options=options) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = data.shape[2], data.shape[1]
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(int(crf))}
            else:
                # mpeg4 has no CRF; a generous bit rate keeps it near-lossless at these sizes.
                stream.bit_rate = int(data.shape[1] * data.shape[2] * float(fps) * 4)
            for i in range(n):
                if progress is not None:
                    progress(i, n)
                frame = av.VideoFrame.from_ndarray(data[i], format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, (av.error.FFmpegError, OSError)):
            raise VideoError(
                f"could not write {path.name} ({err}); check the folder is writable and "
                f"the extension is a video format such as .mp4"
            ) from err
        raise
    return path


def safe_input_path(input_dir, name) -> Path:
    """``input_dir / name`` resolved; refuses names that escape ``input_dir`` or do not exist."""
    base = Path(input_dir).resolve()
    name = str(name)
    if not name or Path(name).is_absolute():
        raise VideoError(f"{name!r} is not a file name inside the input folder; give a path relative to {base}")
    # resolve() follows symlinks, so a link pointing outside the folder is caught as well as "..".
    target = (base / name).resolve()
    if not target.is_relative_to(base):
        raise VideoError(f"{name!r} points outside the input folder {base}; move the video into that folder")
    if not target.is_file():
        raise VideoError(f"{name!r} was not found in the input folder {base}; upload it there or fix the name")
    return target


def file_fingerprint(path, chunk_size: int = 1 << 20) -> str:
    """sha256 of the file content, for ComfyUI's ``IS_CHANGED``/fingerprint change detection."""
    path = _existing_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        # Chunked so multi-GB videos are hashed in constant memory.
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
