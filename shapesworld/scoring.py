"""Edit tasks in the shapes world and how an edit is scored: success by the judge, preservation of
everything the edit should not touch, and temporal consistency for clips. Pure numpy.

An image edit changes one attribute of one object: its colour (``"red" -> "green"``, an attribute
swap) or its shape (``"circle" -> "square"``, an object replacement). The *edited region* is the
union of that object's pixels before and after the edit, grown by ``margin`` pixels; everything
outside it should stay as in the source.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from . import judge, world
from .world import Obj, Scene

EDIT_KINDS = ("colour", "shape")


@dataclass(frozen=True)
class EditTask:
    source: Scene
    target: Scene
    source_caption: str
    target_caption: str
    blend_words: str  # "source word, target word", as the edit node takes them
    index: int  # which object is edited
    kind: str  # "colour" or "shape"


def _edited(obj: Obj, kind: str, rng: np.random.Generator) -> Obj:
    """``obj`` with a new colour or shape; the new colour-shape pair is a training pair."""
    if kind == "colour":
        pool = [c for c in world.COLOURS if c != obj.colour and (c, obj.shape) not in world.HELD_OUT]
        return replace(obj, colour=pool[rng.integers(len(pool))])
    pool = [s for s in world.SHAPES if s != obj.shape and (obj.colour, s) not in world.HELD_OUT]
    return replace(obj, shape=pool[rng.integers(len(pool))])


def edit_task(scene: Scene, kind: str, rng: np.random.Generator) -> EditTask:
    """Edit one random object of ``scene``: its colour (``kind="colour"``) or its shape (``"shape"``)."""
    if kind not in EDIT_KINDS:
        raise ValueError(f"Unknown edit kind {kind!r}: use one of {list(EDIT_KINDS)}.")
    i = int(rng.integers(len(scene.objects)))
    old = scene.objects[i]
    new = _edited(old, kind, rng)
    target = replace(scene, objects=scene.objects[:i] + (new,) + scene.objects[i + 1 :])
    words = f"{getattr(old, kind)}, {getattr(new, kind)}"
    return EditTask(scene, target, world.caption(scene), world.caption(target), words, i, kind)


def edit_tasks(seed: int, n: int, split: str = "train") -> list[EditTask]:
    """``n`` edit tasks, alternating attribute swaps and object replacements, on scenes of ``split``."""
    rng = np.random.default_rng(seed)
    return [edit_task(world.sample_scene(rng, split), EDIT_KINDS[i % 2], rng) for i in range(n)]


def edited_region(task: EditTask, size: int, margin: int = 1) -> np.ndarray:
    """Boolean (size, size): the edited object's pixels before or after the edit, grown by ``margin`` px."""
    region = world.object_mask(task.source.objects[task.index], size) | world.object_mask(
        task.target.objects[task.index], size
    )
    return ndimage.binary_dilation(region, iterations=margin) if margin else region


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB of two uint8 images over the pixels ``where`` (all when None); inf when identical."""
    d = a.astype(np.float64) - b.astype(np.float64)
    if where is not None:
        d = d[where]
    mse = float(np.mean(d * d)) if d.size else 0.0
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def agreement(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None, tol: int = 0) -> float:
    """Share of the pixels ``where`` whose three channels all differ by at most ``tol`` (0 = exact)."""
    ok = (np.abs(a.astype(np.int16) - b.astype(np.int16)) <= tol).all(axis=-1)
    return float(ok[where].mean() if where is not None else ok.mean())


def score_edit(edited: np.ndarray, source_image: np.ndarray, task: EditTask, tol: int = 8) -> dict[str, float]:
    """The judge's verdict on an edited image and its preservation of the source.

    ``success``: the whole target caption holds; ``attribute``: the edited object has the new value;
    ``kept``: every other attribute of every object is as in the target; ``psnr_outside`` (dB) and
    ``agree_exact`` / ``agree_tol`` (share of pixels equal, or within ``tol`` of 255) outside the
    edited region; ``background``: the judge reads the source's background class."""
    seen = judge.read(edited)
    verdict = judge.compare(task.target, seen)
    outside = ~edited_region(task, edited.shape[0])
    kept = [a for a in judge.ATTRIBUTES if a != task.kind]
    return {
        "success": float(verdict["caption"]),
        "attribute": float(verdict[task.kind]),
        "kept": float(all(verdict[a] for a in kept) and verdict["count"]),
        "psnr_outside": psnr(edited, source_image, outside),
        "agree_exact": agreement(edited, source_image, outside, 0),
        "agree_tol": agreement(edited, source_image, outside, tol),
        "background": float(seen.background == task.source.background),
    }


# ---- clips -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipEditTask:
    source: world.Clip
    targets: tuple[Scene, ...]  # per frame
    source_caption: str
    target_caption: str
    blend_words: str
    kind: str


def clip_edit_task(clip: world.Clip, kind: str, rng: np.random.Generator) -> ClipEditTask:
    """Change the colour or the shape of a moving or growing clip's object in every frame."""
    if clip.kind == "colour":
        raise ValueError("Edit a 'move' or 'grow' clip: a clip that changes colour has no single source colour.")
    old = clip.scenes[0].objects[0]
    new = _edited(old, kind, rng)
    targets = tuple(replace(s, objects=(replace(s.objects[0], **{kind: getattr(new, kind)}),)) for s in clip.scenes)
    old_word, new_word = getattr(old, kind), getattr(new, kind)
    text = clip.caption.replace(f" {old_word} ", f" {new_word} ", 1)
    return ClipEditTask(clip, targets, clip.caption, text, f"{old_word}, {new_word}", kind)


def clip_edit_tasks(seed: int, n: int, frames: int = 8, size: int = 32, split: str = "train") -> list[ClipEditTask]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        clip = world.sample_clip(rng, frames, size, split, kind=("move", "grow")[i % 2])
        out.append(clip_edit_task(clip, EDIT_KINDS[(i // 2) % 2], rng))
    return out


def _main_object(scene: Scene) -> Obj | None:
    return max(scene.objects, key=lambda o: o.half or 0.0) if scene.objects else None


def score_clip_edit(edited: np.ndarray, task: ClipEditTask) -> dict[str, float]:
    """Per-frame success, flicker and trajectory error of an edited clip ``(T, H, W, 3)`` uint8.

    ``frame_success``: share of frames whose whole target holds; ``flicker``: share of consecutive
    frame pairs whose main object (the largest) changes colour or shape, or appears/disappears;
    ``trajectory_px``: mean distance in pixels between the main object's box centre and the source
    object's centre (frames without an object are left out, ``missing`` counts them)."""
    readings = judge.read_clip(edited)
    size = edited.shape[1]
    success = [judge.compare(t, r)["caption"] for t, r in zip(task.targets, readings, strict=True)]
    mains = [_main_object(r) for r in readings]
    changes = [
        (a is None) != (b is None) or (a is not None and (a.colour, a.shape) != (b.colour, b.shape))
        for a, b in zip(mains, mains[1:], strict=False)
    ]
    dists = []
    for m, s in zip(mains, task.source.scenes, strict=True):
        if m is not None:
            cx, cy, _ = s.objects[0].geometry()
            dists.append(np.hypot(m.cx - cx, m.cy - cy) * size)
    return {
        "frame_success": float(np.mean(success)),
        "flicker": float(np.mean(changes)) if changes else 0.0,
        "trajectory_px": float(np.mean(dists)) if dists else float("nan"),
        "missing": float(np.mean([m is None for m in mains])),
    }
