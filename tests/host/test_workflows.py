"""Every shipped workflow: valid against the live host's /object_info (node types, inputs, links, and every widget
value as the host declares it: what a frontend checks when it loads the file), converted from the UI format to the
API format, run headless on the test models, and listed with its thumbnail by the host's templates browser."""

from __future__ import annotations

import json
import math
import re
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from devkit.comfy_host import PACK_NAME, VIRTUAL_NODES, is_widget, node_inputs, pack_folder, ui_to_api, widget_values
from devkit.workflow_runs import (
    THUMBNAIL_SIZE,
    WORKFLOWS,
    headless_prompt,
    thumbnail,
    write_assets,
    write_workflow_models,
)

ROOT = Path(__file__).resolve().parents[2]
SEED_CONTROLS = {"fixed", "increment", "decrement", "randomize"}
FILE_NAME = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|png|jpe?g|webp|gif|mp4|webm|mov|mkv)$")


def pack_nodes(server) -> dict:
    """The pack's nodes in the host's /object_info."""
    return {k: v for k, v in server.get("/object_info").items() if v.get("python_module", "").endswith(PACK_NAME)}


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
        "sd3_text_to_image",
        "flux_text_to_image",
        "wan_text_to_video",
        "sd3_image_edit",
        "flux_image_edit",
        "wan_video_edit",
    } <= names


def test_readme_names_every_node_category(server):
    """The README's install paragraph names every menu category the pack's nodes appear under in the host."""
    ours = {spec["category"] for spec in pack_nodes(server).values()}
    assert len(ours) >= 3, ours
    install = (ROOT / "README.md").read_text().split("## Install into your ComfyUI")[1].split("\n## ")[0]
    assert not {c for c in ours if f"*{c}*" not in " ".join(install.split())}, install


def invalid_widgets(node: dict, info: dict) -> list[str]:
    """What a frontend flags in a UI-format node's widget values against the host's input specs: a choice that is
    not in its list, a number of the wrong type or outside min..max, a toggle that is not a boolean, a text that is
    not a string, an unknown seed control. A choice that names a file (a checkpoint, an adapter, an input image) is
    the user's to provide: the frontend keeps it and lists it as missing, so only its being a file name is checked."""
    problems = []
    for name, spec, value, control in widget_values(node, info):
        kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
        where = f"{node['type']}.{name} = {value!r}"
        if isinstance(kind, list) or kind == "COMBO":
            choices = kind if isinstance(kind, list) else opts.get("options", [])
            if value not in choices and not (isinstance(value, str) and FILE_NAME.search(value)):
                problems.append(f"{where} is not one of {choices}")
        elif kind in ("INT", "FLOAT"):
            if isinstance(value, bool) or not isinstance(value, int if kind == "INT" else (int, float)):
                problems.append(f"{where} is not {kind}")
            elif not opts.get("min", -math.inf) <= value <= opts.get("max", math.inf):
                problems.append(f"{where} is outside {opts.get('min')}..{opts.get('max')}")
        elif kind == "BOOLEAN" and not isinstance(value, bool):
            problems.append(f"{where} is not a boolean")
        elif kind == "STRING" and not isinstance(value, str):
            problems.append(f"{where} is not a string")
        if opts.get("control_after_generate") and control not in SEED_CONTROLS:
            problems.append(f"{node['type']}.{name}: control {control!r} is not one of {sorted(SEED_CONTROLS)}")
    return problems


def test_invalid_widget_values_are_caught(server):
    """The check above sees each kind of bad value a hand-edited workflow can carry, on this host's specs."""
    info = server.get("/object_info")
    wf = json.loads((ROOT / "workflows" / "text_to_image.json").read_text())
    sampler = next(n for n in wf["nodes"] if n["type"] == "ContextDiffKSampler")
    assert not invalid_widgets(sampler, info["ContextDiffKSampler"])
    # seed, control, steps, cfg, scheduler, method, eta, adapter_strength, denoise
    sampler["widgets_values"] = [-1, "sometimes", 0, "7.5", "fast", "ddim", 1.5, True, 1.0]
    problems = " | ".join(invalid_widgets(sampler, info["ContextDiffKSampler"]))
    for bad in ("seed = -1", "control 'sometimes'", "steps = 0", "cfg = '7.5'", "scheduler = 'fast'", "eta = 1.5"):
        assert bad in problems, problems
    assert "adapter_strength = True is not FLOAT" in problems
    loader = next(n for n in wf["nodes"] if n["type"] == "ContextDiffAdapterLoader")
    assert not invalid_widgets(loader, info["ContextDiffAdapterLoader"])  # a file the user provides
    loader["widgets_values"] = ["my adapter"]
    assert invalid_widgets(loader, info["ContextDiffAdapterLoader"])


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
        assert not invalid_widgets(n, info[n["type"]]), f"{path.name}: {invalid_widgets(n, info[n['type']])}"
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


def test_bypassed_nodes_pass_their_input_through_as_the_frontend_does():
    """A bypassed node's output is its input of the same type (a bypassed LoRA-like patch passes the model on); an
    output with no such input (a bypassed adapter loader) leaves the optional input out; a muted node's outputs
    are left out too. The flow workflows ship their adapter loader bypassed."""
    info = {
        "Load": {"input": {"required": {"name": ("STRING", {})}}, "output": ["MODEL"]},
        "Patch": {"input": {"required": {"model": ("MODEL",), "strength": ("FLOAT", {})}}, "output": ["MODEL"]},
        "Adapter": {"input": {"required": {"adapter_name": ("STRING", {})}}, "output": ["ADAPTER"]},
        "Sampler": {
            "input": {"required": {"model": ("MODEL",)}, "optional": {"adapter": ("ADAPTER",)}},
            "output": ["LATENT"],
        },
    }
    nodes = [
        {"id": 1, "type": "Load", "widgets_values": ["m.safetensors"], "inputs": []},
        {
            "id": 2,
            "type": "Patch",
            "mode": 4,
            "widgets_values": [0.5],
            "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
        },
        {"id": 3, "type": "Adapter", "mode": 4, "widgets_values": ["a.safetensors"], "inputs": []},
        {
            "id": 4,
            "type": "Sampler",
            "inputs": [
                {"name": "model", "type": "MODEL", "link": 2},
                {"name": "adapter", "type": "ADAPTER", "link": 3},
            ],
        },
    ]
    links = [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 4, 0, "MODEL"], [3, 3, 0, 4, 1, "ADAPTER"]]
    prompt = ui_to_api({"nodes": nodes, "links": links}, info)
    assert sorted(prompt) == ["1", "4"] and prompt["4"]["inputs"] == {"model": ["1", 0]}
    nodes[1]["mode"] = 2  # muted: nothing comes out of it
    assert ui_to_api({"nodes": nodes, "links": links}, info)["4"]["inputs"] == {}
    for name in ("sd3_text_to_image", "flux_text_to_image", "wan_text_to_video"):
        wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
        assert [n["mode"] for n in wf["nodes"] if n["type"] == "ContextDiffAdapterLoader"] == [4], name


@pytest.fixture(scope="module")
def workflow_assets(server, comfy_inprocess):
    write_assets(server)


# Flux's tiny file is still 0.4B parameters (its width is fixed at 3072): about two minutes to write, load and run
RUNS = [pytest.param(p, marks=pytest.mark.slow) if p.stem.startswith("flux_") else p for p in WORKFLOWS]


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_workflow_runs_headless(server, workflow_assets, path):
    """Each workflow runs on the test models, and its thumbnail shows the pictures this run saves: the same node, as
    many pictures of the same size (their pixels may differ across hosts and CPUs; those must not)."""
    write_workflow_models(server, path)
    entry = server.run(headless_prompt(path, server.get("/object_info")), timeout=600)
    saved = [im for out in entry["outputs"].values() for im in out.get("images", [])]
    assert saved, f"{path.name} produced no image"
    made = thumbnail(server, entry, path.stem)
    shipped = Image.open(path.with_suffix(".jpg"))
    assert shipped.info.get("comment", b"").decode() == made.info["comment"], (
        f"{path.stem}.jpg is not this workflow's output any more: run python -m scripts.make_thumbnails"
    )


def saved_latent(server, prompt: dict, sampler: str, prefix: str):
    """The prompt run with a SaveLatent on node ``sampler``'s output; the latent it saved."""
    from safetensors.torch import load_file

    prompt = dict(
        prompt, save_latent={"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": prefix}}
    )
    server.run(prompt, timeout=600)
    return load_file(str(sorted(server.output_dir.glob(f"{prefix}_*.latent"))[-1]))["latent_tensor"]


@pytest.mark.parametrize(
    "name",
    ["sd3_text_to_image", "wan_text_to_video", pytest.param("flux_text_to_image", marks=pytest.mark.slow)],
)
def test_flow_workflow_as_shipped_is_core_euler_and_its_adapter_runs(server, workflow_assets, tmp_path, name):
    """What the flow workflows' notes promise: as shipped (adapter loader bypassed) the ContextDiff KSampler is the
    core KSampler's euler on the same graph (float32, 1e-5 relative); with the loader enabled (Ctrl+B) on an
    adapter of the family, the bias changes the sample."""
    path = ROOT / "workflows" / f"{name}.json"
    write_workflow_models(server, path)
    info = server.get("/object_info")
    shipped = headless_prompt(path, info)
    sampler = next(k for k, n in shipped.items() if n["class_type"] == "ContextDiffKSampler")
    core = json.loads(json.dumps(shipped))
    inputs = {k: v for k, v in core[sampler]["inputs"].items() if k not in ("method", "eta", "adapter_strength")}
    core[sampler] = {"class_type": "KSampler", "inputs": dict(inputs, sampler_name="euler")}
    assert "adapter" not in shipped[sampler]["inputs"]
    ours, euler = (saved_latent(server, p, sampler, f"{name}_{t}") for p, t in ((shipped, "ours"), (core, "core")))
    assert euler.abs().max() > 0 and ours.shape == euler.shape
    assert ((ours - euler).norm() / euler.norm()).item() <= 1e-5
    enabled = json.loads(path.read_text())
    for node in enabled["nodes"]:
        if node["type"] == "ContextDiffAdapterLoader":
            node["mode"] = 0
    (tmp_path / path.name).write_text(json.dumps(enabled))
    with_adapter = headless_prompt(tmp_path / path.name, info)
    assert with_adapter[sampler]["inputs"]["adapter"][0] in with_adapter
    live = saved_latent(server, with_adapter, sampler, f"{name}_adapter")
    assert torch.isfinite(live).all() and ((live - euler).norm() / euler.norm()).item() > 1e-3


def test_templates_browser_lists_every_workflow_with_its_thumbnail(server):
    """The host lists the pack's workflows as templates and serves each one's thumbnail where the frontend's
    templates browser fetches it: /api/workflow_templates/<pack folder>/<name>.jpg."""
    folder = pack_folder(next(iter(pack_nodes(server).values()))["python_module"])
    assert sorted(server.get("/api/workflow_templates")[folder]) == [p.stem for p in WORKFLOWS]
    for path in WORKFLOWS:
        jpg = path.with_suffix(".jpg")
        with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{folder}/{jpg.name}", timeout=30) as r:
            assert r.read() == jpg.read_bytes()
        picture = Image.open(jpg)
        assert picture.format == "JPEG" and picture.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE), jpg.name
        assert jpg.stat().st_size < 40_000, f"{jpg.name}: keep thumbnails small"
