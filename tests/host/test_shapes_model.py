"""The text-conditioned shapes model: its CLIP text encoder against ComfyUI's own encoding, prompt weights,
the trainer's recipe (a 2-step run whose checkpoint the shapes workflows load and run in the real host),
the loader's refusals, and prompts outside the world's vocabulary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from devkit.comfy_host import PromptError, ui_to_api
from devkit.shapes_inputs import CLIP_NAME, IMAGE_NAME, write_inputs

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "trainer" / "configs" / "shapes.yaml"
SHAPES_WORKFLOWS = ("shapes_text_to_image", "shapes_image_edit", "shapes_video_edit")
PROMPTS = [
    "a large red circle in the centre",
    "a small blue square on the left and a large green cross at the top",
    "a purple dodecahedron, glowing quokka",
    "",
]


@pytest.fixture(scope="module")
def tiny_clip(comfy_inprocess):
    from hostside.text_encoder import build_text_clip, text_config

    return build_text_clip(text_config(64, 2, 4), init_seed=3)


def test_training_encoder_matches_clip_text_encode(tiny_clip):
    """The trainer's differentiable encoder is ComfyUI's CLIPTextEncode computation (same tokens, same layer,
    same pooled output)."""
    from hostside.text_encoder import encode_batch

    batch, pooled = encode_batch(tiny_clip, PROMPTS)
    for row, row_pooled, prompt in zip(batch, pooled, PROMPTS, strict=False):
        cond, host_pooled = tiny_clip.encode_from_tokens(tiny_clip.tokenize(prompt), return_pooled=True)
        assert cond.shape == (1, 77, 64) and host_pooled.shape == (1, 64)
        assert (cond[0] - row).abs().max() <= 1e-5 * max(1.0, float(row.abs().max()))
        assert (host_pooled[0] - row_pooled).abs().max() <= 1e-5 * max(1.0, float(row_pooled.abs().max()))
    assert (batch[0] - batch[1]).abs().max() > 1e-2, "different captions must give different conditioning"
    assert (pooled[0] - pooled[1]).abs().max() > 1e-2


def test_prompt_weight_scales_only_the_weighted_word(tiny_clip):
    """'(red:1.3)' moves the tokens of 'red' 1.3 times as far from the empty prompt's, and nothing else."""
    from hostside.text_encoder import encode_batch, token_ids

    plain, weighted = "a large red circle in the centre", "a large (red:1.3) circle in the centre"
    cond, _ = tiny_clip.encode_from_tokens(tiny_clip.tokenize(weighted), return_pooled=True)
    base, empty = encode_batch(tiny_clip, [plain, ""])[0]
    red = token_ids(tiny_clip, ["red"])[0][1]
    at = [i for i, t in enumerate(token_ids(tiny_clip, [plain])[0]) if t == red]
    assert len(at) == 1
    expected = base.clone()
    expected[at] = empty[at] + 1.3 * (base[at] - empty[at])
    assert (cond[0] - expected).abs().max() <= 1e-5 * float(expected.abs().max())
    assert (cond[0][at] - base[at]).abs().max() > 1e-3


def test_shapes_config_refuses_bad_unet_layout():
    from trainer.config import ConfigError, load_config

    cfg = load_config(["--config", str(RECIPE)])
    assert cfg.mode == "shapes" and cfg.image_size == 32 and cfg.unet_levels() == (1, 2, 2)
    for argv, words in (
        (["--unet_mult", "1,two"], "integers"),
        (["--attention_from_level", "3"], "levels"),
        (["--text_heads", "3"], "divisible"),
        (["--image_size", "30"], "multiple of 4"),
    ):
        with pytest.raises(ConfigError, match=words):
            load_config(["--config", str(RECIPE), *argv])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The shipped recipe, 2 steps: the checkpoint the trainer writes (tiny batch, one preview per prompt)."""
    out = tmp_path_factory.mktemp("shapes_run")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.train",
            "--config",
            str(RECIPE),
            "--steps",
            "2",
            "--batch_size",
            "4",
            "--preview_count",
            "1",
            "--preview_steps",
            "2",
            "--output_dir",
            str(out),
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    return out / "shapes-contextdiff.safetensors"


def small(prompt: dict, frames: int = 4) -> dict:
    """The same graph with CPU-test numbers: 3 steps, 1 image, at most ``frames`` frames (fuse_start 0.5:
    the workflows' 0.9 of 3 steps fuses no step, which the nodes refuse)."""
    for node in prompt.values():
        for key, value in {"steps": 3, "fuse_start": 0.5, "batch_size": 1, "max_frames": frames}.items():
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = value
    return prompt


def run_workflow(server, name: str, ckpt: str, **changes) -> list[Path]:
    prompt = small(ui_to_api(json.loads((ROOT / "workflows" / f"{name}.json").read_text()), server.get("/object_info")))
    for node in prompt.values():
        if node["class_type"] == "ContextDiffShapesLoader":
            node["inputs"]["ckpt_name"] = ckpt
    for node_id, inputs in changes.items():
        prompt[node_id]["inputs"].update(inputs)
    entry = server.run(prompt, timeout=600)
    return [
        server.output_dir / im.get("subfolder", "") / im["filename"]
        for out in entry["outputs"].values()
        for im in out.get("images", [])
    ]


def test_two_step_training_writes_a_checkpoint_the_workflows_run(server, trained):
    from PIL import Image

    from contextdiff.checkpoint import TEXT_JOINT, identify

    fmt, meta = identify(trained)
    assert fmt is TEXT_JOINT and meta["recipe"] == "shapes" and meta["with_bias"] == "true"
    assert json.loads(meta["training"])["steps"] == 2 and json.loads(meta["text_config"])["vocab_size"] == 49408
    assert (trained.parent / "samples.png").is_file() and (trained.parent / "loss.png").is_file()
    shutil.copy(trained, server.adapters_dir / "shapes-two-steps.safetensors")
    write_inputs(server.input_dir, frames=4)
    saved = {name: run_workflow(server, name, "shapes-two-steps.safetensors") for name in SHAPES_WORKFLOWS}
    # bias on and off; source + two edits; 4 source frames + 4 edited frames (each 4x for viewing)
    assert {name: len(images) for name, images in saved.items()} == dict(zip(SHAPES_WORKFLOWS, (2, 3, 8), strict=False))
    for name, images in saved.items():
        for path in images:
            picture = Image.open(path).convert("RGB")
            assert picture.size == (128, 128), f"{name}: {path.name} is {picture.size}"
            assert max(hi - lo for lo, hi in picture.getextrema()) > 0, f"{name}: {path.name} is a flat image"


_runs: list[str] = []


def host_latent(server, ckpt: str, text: str, cfg: float = 3.0, strength: float = 1.0, seed: int = 5) -> torch.Tensor:
    """Loader -> core CLIPTextEncode -> ContextDiff KSampler -> SaveLatent, in the host."""
    _runs.append(text)
    prefix = f"shapes_latent_{len(_runs)}"
    prompt = {
        "load": {"class_type": "ContextDiffShapesLoader", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["load", 1], "text": text}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["load", 1], "text": ""}},
        "empty": {
            "class_type": "EmptyChromaRadianceLatentImage",
            "inputs": {"width": 32, "height": 32, "batch_size": 2},
        },
        "sample": {
            "class_type": "ContextDiffKSampler",
            "inputs": {
                "model": ["load", 0],
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["empty", 0],
                "adapter": ["load", 3],
                "seed": seed,
                "steps": 4,
                "cfg": cfg,
                "scheduler": "simple",
                "method": "ddim",
                "eta": 0.0,
                "adapter_strength": strength,
                "denoise": 1.0,
            },
        },
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": prefix}},
    }
    server.run(prompt)
    return load_file(str(sorted(server.output_dir.glob(f"{prefix}_*.latent"))[-1]))["latent_tensor"]


def reference_latent(path: Path, text: str, cfg: float = 3.0, strength: float = 1.0, seed: int = 5) -> torch.Tensor:
    """The same run without the host: the trainer's text encoder, hand-written CFG, contextdiff's DDIM."""
    import comfy.sample
    import comfy.samplers

    from contextdiff import sampling
    from contextdiff.bias import adapter_bias
    from hostside.joint_checkpoints import load_text_joint
    from hostside.text_encoder import encode_batch

    loaded = load_text_joint(path, recipe="shapes")
    model, ms = loaded.model, loaded.model.model_sampling
    tokens, pooled = (c.detach() for c in encode_batch(loaded.clip, [text, ""]))
    pos, neg = (
        {"c_crossattn": tokens[i : i + 1].expand(2, -1, -1), "y": pooled[i : i + 1].expand(2, -1)} for i in (0, 1)
    )
    sigmas = comfy.samplers.calculate_sigmas(ms, "simple", 4)

    def denoiser(x, sigma, **_):
        with torch.no_grad():
            c, u = model.apply_model(x, sigma, **pos), model.apply_model(x, sigma, **neg)
        return u + cfg * (c - u)

    x = comfy.sample.prepare_noise(torch.zeros(2, 3, 32, 32), seed) * torch.sqrt(1.0 + sigmas[0] ** 2)
    bias = adapter_bias(loaded.adapter, pos["c_crossattn"], ms.timestep, float(ms.sigma_max), strength)
    return sampling.sample_contextdiff_ddim(denoiser, x, sigmas, bias=bias, disable=True)


@pytest.fixture(scope="module")
def tiny_shapes(server, comfy_inprocess):
    from comfy_models import save_tiny_shapes_checkpoint

    return save_tiny_shapes_checkpoint(server.adapters_dir / "shapes-tiny.safetensors", seed=1)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def test_host_clip_text_encode_gives_the_trainers_conditioning(server, tiny_shapes):
    """CLIPTextEncode on the loader's CLIP, sampled by the ContextDiff KSampler in the host, equals the run built
    from the trainer's encoder and contextdiff's sampler; another caption or a weight changes the result."""
    text = "a small red triangle on the left"
    host = host_latent(server, tiny_shapes.name, text)
    assert rel_err(host, reference_latent(tiny_shapes, text)) <= 1e-4
    assert rel_err(host_latent(server, tiny_shapes.name, "a small green triangle on the left"), host) > 1e-3
    assert rel_err(host_latent(server, tiny_shapes.name, "a small (red:1.4) triangle on the left"), host) > 1e-3
    no_bias = host_latent(server, tiny_shapes.name, text, strength=0.0)
    assert rel_err(no_bias, reference_latent(tiny_shapes, text, strength=0.0)) <= 1e-4
    assert rel_err(no_bias, host) > 1e-4, "the adapter's bias must change the sample"


def test_prompt_outside_the_vocabulary_encodes_and_samples(server, tiny_shapes, tiny_clip):
    """Words the world never uses still tokenise (CLIP's byte-level BPE has no unknown token) and sample."""
    from hostside.text_encoder import token_ids

    text = "a glorious zyzzyva beside the quokka, 🦊 xqjv"
    ids = token_ids(tiny_clip, [text])[0]
    words = ids[1 : ids.index(49407)]
    assert len(words) > len(text.split()), "rare words become several BPE pieces"
    latent = host_latent(server, tiny_shapes.name, text)
    assert torch.isfinite(latent).all() and latent.std() > 0
    assert rel_err(latent, reference_latent(tiny_shapes, text)) <= 1e-4


def test_shapes_loader_refuses_other_recipes(server, tiny_shapes, comfy_inprocess):
    from comfy_models import save_tiny_digits_checkpoint, save_tiny_shapes_checkpoint

    save_tiny_digits_checkpoint(server.adapters_dir / "digits-for-shapes.safetensors")
    save_tiny_shapes_checkpoint(server.adapters_dir / "stripes-world.safetensors", recipe="stripes")
    cases = {
        "digits-for-shapes.safetensors": "is a ContextDiff class-conditional joint checkpoint (recipe digits), "
        "which Load ContextDiff Shapes Model does not read: load it with Load ContextDiff Joint Model",
        "stripes-world.safetensors": "was trained on recipe 'stripes', this loader reads 'shapes' checkpoints: "
        "pick a shapes checkpoint",
    }
    for name, words in cases.items():
        with pytest.raises(PromptError) as refused:
            host_latent(server, name, "a red circle")
        assert words in str(refused.value)


def test_workflow_sources_are_the_shapes_world_renders(tmp_path):
    """The image and clip the workflows load are shapesworld's renders of their captions, frame for frame."""
    import numpy as np
    from PIL import Image, ImageSequence

    from devkit.shapes_inputs import EDIT_SCENE, render_clip
    from shapesworld import world

    captions = write_inputs(tmp_path)
    assert captions[IMAGE_NAME] == "a large red circle in the centre"
    assert np.array_equal(np.asarray(Image.open(tmp_path / IMAGE_NAME).convert("RGB")), world.render(EDIT_SCENE, 32))
    frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(tmp_path / CLIP_NAME))]
    assert len(frames) == 8 and all(np.array_equal(a, b) for a, b in zip(frames, render_clip(), strict=False))
    for name in SHAPES_WORKFLOWS[1:]:
        text = (ROOT / "workflows" / f"{name}.json").read_text()
        assert captions[IMAGE_NAME if "image" in name else CLIP_NAME] in text
