"""``--base_checkpoint``: an adapter trained on a frozen shapes model (issue 31), the SD user's path on shapes.

The UNet and the text encoder are written back bit for bit (same process and CPU as the file they came from: equality
is exact there), only the adapter's parameters are optimised or get gradients, a run killed after a checkpoint resumes
to the uninterrupted run's weights, and the file loads in the host, where the adapter changes sampling at strength > 0
and strength 0 is the base model."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_shapes_model import host_latent, rel_err
from test_trainer import TINY_SHAPES, final_weights, kill_once_saved, run

QUIET = ["--preview_count", "0", "--log_every", "1"]
# a large learning rate: a few steps move the zero-initialised output projection visibly
ADAPTER_ONLY = [*TINY_SHAPES, *QUIET, "--lr", "5e-2", "--warmup_steps", "1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 2-step shapes model trained without the bias, as bench quality's no-bias models are."""
    out = tmp_path_factory.mktemp("frozen_base")
    run(*TINY_SHAPES, *QUIET, "--steps", "2", "--use_bias", "false", "--output_dir", str(out), "--name", "base")
    return out / "base.safetensors"


def frozen_parts(tensors: dict) -> dict:
    return {k: v for k, v in tensors.items() if not k.startswith("adapter.")}


def test_only_the_adapter_is_trained_and_the_base_is_written_back_unchanged(tmp_path, base):
    out = tmp_path / "frozen"
    run(*ADAPTER_ONLY, "--steps", "3", "--base_checkpoint", str(base), "--output_dir", str(out), "--name", "frozen")
    before, after = load_file(str(base)), load_file(str(out / "frozen.safetensors"))
    assert before.keys() == after.keys()
    frozen = frozen_parts(before)
    assert {k.split(".")[0] for k in frozen} == {"unet", "text"}
    assert all(torch.equal(after[k], v) for k, v in frozen.items()), "a frozen weight changed"
    assert before["adapter.patch_out.weight"].abs().max() == 0  # the base was trained without the bias
    assert after["adapter.patch_out.weight"].abs().max() > 1e-3, "the adapter did not learn"
    # the resumable state holds only what the optimiser trains
    assert all(k.startswith("adapter.") for k in final_weights(out))
    from safetensors import safe_open

    with safe_open(str(out / "frozen.safetensors"), "pt") as f:
        meta = f.metadata()
    training = json.loads(meta["training"])
    assert training["base_checkpoint"] == str(base)
    assert training["base_checkpoint_sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert meta["with_bias"] == "false"  # it describes the denoiser, the base's, trained without the bias


def test_gradients_reach_only_the_adapter(comfy_inprocess, base):
    """One loss and backward: the frozen UNet and text encoder get no gradient, the adapter's output projection
    (the only layer with a gradient at zero initialisation) does, through x_t and the frozen UNet."""
    from trainer.batches import step_generator
    from trainer.config import load_config
    from trainer.shapes_mode import ShapesTask

    task = ShapesTask(load_config([*TINY_SHAPES, "--base_checkpoint", str(base)]), torch.device("cpu"))
    assert set(task.trained_parameters()) == {f"adapter.{k}" for k, _ in task.adapter.named_parameters()}
    task(task.make_batch(step_generator(0, 0, 0))).backward()
    for name, module in (("unet", task.model.diffusion_model), ("text", task.text)):
        params = dict(module.named_parameters())
        assert params and all(not p.requires_grad and p.grad is None for p in params.values()), name
    assert task.adapter.patch_out.weight.grad.abs().max() > 0
    task.train()
    assert task.adapter.training and not task.model.diffusion_model.training and not task.text.training


def test_a_killed_run_resumes_to_the_uninterrupted_weights_and_refuses_a_changed_base(tmp_path, base):
    mine = tmp_path / "base.safetensors"  # this test's copy: it is changed at the end
    shutil.copy(base, mine)
    args = [*ADAPTER_ONLY, "--steps", "8", "--save_every", "2", "--base_checkpoint", str(mine)]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(*args, "--output_dir", str(straight))
    pointer = killed / "state" / "latest"
    stopped_at = kill_once_saved([*args, "--output_dir", str(killed)], killed, 4)
    assert 4 <= stopped_at < 8, "the kill should land mid-run"
    resumed = run(*args, "--output_dir", str(killed), "--resume", "true")
    assert f"resumed from step {stopped_at}" in resumed.stdout, resumed.stdout[-2000:]
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys()
    for k in a:  # same steps, data, noise and optimiser state: equal up to float32 round-off
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    # the same path with other contents (another model) is refused before anything is built
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = load_file(str(mine))
    tensors["unet.out.2.bias"] = tensors["unet.out.2.bias"] + 1.0
    with safe_open(str(base), "pt") as f:
        save_file(tensors, str(mine), metadata=f.metadata())
    latest = pointer.read_text()
    refused = run(*args, "--steps", "10", "--output_dir", str(killed), "--resume", "true", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "file changed since" in refused.stderr and "--base_checkpoint" in refused.stderr, refused.stderr
    assert pointer.read_text() == latest


def test_bad_base_checkpoints_are_refused_before_loading(tmp_path, base, comfy_inprocess):
    for extra, words in (
        (["--unet_channels", "64"], "model_channels"),
        (["--image_size", "32"], "image_size (16 in the file, 32 here)"),
        (["--use_bias", "false"], "nothing would be trained"),
    ):
        proc = run(*TINY_SHAPES, "--base_checkpoint", str(base), *extra, "--output_dir", str(tmp_path), check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and words in proc.stderr, proc.stderr[-2000:]
    from comfy_models import save_tiny_shapes_checkpoint

    other = save_tiny_shapes_checkpoint(tmp_path / "other.safetensors", recipe="digits-words")
    proc = run(*TINY_SHAPES, "--base_checkpoint", str(other), "--output_dir", str(tmp_path), check=False)
    assert proc.returncode == 2 and "give a checkpoint of mode shapes" in proc.stderr, proc.stderr[-2000:]


def test_the_file_loads_in_the_host_and_its_adapter_changes_sampling(tmp_path, server, base):
    out = tmp_path / "frozen"
    run(*ADAPTER_ONLY, "--steps", "4", "--base_checkpoint", str(base), "--output_dir", str(out), "--name", "frozen")
    shutil.copy(out / "frozen.safetensors", server.adapters_dir / "shapes-frozen-adapter.safetensors")
    shutil.copy(base, server.adapters_dir / "shapes-frozen-base.safetensors")
    text = "a small red triangle on the left"
    on = host_latent(server, "shapes-frozen-adapter.safetensors", text, strength=1.0)
    off = host_latent(server, "shapes-frozen-adapter.safetensors", text, strength=0.0)
    plain = host_latent(server, "shapes-frozen-base.safetensors", text, strength=0.0)
    assert rel_err(off, plain) <= 1e-6, "at strength 0 the file is the frozen base model"
    assert rel_err(on, off) > 1e-4, "the trained adapter must change the sample"
