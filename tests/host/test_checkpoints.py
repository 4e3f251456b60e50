"""The three checkpoint formats (adapter, joint, shapes) share one registry, one version check, one wrong-loader
message and the same validation of the weights (contextdiff/checkpoint.py).

Each format's file goes to each loader; versions, bad weights and forged configurations are tried on every
format alike. Files are tiny random models written by the same functions the trainer uses.
"""

from __future__ import annotations

import json
import resource
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from contextdiff import checkpoint
from contextdiff.adapter import AdapterConfig, ContextAdapter
from contextdiff.adapter_io import load_adapter, save_adapter
from contextdiff.checkpoint import ADAPTER, FORMATS, JOINT, TEXT_JOINT, CheckpointError

# The metadata keys each format has written since its version 1; files written before must keep loading.
KEYS = {
    ADAPTER: {"config", "latent_channels", "context_dim", "base_model"},
    JOINT: {"recipe", "unet_config", "adapter_config", "latent_channels", "context_dim", "base_model", "with_bias"}
    | {"num_classes", "class_tokens"},
    TEXT_JOINT: {"recipe", "unet_config", "adapter_config", "latent_channels", "context_dim", "base_model"}
    | {"with_bias", "text_config", "tokenizer"},
}
COMMON = {"format", "format_version", "training", "producer"}


def _load(fmt):
    """The loader function of a format (what its node calls)."""
    from hostside.joint_checkpoints import load_joint, load_text_joint

    return {ADAPTER: load_adapter, JOINT: load_joint, TEXT_JOINT: load_text_joint}[fmt]


@pytest.fixture(scope="module")
def files(tmp_path_factory, comfy_inprocess):
    """One small file of each format, with weights in a plausible range (seeded)."""
    from comfy_models import save_tiny_shapes_checkpoint

    from contextdiff.joint_model import ClassEmbedding
    from hostside.joint_checkpoints import save_joint
    from hostside.pixel_unet import build_joint_model, joint_unet_config

    d = tmp_path_factory.mktemp("formats")
    torch.manual_seed(0)
    adapter = ContextAdapter(AdapterConfig(latent_channels=1, context_dim=32, dim=32, depth=1, heads=4))
    torch.nn.init.normal_(adapter.patch_out.weight, std=0.02)
    cfg = joint_unet_config(model_channels=32, context_dim=32)
    return {
        ADAPTER: save_adapter(adapter, d / "adapter.safetensors", "sd15", training={"steps": 1}),
        JOINT: save_joint(d / "digits.safetensors", build_joint_model(cfg, 0), adapter, ClassEmbedding(10, 32), cfg),
        TEXT_JOINT: save_tiny_shapes_checkpoint(d / "shapes.safetensors"),
    }


def _rewrite(src, dst, meta=None, tensors=None):
    """A copy of ``src`` with metadata entries replaced and/or some tensors replaced (same shapes)."""
    state = load_file(str(src))
    header_len = struct.unpack("<Q", src.read_bytes()[:8])[0]
    old_meta = json.loads(src.read_bytes()[8 : 8 + header_len])["__metadata__"]
    save_file({**state, **(tensors or {})}, str(dst), metadata={**old_meta, **(meta or {})})
    return dst


def test_every_format_writes_its_documented_keys(files):
    for fmt, path in files.items():
        found, meta = checkpoint.identify(path)
        assert found is fmt
        assert set(meta) == COMMON | KEYS[fmt], fmt.key
        assert (meta["format"], meta["format_version"]) == (fmt.key, "1")
        assert json.loads(meta["training"]) is not None and meta["producer"].startswith("contextdiff-comfyui")


@pytest.mark.parametrize("fmt", [ADAPTER, JOINT, TEXT_JOINT], ids=lambda f: f.key)
@pytest.mark.parametrize("loader", [ADAPTER, JOINT, TEXT_JOINT], ids=lambda f: f.key)
def test_a_file_given_to_another_loader_names_the_node_that_loads_it(files, fmt, loader):
    path = files[fmt]
    if fmt is loader:
        _load(loader)(path)  # its own loader reads it
        return
    with pytest.raises(CheckpointError) as err:
        _load(loader)(path)
    assert str(err.value).startswith(f"{path.name} is {fmt.what}"), str(err.value)
    assert str(err.value).endswith(f"which {loader.loader} does not read: load it with {fmt.loader}."), str(err.value)


def test_registry_names_are_the_nodes_display_names(server):
    """The wrong-loader message names nodes by the display name the user sees in ComfyUI's menu."""
    nodes = {
        ADAPTER: "ContextDiffAdapterLoader",
        JOINT: "ContextDiffJointLoader",
        TEXT_JOINT: "ContextDiffShapesLoader",
    }
    for fmt, node in nodes.items():
        assert server.get(f"/object_info/{node}")[node]["display_name"] == fmt.loader
    assert set(nodes) == set(FORMATS.values())


@pytest.mark.parametrize("version", ["0", "2", "01", "1.0", " 1", ""])
def test_version_checks_agree_across_formats(files, tmp_path, version):
    """Every format accepts exactly the version it writes and refuses any other with the same sentence."""
    for fmt, path in files.items():
        bad = _rewrite(path, tmp_path / f"v-{fmt.key}.safetensors", meta={"format_version": version})
        with pytest.raises(CheckpointError) as err:
            _load(fmt)(bad)
        assert str(err.value) == (
            f"{bad.name} has {fmt.key} format version {version}, this pack reads version 1; "
            "update the node pack or re-export the file."
        )


@pytest.mark.parametrize("value, message", [(float("nan"), "contains NaN or infinity"), (1e30, "holds values up to")])
def test_bad_weights_are_refused_in_every_format(files, tmp_path, value, message):
    """A NaN or a value past fp16's range, in the denoiser, the conditioning or the adapter of any format."""
    targets = {ADAPTER: ["patch_out.weight"], JOINT: ["unet.out.2.weight", "classes.embed.weight"]}
    targets[TEXT_JOINT] = ["adapter.patch_out.weight", "text.text_model.final_layer_norm.weight"]
    for fmt, keys in targets.items():
        state = load_file(str(files[fmt]))
        for key in keys:
            poisoned = state[key].clone()
            poisoned.view(-1)[0] = value
            path = _rewrite(files[fmt], tmp_path / f"bad-{fmt.key}.safetensors", tensors={key: poisoned})
            with pytest.raises(CheckpointError) as err:
                _load(fmt)(path)
            assert str(err.value).startswith(f"{path.name}: tensor {key} {message}"), str(err.value)
            assert "use an earlier checkpoint" in str(err.value)


@pytest.mark.parametrize(
    "fmt, key, change, words",
    [
        (JOINT, "unet_config", {"model_channels": 10**6}, "model_channels=1000000 must be integers in 1..4096"),
        (JOINT, "unet_config", {"channel_mult": [1] * 40}, "channel_mult"),
        (JOINT, "unet_config", {"model_channels": 64}, ": tensor unet.input_blocks.0.0.bias has shape (32,), the"),
        (JOINT, "unet_config", {"norm_groups": 7}, "has invalid unet_config metadata"),
        (JOINT, "num_classes", 10**9, "num_classes metadata ('1000000000' must be an integer in 1..100000)"),
        (TEXT_JOINT, "text_config", {"hidden_size": 10**5}, "hidden_size=100000 must be integers in 1..4096"),
        (TEXT_JOINT, "text_config", {"vocab_size": 10**7}, "vocab_size"),
        (TEXT_JOINT, "text_config", {"num_hidden_layers": 2}, "does not match its own architecture"),
        (TEXT_JOINT, "adapter_config", {"dim": 4096, "depth": 8}, "does not match its own architecture"),
    ],
)
def test_forged_configurations_are_refused_before_allocating(files, tmp_path, fmt, key, change, words):
    """A small file whose metadata declares a huge or different model: one sentence, nothing built first."""
    meta = checkpoint.identify(files[fmt])[1]
    value = json.dumps({**json.loads(meta[key]), **change}) if isinstance(change, dict) else str(change)
    path = _rewrite(files[fmt], tmp_path / f"forged-{fmt.key}.safetensors", meta={key: value})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with pytest.raises(CheckpointError) as err:
        _load(fmt)(path)
    assert str(err.value).startswith(path.name) and words in str(err.value), str(err.value)
    assert "re-export" in str(err.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before < 100, "the forged model was built"


def test_truncated_joint_file_is_refused_by_byte_range(files, tmp_path):
    """The tensor table's byte ranges are checked against the file's size for the joint formats too."""
    for fmt in (JOINT, TEXT_JOINT):
        data = files[fmt].read_bytes()
        path = tmp_path / f"cut-{fmt.key}.safetensors"
        path.write_bytes(data[: len(data) - 64])
        with pytest.raises(CheckpointError, match="data does not fit the file"):
            _load(fmt)(path)


def test_unknown_formats_say_what_each_loader_reads(files, tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "lora"})
    for fmt in FORMATS.values():
        with pytest.raises(CheckpointError) as err:
            _load(fmt)(path)
        assert str(err.value) == (
            f"lora.safetensors is a safetensors file but not {fmt.what} (metadata format='lora'); {fmt.make}."
        )
