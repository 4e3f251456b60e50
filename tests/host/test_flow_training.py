"""The trainer's ``--mode adapter`` on flow-matching families (issue 27 item 4): SD3/SD3.5, Flux (dev, schnell) and
Wan 2.1 t2v, each the tiny random-weight file in the real key layout (``comfy_models.save_flow_model``) loaded as
UNETLoader loads it, with the family's own ComfyUI text encoders and VAE at test size (``helpers.flow_unet_file``:
ComfyUI's SD3, Flux and Wan text-encoder classes with few narrow layers at the real widths, since T5-XXL cannot be
built small; a 16-channel TAESD, Wan 2.1's causal 3D VAE 8 wide), loaded by the trainer's own ``from_comfy``.

- The trainer's conditioning and denoiser are ComfyUI's: the caption's tokens (4096 wide) and pooled output (SD3's
  three encoders: 2048; Flux's CLIP-L: 768; Wan: none) equal CLIPTextEncode's; ``x0hat`` through
  ``BaseBundle.conditioning`` and ``trainer.diffusion.x0_predictor`` equals ComfyUI's sampler path (``process_conds``
  + ``calc_cond_batch``) on that CONDITIONING (Flux dev: FluxGuidance's 3.5), 1e-5 relative, float32; a different
  pooled embedding or guidance value is told apart.
- A few steps on each file write an adapter that records its family; the real host's ContextDiff KSampler loads it
  (ContextDiffAdapterLoader) and runs it with strength 1 on SD3 and Wan (Flux, 3072 wide, in-process; slow).
- The file on another flow family is refused by name before any model call.
The Flux model is 3072 wide (detection fixes its heads): its tests are marked slow.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import captioned_pictures
from PIL import Image
from test_flow_families import FAMILY, KINDS
from test_host_families_training import SMALL, train
from test_host_flow import flow_files  # noqa: F401 (the fixture that puts the tiny files in the host)

ROOT = Path(__file__).resolve().parents[2]
RUN = ["--mode", "adapter", "--base_factory", "helpers:flow_unet_file", "--batch_size", "2", "--steps", "2"]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, comfy_inprocess):
    """The tiny files, written once per module (Flux's is 1.6 GB: written when a slow test asks for it)."""
    from comfy_models import save_flow_model

    folder = tmp_path_factory.mktemp("flow_files")

    def path(kind: str) -> Path:
        p = folder / f"tiny_{kind}.safetensors"
        if not p.exists():
            save_flow_model(p, kind)
        return p

    yield path
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    return captioned_pictures(tmp_path_factory.mktemp("data") / "captions")


_trained: dict = {}


@pytest.fixture(scope="module")
def trained(tiny_files, captions, tmp_path_factory):
    """``trained(kind)``: the adapter file of a 2-step run on the tiny ``kind`` file (one run per kind per module)."""
    out = tmp_path_factory.mktemp("flow_runs")

    def run(kind: str) -> Path:
        if kind not in _trained:
            args = ["--checkpoint", str(tiny_files(kind)), "--dataset", str(captions)]
            train(*RUN, *args, "--output_dir", str(out / kind), "--name", f"trained_{kind}", timeout=1200)
            _trained[kind] = out / kind / f"trained_{kind}.safetensors"
        return _trained[kind]

    yield run
    _trained.clear()


@pytest.mark.parametrize("kind", KINDS)
def test_trainer_conditioning_and_x0hat_are_comfyuis(comfy_inprocess, tiny_files, kind):
    import comfy.samplers
    import comfy.sd
    from comfy.sampler_helpers import convert_cond
    from comfy_models import build_tiny_flow_clip
    from helpers import flow_bundle

    from trainer.diffusion import training_levels, x0_predictor

    patcher = comfy.sd.load_diffusion_model(str(tiny_files(kind)))  # UNETLoader's loader
    bundle = flow_bundle(patcher, torch.device("cpu"))
    model = bundle.model
    model.current_patcher = patcher  # what ComfyUI's sampler sets before calc_cond_batch
    caption = "a red cube on green grass"
    tokens, pooled = bundle.encode(caption)
    # CLIPTextEncode's output of the same encoders (the same seed), and FluxGuidance's default for Flux dev.
    clip = build_tiny_flow_clip("flux" if kind.startswith("flux") else kind)
    [[cond, extra]] = clip.encode_from_tokens_scheduled(clip.tokenize(caption))
    assert torch.equal(tokens, cond) and tokens.shape[-1] == 4096
    assert (pooled is None) == (kind == "wan") and (pooled is None or torch.equal(pooled, extra["pooled_output"]))
    conditioning = [[cond, dict(extra, guidance=3.5) if kind == "flux" else extra]]

    shape = (2, 16, 1, 8, 8) if kind == "wan" else (2, 16, 8, 8)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    sigmas, levels = training_levels(model, "cpu")
    t = torch.tensor([len(sigmas) // 4, len(sigmas) * 3 // 4])
    sigma = sigmas[t]
    drawn = levels.at(t, x0)
    x_t = drawn.level.a * x0 + drawn.level.s * eps
    s = sigma.reshape(-1, *[1] * (x0.dim() - 1))
    torch.testing.assert_close(x_t, (1 - s) * x0 + s * eps)  # the pair is (1 - sigma, sigma) at the model's sigmas
    with torch.no_grad():
        ours = x0_predictor(model, sigma, bundle.conditioning(tokens, pooled, shape))(x_t, t)

    def comfy_x0(conditioning):
        conds = comfy.samplers.process_conds(model, x_t, {"positive": convert_cond(conditioning)}, "cpu")
        with torch.no_grad():
            return comfy.samplers.calc_cond_batch(model, [conds["positive"]], x_t, sigma, {})[0]

    # The network's part of x0hat (x0hat minus what x alone gives: flow's x0hat = x_t - sigma v).
    x_part = model.model_sampling.calculate_denoised(sigma, torch.zeros_like(x_t), x_t)
    reference = comfy_x0(conditioning) - x_part
    assert ((ours - x_part - reference).norm() / reference.norm()).item() <= 1e-5
    if kind in ("sd3", "flux"):  # the pooled embedding (SD3) and FluxGuidance's value (Flux dev) reach the model
        other = [[cond, dict(extra, guidance=1.0)]] if kind == "flux" else [[cond, {"pooled_output": -pooled}]]
        assert ((ours - x_part - (comfy_x0(other) - x_part)).norm() / reference.norm()).item() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_through_the_frozen_model_is_exact(comfy_inprocess, tiny_files, kind):
    """The trainer's x0hat carries the gradient to x_t: on SD3 and Wan equal to plain autograd through ComfyUI's
    model (exactly: the same operations); on Flux, whose blocks update activations in place so that plain autograd
    refuses, against central finite differences along a random direction (float32, step 1e-3: 1e-3 relative)."""
    import comfy.sd
    from comfy_models import flow_conditioning
    from helpers import flow_bundle

    from trainer.diffusion import x0_predictor

    bundle = flow_bundle(comfy.sd.load_diffusion_model(str(tiny_files(kind))), torch.device("cpu"))
    model = bundle.model.requires_grad_(False)
    shape = (2, 16, 1, 8, 8) if kind == "wan" else (2, 16, 8, 8)
    g = torch.Generator().manual_seed(0)
    x, up, direction = (torch.randn(shape, generator=g) for _ in range(3))
    [[tokens, extra]] = flow_conditioning(kind, 1)
    cond = bundle.conditioning(tokens, extra.get("pooled_output"), shape)
    sigma = torch.tensor([0.3, 0.8])
    denoise = x0_predictor(model, sigma, cond)
    x_t = x.clone().requires_grad_(True)
    (denoise(x_t, None) * up).sum().backward()
    if kind.startswith("flux"):
        xp = x.clone().requires_grad_(True)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):  # why the copies
            (model.apply_model(xp, sigma, **cond) * up).sum().backward()
        h = 1e-3
        with torch.no_grad():
            fd = ((denoise(x + h * direction, None) - denoise(x - h * direction, None)) * up).sum() / (2 * h)
        assert (x_t.grad * direction).sum().item() == pytest.approx(fd.item(), rel=1e-3)
    else:
        xp = x.clone().requires_grad_(True)
        (model.apply_model(xp, sigma, **cond) * up).sum().backward()
        assert torch.equal(x_t.grad, xp.grad) and xp.grad.abs().max() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_training_writes_a_file_of_the_family(trained, kind):
    from contextdiff.adapter_io import load_adapter

    adapter, meta = load_adapter(trained(kind))
    assert meta["base_model"] == FAMILY[kind] and meta["config"].context_dim == 4096
    assert meta["config"].latent_channels == 16 and not meta["config"].video
    assert adapter.patch_out.weight.abs().max() > 0  # trained: the zero output layer moved
    out = trained(kind).parent
    losses = [line for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 2 and Image.open(out / "samples.png").size[0] > 0


@pytest.mark.parametrize("kind", ["sd3", "wan"])
def test_trained_adapter_runs_in_the_host_and_refuses_another_family(server, flow_files, trained, kind):  # noqa: F811
    """The real host: UNETLoader on the tiny file, ContextDiffAdapterLoader on the trained file, the ContextDiff
    KSampler at strength 1 against strength 0 (= core euler, test_host_flow); on the other family's file the same
    graph stops with one sentence naming both families."""
    from test_host_families import rel_err, run_latent
    from test_host_flow import graph, sampler

    from devkit.comfy_host import PromptError

    name = f"trained_{kind}.safetensors"
    shutil.copy(trained(kind), server.adapters_dir / name)
    base = run_latent(server, graph(kind), sampler("ours", strength=0.0), adapter=name)
    tuned = run_latent(server, graph(kind), sampler("ours"), adapter=name)
    assert torch.isfinite(tuned).all() and rel_err(tuned, base) > 1e-6
    other = "wan" if kind == "sd3" else "sd3"
    with pytest.raises(PromptError) as err:
        run_latent(server, graph(other), sampler("ours"), adapter=name)
    names = {"sd3": "SD3/SD3.5", "wan": "Wan 2.x"}
    assert f"trained for {names[kind]}, but this model is {names[other]}" in str(err.value)


def test_trained_adapter_on_another_family_is_refused_before_any_model_call(comfy_inprocess, trained):
    """The SD3 file on the Wan model: one sentence naming both families, and the model was never called."""
    from comfy_models import build_flow
    from test_flow_families import run

    from contextdiff.adapter_io import load_adapter
    from devkit import import_pack

    pack = import_pack()
    nodes = {m: importlib.import_module(f"{pack.__name__}.nodes.{m}") for m in ("sampler_function", "types")}
    module, meta = load_adapter(trained("sd3"))
    adapter = nodes["types"].LoadedAdapter(module, meta, "trained_sd3.safetensors")
    calls = []
    model = build_flow("wan").clone()
    model.set_model_unet_function_wrapper(
        lambda apply, args: calls.append(1) or apply(args["input"], args["timestep"], **args["c"])
    )
    sampler = nodes["sampler_function"].contextdiff_ksampler(adapter, "ddim", 0.0, 1.0)
    with pytest.raises(ValueError, match="'trained_sd3.safetensors' was trained for SD3/SD3.5, but this model is Wan"):
        run(model, "wan", sampler)
    assert calls == []


def test_lora_on_a_flow_model_is_refused_by_name(tiny_files, captions, tmp_path):
    """LoRA wraps UNet attention (attn1/attn2), which a DiT does not have: refused before training, no file."""
    from test_trainer import env

    args = ["--checkpoint", str(tiny_files("sd3")), "--dataset", str(captions), "--output_dir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.train", *RUN, *SMALL, *args, "--lora_rank", "2"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0 and not list(tmp_path.glob("*.safetensors"))
    assert "--lora_rank runs on SD1.x, SD2.x and SDXL; on this flow-matching model (SD3/SD3.5)" in proc.stderr
