"""The rendered sources of the shapes workflows, written into a ComfyUI input folder by the demo and the tests.

``shapes_source.png``: one scene to edit (workflows/shapes_image_edit.json). ``shapes_clip.png``: an
animated PNG of a moving shape (workflows/shapes_video_edit.json); the core Load Image node reads its
frames as an IMAGE batch, losslessly. Both come from ``shapesworld`` and are the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shapesworld import world

IMAGE_NAME = "shapes_source.png"
CLIP_NAME = "shapes_clip.png"
EDIT_SCENE = world.Scene((world.Obj("red", "circle", "large", "centre"),), "dark")
CLIP_SEED = 142  # world.sample_clip's moving clip whose caption is CLIP_CAPTION
CLIP_CAPTION = "a large red circle moving to the right"


def source_caption() -> str:
    return world.caption(EDIT_SCENE)


def render_clip(frames: int = 8, size: int = 32) -> np.ndarray:
    """``(frames, size, size, 3)`` uint8: the moving red circle of the video workflow."""
    clip = world.sample_clip(np.random.default_rng(CLIP_SEED), frames=frames, size=size, kind="move")
    if clip.caption != CLIP_CAPTION:
        raise RuntimeError(f"shapesworld changed: seed {CLIP_SEED} now gives {clip.caption!r}; pick a new CLIP_SEED")
    return clip.frames


def write_inputs(folder: Path, frames: int = 8, size: int = 32) -> dict[str, str]:
    """Write both sources into ``folder``; returns ``{file name: caption}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(world.render(EDIT_SCENE, size)).save(folder / IMAGE_NAME)
    pictures = [Image.fromarray(f) for f in render_clip(frames, size)]
    pictures[0].save(folder / CLIP_NAME, save_all=True, append_images=pictures[1:], duration=125, loop=0)
    return {IMAGE_NAME: source_caption(), CLIP_NAME: CLIP_CAPTION}
