"""The shapes demo (scripts/demo.py's default): train the text-conditioned model on the captioned shapes world,
run the three shapes workflows in a headless ComfyUI through the HTTP API, and write three pictures:

- ``shapes_text_to_image.png``: captions and their samples, the adapter's bias on and off (strength 0), with the
  exact judge's verdict on each sample and its counts per attribute;
- ``shapes_edit.png``: a rendered scene, inverted and edited (red -> green, circle -> square);
- ``shapes_video_edit.png``: a moving red circle and its edit to a blue one, frame by frame.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from devkit.comfy_host import ROOT, ComfyServer, ui_to_api
from devkit.shapes_inputs import write_inputs
from shapesworld import judge, world

RECIPE = ROOT / "trainer" / "configs" / "shapes.yaml"
CKPT = "shapes-contextdiff.safetensors"
# One attribute changes at a time down the rows; none of them is a held-out colour-shape pair.
PROMPTS = [
    "a large red circle in the centre",
    "a large green circle in the centre",
    "a large blue square in the centre",
    "a large yellow triangle in the centre",
    "a small magenta cross on the left",
    "a small magenta cross on the right",
    "a small cyan square at the top",
    "a small red triangle on the left and a small blue circle on the right",
]
SAMPLES = 4
JUDGED = ("colour", "shape", "position", "count", "caption")  # the verdicts the picture prints, in this order


def log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def train(run_dir: Path, retrain: bool, steps: int = 0) -> Path:
    """The recipe's checkpoint; trained unless a finished run is there (``--retrain`` forces it)."""
    ckpt = run_dir / CKPT
    if ckpt.exists() and (run_dir / "rank-0.json").exists() and not retrain:
        log(f"using the trained checkpoint {ckpt.relative_to(ROOT)} (--retrain to train again)")
        return ckpt
    log(
        f"training {RECIPE.relative_to(ROOT)} (text-to-image on the shapes world: UNet + adapter + CLIP text "
        "encoder, Eq. 6, CPU)"
    )
    t = time.time()
    cmd = [
        sys.executable,
        "-m",
        "trainer.train",
        "--config",
        str(RECIPE),
        "--output_dir",
        str(run_dir),
        "--device",
        "cpu",
    ] + (["--steps", str(steps)] if steps else [])
    subprocess.run(cmd, cwd=ROOT, check=True)
    log(f"trained in {time.time() - t:.0f} s; loss curve: {(run_dir / 'loss.png').relative_to(ROOT)}")
    return ckpt


def images_of(server: ComfyServer, entry: dict, node_id: str) -> list[Image.Image]:
    return [
        Image.open(server.output_dir / im.get("subfolder", "") / im["filename"]).convert("RGB")
        for im in entry["outputs"].get(node_id, {}).get("images", [])
    ]


def workflow(server: ComfyServer, name: str) -> dict:
    return ui_to_api(json.loads((ROOT / "workflows" / f"{name}.json").read_text()), server.get("/object_info"))


def verdicts(text: str, pictures: list[Image.Image]) -> list[dict[str, bool]]:
    """The exact judge's verdict on each picture against the caption it was sampled for."""
    target = world.Scene(world.parse_caption(text), world.BACKGROUNDS[0])  # the judge ignores the background
    return [judge.compare(target, judge.read(np.asarray(pic))) for pic in pictures]


def judged_label(text: str, on: list[dict[str, bool]], off: list[dict[str, bool]]) -> str:
    """A row's label: the caption, then how many samples the judge finds right, bias on | off."""
    counts = "  ".join(
        f"{'whole' if m == 'caption' else m} {sum(v[m] for v in on)}|{sum(v[m] for v in off)}" for m in JUDGED
    )
    return f"{text}\njudge, on|off: {counts}"


def sheet(
    rows: list[tuple[str, list[Image.Image]]],
    out: Path,
    title: str,
    label_width: int = 500,
    gap_after: int | None = None,
    marks: list[list[bool]] | None = None,
) -> Path:
    """Rows of equal-size pictures, each row labelled on the left; an extra gap after column ``gap_after``;
    ``marks`` (per row, per picture) draws a bar under each picture: green where the judge reads the whole
    caption, red where it does not."""
    font = ImageFont.load_default(size=15)
    w, h = rows[0][1][0].size
    pad, bar = 6, 4
    head = 14 + 20 * (title.count("\n") + 1)
    cols = max(len(pics) for _, pics in rows)
    extra = 3 * pad if gap_after else 0
    row_h = h + pad + (bar if marks else 0)
    canvas = Image.new("RGB", (label_width + cols * (w + pad) + extra + pad, head + len(rows) * row_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.multiline_text((pad, 8), title, fill="black", font=font, spacing=5)
    for r, (label, pics) in enumerate(rows):
        y = head + r * row_h
        lines = label.count("\n") + 1
        draw.multiline_text((pad, y + h // 2 - 9 * lines), label, fill="black", font=font, spacing=4)
        for c, pic in enumerate(pics):
            x = label_width + c * (w + pad) + (extra if gap_after and c >= gap_after else 0)
            canvas.paste(pic, (x, y))
            if marks:
                draw.rectangle((x, y + h + 1, x + w - 1, y + h + bar), fill="#1a9641" if marks[r][c] else "#d7191c")
    canvas.save(out)
    return out


def text_to_image(server: ComfyServer, out_dir: Path) -> Path:
    rows, marks, totals = [], [], {"on": [], "off": []}
    for text in PROMPTS:
        prompt = workflow(server, "shapes_text_to_image")
        prompt["3"]["inputs"]["text"] = text
        prompt["5"]["inputs"]["batch_size"] = SAMPLES
        entry = server.run(prompt, timeout=900)
        on, off = images_of(server, entry, "12"), images_of(server, entry, "13")
        judged = {"on": verdicts(text, on), "off": verdicts(text, off)}
        for side, found in judged.items():
            totals[side] += found
        rows.append((judged_label(text, judged["on"], judged["off"]), on + off))
        marks.append([v["caption"] for v in judged["on"] + judged["off"]])
    summary = judged_label("all rows", totals["on"], totals["off"]).split("\n")[1]
    log(f"text to image, {summary}")
    return sheet(
        rows,
        out_dir / "shapes_text_to_image.png",
        f"ContextDiff: {SAMPLES} samples with the adapter's bias (left) | the same model and noise, bias off (right)\n"
        f"bar: the exact judge reads the whole caption (green) or not (red); {summary} (of {len(totals['on'])} each)",
        gap_after=SAMPLES,
        marks=marks,
    )


def image_edit(server: ComfyServer, out_dir: Path) -> Path:
    entry = server.run(workflow(server, "shapes_image_edit"), timeout=900)
    source, colour, shape = images_of(server, entry, "17")
    return sheet(
        [
            ("source (rendered): a large red circle in the centre", [source]),
            ("edit 'red' -> 'green' (blend words: red, green)", [colour]),
            ("edit 'circle' -> 'square' (blend words: circle, square)", [shape]),
        ],
        out_dir / "shapes_edit.png",
        "Inversion + attention fusion, one inversion, two edits",
    )


def video_edit(server: ComfyServer, out_dir: Path) -> Path:
    entry = server.run(workflow(server, "shapes_video_edit"), timeout=900)
    frames = images_of(server, entry, "7")
    half = len(frames) // 2
    return sheet(
        [
            ("source: a large red circle moving to the right", frames[:half]),
            ("edit: ... blue circle ... (sparse-causal attention)", frames[half:]),
        ],
        out_dir / "shapes_video_edit.png",
        "ContextDiff Video Edit, frame by frame",
    )


def run_shapes(args, out_dir: Path) -> list[Path]:
    ckpt = train(ROOT / "runs" / "shapes", args.retrain, args.train_steps)
    t = time.time()
    server = ComfyServer(out_dir / "host")
    try:
        shutil.copy(ckpt, server.adapters_dir / CKPT)
        write_inputs(server.input_dir)
        log(f"ComfyUI is up on {server.url}; running the shapes workflows")
        results = [text_to_image(server, out_dir), image_edit(server, out_dir), video_edit(server, out_dir)]
    finally:
        server.stop()
    log(f"workflows ran in {time.time() - t:.0f} s")
    return results
