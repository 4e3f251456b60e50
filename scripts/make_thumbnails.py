"""Writes workflows/<name>.jpg, the thumbnail the frontend's templates browser shows beside each shipped workflow:
each workflow runs headless in a ComfyUI host on the test models (devkit/workflow_runs.py says which, and how
small), and its first saved pictures (up to 4 of a batch) become the thumbnail, a 256-pixel square. Run after
changing a workflow:

    .venv/bin/python -m scripts.make_thumbnails [names ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from devkit import comfyui
from devkit.comfy_host import ComfyServer
from devkit.workflow_runs import (
    TEST_NODES,
    WORKFLOWS,
    headless_prompt,
    save_thumbnail,
    thumbnail,
    write_assets,
    write_workflow_models,
)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="workflow names, e.g. text_to_image (default: all)")
    args = ap.parse_args()
    unknown = set(args.names) - {p.stem for p in WORKFLOWS}
    if unknown:
        ap.error(f"no workflow {', '.join(sorted(unknown))} in workflows/")
    chosen = [p for p in WORKFLOWS if not args.names or p.stem in args.names]
    comfyui()
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(Path(tmp), [TEST_NODES])
        try:
            write_assets(server)
            info = server.get("/object_info")
            for path in chosen:
                write_workflow_models(server, path)
                entry = server.run(headless_prompt(path, info), timeout=600)
                picture = thumbnail(server, entry, path.stem)
                save_thumbnail(picture, path.with_suffix(".jpg"))
                print(f"wrote workflows/{path.stem}.jpg ({picture.width}x{picture.height})")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
