"""The main job: train ContextDiff on the CPU, start a headless ComfyUI with this pack, run the shipped
workflows through the HTTP API and write the pictures into out/.

``--demo shapes`` (the default, scripts/shapes_demo.py): the text-conditioned model on the captioned shapes
world: captions and their images with the bias on and off, an image edit and a video edit.
``--demo digits``: class-conditional 8x8 digits, a grid with the adapter's bias on and off.

With a real checkpoint (``--checkpoint PATH`` or ``CONTEXTDIFF_CHECKPOINT``) it runs the
text-to-image workflow on that model instead (``--adapter`` adds a trained adapter).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from devkit.comfy_host import ROOT, ComfyServer, PromptError, ui_to_api

RECIPE = ROOT / "trainer" / "configs" / "digits_joint.yaml"


def log(msg: str):
    print(f"[demo] {msg}", flush=True)


def saved_images(server: ComfyServer, entry: dict, node_id: str) -> list[Path]:
    images = entry["outputs"].get(node_id, {}).get("images", [])
    return [server.output_dir / im.get("subfolder", "") / im["filename"] for im in images]


def train_digits(run_dir: Path, retrain: bool) -> Path:
    ckpt = run_dir / "digits-contextdiff.safetensors"
    info = run_dir / "rank-0.json"  # written when a run finishes
    if ckpt.exists() and info.exists() and not retrain:
        log(f"using the trained checkpoint {ckpt.relative_to(ROOT)} (--retrain to train again)")
        return ckpt
    log("training the default recipe (joint ContextDiff on 8x8 digits, class-conditional, CPU)")
    t = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.train",
            "--config",
            str(RECIPE),
            "--output_dir",
            str(run_dir),
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        check=True,
    )
    log(f"trained in {time.time() - t:.0f} s; loss curve: {(run_dir / 'loss.png').relative_to(ROOT)}")
    return ckpt


def side_by_side(left: Path, right: Path, out: Path, titles: tuple[str, str]) -> Path:
    a, b = Image.open(left).convert("RGB"), Image.open(right).convert("RGB")
    pad, head = 16, 28
    canvas = Image.new("RGB", (a.width + b.width + 3 * pad, max(a.height, b.height) + head + pad), "white")
    canvas.paste(a, (pad, head))
    canvas.paste(b, (2 * pad + a.width, head))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=16)
    draw.text((pad, 6), titles[0], fill="black", font=font)
    draw.text((2 * pad + a.width, 6), titles[1], fill="black", font=font)
    canvas.save(out)
    return out


def run_digits(args, out_dir: Path) -> Path:
    ckpt = train_digits(ROOT / "runs" / "digits", args.retrain)
    server = ComfyServer(out_dir / "host")
    try:
        shutil.copy(ckpt, server.adapters_dir / ckpt.name)
        log(f"ComfyUI is up on {server.url}; running workflows/digits_contextdiff.json")
        workflow = json.loads((ROOT / "workflows" / "digits_contextdiff.json").read_text())
        entry = server.run(ui_to_api(workflow, server.get("/object_info")), timeout=900)
        on, off = saved_images(server, entry, "10")[0], saved_images(server, entry, "11")[0]
        grid = side_by_side(
            on, off, out_dir / "digits_grid.png", ("ContextDiff: adapter bias on", "same model: bias off (strength 0)")
        )
    finally:
        server.stop()
    return grid


def check_text_to_image_inputs(args) -> tuple[Path, Path | None]:
    """The checkpoint and adapter paths, checked before ComfyUI starts; a problem is one sentence."""
    from contextdiff.adapter_io import read_metadata
    from contextdiff.checkpoint import CheckpointError

    ckpt = Path(args.checkpoint).resolve()
    if not ckpt.is_file():
        raise SystemExit(
            f"error: checkpoint {ckpt} does not exist; give --checkpoint (or CONTEXTDIFF_CHECKPOINT) "
            "the path of a ComfyUI checkpoint file"
        )
    if args.steps < 1:
        raise SystemExit(f"error: --steps {args.steps}: give at least 1")
    for name in ("width", "height"):  # as ComfyUI's EmptyLatentImage takes them
        if getattr(args, name) < 16 or getattr(args, name) % 8:
            raise SystemExit(f"error: --{name} {getattr(args, name)}: give a multiple of 8, at least 16")
    if not args.adapter:
        return ckpt, None
    adapter = Path(args.adapter).resolve()
    if not adapter.is_file():
        raise SystemExit(
            f"error: adapter {adapter} does not exist; give --adapter the .safetensors file that "
            "python -m trainer.train printed at the end of training"
        )
    try:
        read_metadata(adapter)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    return ckpt, adapter


def run_text_to_image(args, out_dir: Path) -> Path:
    ckpt, adapter = check_text_to_image_inputs(args)
    server = ComfyServer(out_dir / "host", extra_paths={"checkpoints": ckpt.parent})
    try:
        workflow = json.loads((ROOT / "workflows" / "text_to_image.json").read_text())
        prompt = ui_to_api(workflow, server.get("/object_info"))
        prompt["2"]["inputs"]["ckpt_name"] = ckpt.name
        prompt["3"]["inputs"]["text"] = args.prompt
        prompt["5"]["inputs"].update(width=args.width, height=args.height)
        prompt["7"]["inputs"].update(steps=args.steps, seed=args.seed)
        if adapter is not None:
            shutil.copy(adapter, server.adapters_dir / adapter.name)
            prompt["6"]["inputs"]["adapter_name"] = adapter.name
        else:
            del prompt["6"], prompt["7"]["inputs"]["adapter"]
            log("no --adapter: running the ContextDiff sampler without a bias (the base DDIM sampler)")
        log(f"ComfyUI is up on {server.url}; running workflows/text_to_image.json on {ckpt.name}")
        try:
            entry = server.run(prompt, timeout=3600)
        except PromptError as e:
            raise SystemExit(f"error: ComfyUI refused the workflow: {e}") from None
        image = saved_images(server, entry, "9")[0]
        result = out_dir / "text_to_image.png"
        shutil.copy(image, result)
    finally:
        server.stop()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--checkpoint",
        default=os.environ.get("CONTEXTDIFF_CHECKPOINT", ""),
        help="a ComfyUI checkpoint (SD1.x/SD2.x/SDXL): run text-to-image on it instead of the digits demo",
    )
    ap.add_argument("--adapter", default=os.environ.get("CONTEXTDIFF_ADAPTER", ""), help="adapter for --checkpoint")
    ap.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    ap.add_argument("--steps", type=int, default=30, help="sampling steps of the text-to-image run (--checkpoint)")
    ap.add_argument("--width", type=int, default=512, help="image width in pixels (--checkpoint; a multiple of 8)")
    ap.add_argument("--height", type=int, default=512, help="image height in pixels (--checkpoint; a multiple of 8)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed of the text-to-image run (--checkpoint)")
    ap.add_argument(
        "--demo",
        choices=["shapes", "digits"],
        default="shapes",
        help="shapes: text-to-image and text-guided edits on the shapes world; digits: class-conditional digits",
    )
    ap.add_argument("--train_steps", type=int, default=0, help="shapes: training steps (0 = the recipe's)")
    ap.add_argument("--retrain", action="store_true", help="train the demo model again")
    ap.add_argument("--out", default=str(ROOT / "out"), help="where results go")
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    if (out_dir / "host").exists():
        shutil.rmtree(out_dir / "host")
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        result = run_text_to_image(args, out_dir)
    elif args.demo == "shapes":
        from scripts.shapes_demo import run_shapes

        result = ", ".join(str(p) for p in run_shapes(args, out_dir))
    else:
        result = run_digits(args, out_dir)
    log(f"done: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
