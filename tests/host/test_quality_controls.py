"""bench quality --controls' measurement of one edit (bench/quality_controls.py): the reconstruction of inversion alone,
through the pack's inversion and edit runs on a shapes checkpoint, is what exact inversion improves."""

from __future__ import annotations

import importlib

import pytest


@pytest.fixture(scope="module")
def shapes(comfy_inprocess, tmp_path_factory):
    from comfy_models import save_tiny_shapes_checkpoint

    from bench import quality
    from devkit import import_pack

    pack = import_pack()
    for sub in ("paths", "joint", "samplers", "edit_runs"):
        importlib.import_module(f"{pack.__name__}.nodes.{sub}")
    path = save_tiny_shapes_checkpoint(tmp_path_factory.mktemp("controls") / "models" / "tiny.safetensors", seed=1)
    bundle = quality.load(path, pack)
    # A random UNet's inversion is ill-conditioned (no solver recovers the source through it); the posterior mean of
    # Gaussian data, E[x0 | x], is a smooth denoiser whose DDIM inversion is well posed (as in test_host_samplers).
    bundle.model = bundle.model.clone()
    bundle.model.set_model_unet_function_wrapper(gaussian_posterior_mean)
    return pack, bundle


def gaussian_posterior_mean(apply_model, args):
    x, sigma = args["input"], args["timestep"]
    return x / (1.0 + sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype) ** 2)


@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_exact_inversion_reconstructs_what_plain_inversion_loses(shapes, strength):
    """Inverted with its caption and sampled back with it at guidance 1 (no fusion), the source returns: with exact
    inversion to within a few 1/255 (the images are rounded to 8 bits), far closer than with plain DDIM inversion;
    with the adapter's bias (strength 1) as without it. The edit's own scores come from the same inversion."""
    from bench import quality
    from bench import quality_controls as qc
    from shapesworld import scoring

    pack, bundle = shapes
    tasks = scoring.edit_tasks(quality.EDIT_SEED, 1)
    s = quality.Settings(steps=8, strength=strength)
    plain = qc.edit_rows(pack, bundle, tasks, s, 0, recon=True)
    exact = qc.edit_rows(pack, bundle, tasks, s, 30, recon=True)
    # 8-bit images: exact inversion returns every pixel within 8/255 (measured: all identical, PSNR capped at 60 dB);
    # plain inversion loses much of it (measured: 19.7 dB at strength 1, 8 steps)
    assert exact["agree_tol_recon"] == 1.0 and exact["psnr_recon"] >= 45.0
    assert plain["psnr_recon"] < 35.0 and plain["agree_tol_recon"] < 0.5
    assert {"success", "agree_tol", "psnr_outside", "cpu_s"} <= exact.keys()
