"""A captioned world of coloured shapes, generated on the fly (numpy only, seeded, deterministic).

Truth is known exactly, so a judge (``shapesworld.judge``) can read every attribute back from pixels.

Geometry (every length is a fraction of the image side, so any ``size`` renders the same scene):

- An object is drawn inside a square box of half-side ``HALF[size]`` (small 0.14, large 0.22: about
  9 and 14 px at 32 px) centred on its *centre* ``(cx, cy)``, measured from the image centre, x to the
  right and y downwards. A pixel belongs to the object when its centre lies inside the shape.
- ``position`` names the region of the object's centre: ``centre`` when ``max(|cx|, |cy|) <
  CENTRE_RADIUS`` (0.15); otherwise the side of the dominant axis (``left``: ``cx < 0`` and ``|cx| >=
  |cy|``, ``top``: ``cy < 0`` and ``|cy| > |cx|``, ...). See :func:`region`.
- Sampled objects sit at an anchor (``ANCHOR[size]`` from the centre along the position's axis: small
  0.33, large 0.26, so that a large object still fits) plus a jitter of at most ``JITTER`` (0.02) on
  each axis; two objects' boxes are always at least ``MIN_GAP`` (0.04, > 1 px at 32 px) apart, so
  objects never overlap or touch. Not every pair of placements fits: two large objects only sit on
  opposite sides, and a large centred object is always alone.

Captions come from a small grammar: ``"a small red circle on the left and a large blue square at the
top"`` (objects in scene order; the background is not named). Clips add ``"moving to the right"``,
``"growing"`` and ``"turning green"``.

The compositional split: the colour-shape pairs in ``HELD_OUT`` never occur in ``split="train"``
(one pair per shape and per colour, so every colour and every shape is still seen in training).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 30),
    "magenta": (215, 40, 215),
    "cyan": (30, 205, 215),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
# Backgrounds are grey (equal RGB channels), objects saturated: the judge separates them by
# distance from the grey axis, whatever the grey level.
BACKGROUNDS: tuple[str, ...] = ("dark", "light", "stripes")
BACKGROUND_LEVELS: dict[str, tuple[int, ...]] = {"dark": (30,), "light": (225,), "stripes": (112, 142)}

HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "square"),
        ("green", "triangle"),
        ("blue", "cross"),
        ("yellow", "circle"),
    }
)

HALF: dict[str, float] = {"small": 0.14, "large": 0.22}
ANCHOR: dict[str, float] = {"small": 0.33, "large": 0.26}
DIRECTION: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "top": (0.0, -1.0),
    "bottom": (0.0, 1.0),
    "centre": (0.0, 0.0),
}
CENTRE_RADIUS = 0.15
JITTER = 0.02
MIN_GAP = 0.04
CLEAR = 0.025  # clip frames keep this far (0.8 px at 32 px) from a region or size boundary
CROSS_ARM = 1.0 / 3.0  # arm width of the cross as a fraction of its side
PHRASE: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
MOTION_PHRASE: dict[str, str] = {
    "right": "moving to the right",
    "left": "moving to the left",
    "bottom": "moving down",
    "top": "moving up",
}
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Obj:
    """One object. ``cx``, ``cy``, ``half`` give its exact geometry (fractions of the image side, centre
    relative to the image centre); left ``None`` they default to the anchor of ``position``/``size``.
    Compare objects by :attr:`attributes`, not ``==`` (which also compares the geometry)."""

    colour: str
    shape: str
    size: str
    position: str
    cx: float | None = None
    cy: float | None = None
    half: float | None = None

    @property
    def attributes(self) -> tuple[str, str, str, str]:
        return (self.colour, self.shape, self.size, self.position)

    def geometry(self) -> tuple[float, float, float]:
        """(cx, cy, half) with the anchors filled in."""
        dx, dy = DIRECTION[self.position]
        cx = dx * ANCHOR[self.size] if self.cx is None else self.cx
        cy = dy * ANCHOR[self.size] if self.cy is None else self.cy
        return cx, cy, HALF[self.size] if self.half is None else self.half


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    caption: str
    scenes: tuple[Scene, ...]
    kind: str = ""  # "move", "grow" or "colour"


def region(cx: float, cy: float) -> str:
    """The position word for an object centred at (cx, cy) (fractions of the side, from the image centre)."""
    if max(abs(cx), abs(cy)) < CENTRE_RADIUS:
        return "centre"
    if abs(cx) >= abs(cy):
        return "left" if cx < 0 else "right"
    return "top" if cy < 0 else "bottom"


def size_word(half: float) -> str:
    """The size word for a box of half-side ``half``: the nearer of small and large."""
    return "small" if half < (HALF["small"] + HALF["large"]) / 2 else "large"


def _check(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}: use one of {sorted(allowed)}.")


def _validate(scene: Scene) -> None:
    _check("background", scene.background, BACKGROUNDS)
    for o in scene.objects:
        _check("colour", o.colour, COLOURS)
        _check("shape", o.shape, SHAPES)
        _check("size", o.size, SIZES)
        _check("position", o.position, POSITIONS)


def _separated(a: Obj, b: Obj, gap: float = MIN_GAP) -> bool:
    (ax, ay, ah), (bx, by, bh) = a.geometry(), b.geometry()
    return abs(ax - bx) - ah - bh >= gap or abs(ay - by) - ah - bh >= gap


def _inside(o: Obj) -> bool:
    cx, cy, h = o.geometry()
    return max(abs(cx), abs(cy)) + h <= 0.5


def _place(rng: np.random.Generator, colour: str, shape: str) -> Obj:
    size = SIZES[rng.integers(len(SIZES))]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    dx, dy = DIRECTION[position]
    jx, jy = rng.uniform(-JITTER, JITTER, size=2)
    cx, cy = dx * ANCHOR[size] + jx, dy * ANCHOR[size] + jy
    lim = 0.5 - HALF[size]  # keep the whole box inside the image
    return Obj(colour, shape, size, position, float(np.clip(cx, -lim, lim)), float(np.clip(cy, -lim, lim)), HALF[size])


def _pairs(held_out: bool) -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in HELD_OUT) == held_out]


def sample_scene(rng: np.random.Generator, split: str = "train", n_objects: int | None = None) -> Scene:
    """A random scene of ``n_objects`` (1 or 2; random when None) non-overlapping objects.

    ``split="train"`` never uses a pair of ``HELD_OUT``; ``split="heldout"`` gives at least one object a
    held-out pair (the others use training pairs)."""
    _check("split", split, SPLITS)
    if n_objects is None:
        n_objects = int(rng.integers(1, 3))
    if n_objects not in (1, 2):
        raise ValueError(f"n_objects must be 1 or 2 (got {n_objects}).")
    train_pairs, held_pairs = _pairs(False), _pairs(True)
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    novel = int(rng.integers(n_objects)) if split == "heldout" else -1
    while True:  # rejection sampling of the placements; a few tries at most
        objects: list[Obj] = []
        for i in range(n_objects):
            pool = held_pairs if i == novel else train_pairs
            colour, shape = pool[rng.integers(len(pool))]
            for _ in range(50):
                o = _place(rng, colour, shape)
                if all(_separated(o, p) for p in objects):
                    objects.append(o)
                    break
        if len(objects) == n_objects:
            return Scene(tuple(objects), background)


def caption(scene: Scene) -> str:
    """``"a small red circle on the left and a large blue square at the top"``."""
    return " and ".join(f"a {o.size} {o.colour} {o.shape} {PHRASE[o.position]}" for o in scene.objects)


def parse_caption(text: str) -> tuple[Obj, ...]:
    """The objects a scene caption names (inverse of :func:`caption`; geometry left at the anchors)."""
    words = {v: k for k, v in PHRASE.items()}
    objects = []
    for part in text.strip().split(" and "):
        tokens = part.split()
        phrase = " ".join(tokens[4:])
        if len(tokens) < 6 or tokens[0] != "a" or phrase not in words:
            raise ValueError(f"Not a shapes-world caption: {part!r}; expected e.g. 'a small red circle on the left'.")
        obj = Obj(tokens[2], tokens[3], tokens[1], words[phrase])
        _validate(Scene((obj,), BACKGROUNDS[0]))
        objects.append(obj)
    return tuple(objects)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) in the unit shape (box [-1, 1]^2, v downwards): the one definition of
    each shape, used by the renderer and by the judge's templates."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":  # apex at the top, base at the bottom
        return (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    if shape == "cross":
        box = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
        return box & ((np.abs(u) <= CROSS_ARM) | (np.abs(v) <= CROSS_ARM))
    raise ValueError(f"Unknown shape {shape!r}: use one of {list(SHAPES)}.")


def background_image(name: str, size: int, phase: int = 0) -> np.ndarray:
    """The (size, size, 3) uint8 background; ``stripes`` are diagonal, period size/8, shifted by ``phase``."""
    _check("background", name, BACKGROUNDS)
    levels = BACKGROUND_LEVELS[name]
    if len(levels) == 1:
        return np.full((size, size, 3), levels[0], np.uint8)
    period = max(2, size // 8)
    i, j = np.mgrid[0:size, 0:size]
    band = ((i + j + phase) // (period // 2)) % 2
    return np.repeat(np.asarray(levels, np.uint8)[band][..., None], 3, axis=2)


def object_mask(o: Obj, size: int) -> np.ndarray:
    """Boolean (size, size) mask of one object: pixel centres inside the shape."""
    cx, cy, h = o.geometry()
    centres = (np.arange(size) + 0.5) / size - 0.5
    u = (centres[None, :] - cx) / h
    v = (centres[:, None] - cy) / h
    return shape_mask(o.shape, u, v)


def render(scene: Scene, size: int = 32, rng: np.random.Generator | None = None, masks: bool = False):
    """The scene as a (size, size, 3) uint8 image (binary edges, no anti-aliasing, so the judge and the
    background-agreement metric are exact). ``rng`` draws the stripes' phase (0 without it). With
    ``masks=True`` also the per-object boolean masks, shape (n_objects, size, size)."""
    _validate(scene)
    if size < 16:
        raise ValueError(f"size must be at least 16 px (got {size}): smaller objects are unreadable.")
    phase = int(rng.integers(max(2, size // 8))) if rng is not None else 0
    img = background_image(scene.background, size, phase)
    ms = np.zeros((len(scene.objects), size, size), bool)
    for k, o in enumerate(scene.objects):
        ms[k] = object_mask(o, size)
        img[ms[k]] = COLOURS[o.colour]
    return (img, ms) if masks else img


def sample_batch(seed: int, n: int, split: str = "train", size: int = 32) -> tuple[np.ndarray, list[str], list[Scene]]:
    """``n`` scenes of ``split``: images (n, size, size, 3) uint8, captions, scenes. Same seed, same output."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, split) for _ in range(n)]
    images = np.stack([render(s, size, rng) for s in scenes]) if n else np.zeros((0, size, size, 3), np.uint8)
    return images, [caption(s) for s in scenes], scenes


CLIP_KINDS = ("move", "grow", "colour")


def _clear(value: float, edge: float, margin: float = CLEAR) -> float:
    """``value`` pushed out of the band ``edge +- margin`` (keeping its sign), so that a clip frame never
    sits on a region or size boundary, where pixel rounding would make its label ambiguous."""
    mag = abs(value)
    if abs(mag - edge) < margin:
        mag = edge - margin if mag < edge else edge + margin
    return float(np.copysign(mag, value))


def _clip_scenes(
    rng: np.random.Generator, kind: str, frames: int, colour: str, shape: str, background: str
) -> tuple[list[Scene], str]:
    t = np.linspace(0.0, 1.0, frames)
    if kind == "move":  # across the image through the centre, along one axis
        size = SIZES[rng.integers(len(SIZES))]
        end = ("right", "left", "bottom", "top")[rng.integers(4)]
        (dx, dy), a = DIRECTION[end], ANCHOR[size]
        off = rng.uniform(-JITTER, JITTER)
        objs = []
        for s in t:
            along = _clear((2.0 * s - 1.0) * a, CENTRE_RADIUS)
            cx, cy = (along, off) if dx else (off, along)
            cx, cy = cx * (dx or 1.0), cy * (dy or 1.0)
            objs.append(Obj(colour, shape, size, region(cx, cy), float(cx), float(cy), HALF[size]))
        return [Scene((o,), background) for o in objs], f"a {size} {colour} {shape} {MOTION_PHRASE[end]}"
    position = POSITIONS[rng.integers(len(POSITIONS))]
    dx, dy = DIRECTION[position]
    if kind == "grow":  # small to large; the centre moves in so that the large box still fits
        objs = []
        for s in t:
            h = _clear(HALF["small"] + s * (HALF["large"] - HALF["small"]), (HALF["small"] + HALF["large"]) / 2)
            a = ANCHOR["small"] + s * (ANCHOR["large"] - ANCHOR["small"])
            objs.append(Obj(colour, shape, size_word(h), position, dx * a, dy * a, h))
        return [Scene((o,), background) for o in objs], f"a {colour} {shape} growing {PHRASE[position]}"
    # colour: switches at the middle frame (no blend, so that every frame has an exact colour)
    size = SIZES[rng.integers(len(SIZES))]
    new = [c for c in COLOURS if c != colour and (c, shape) not in HELD_OUT]
    target = new[rng.integers(len(new))]
    base = Obj(colour, shape, size, position)
    scenes = [Scene((replace(base, colour=target if i >= frames // 2 else colour),), background) for i in range(frames)]
    return scenes, f"a {size} {colour} {shape} turning {target} {PHRASE[position]}"


def sample_clip(
    rng: np.random.Generator, frames: int = 8, size: int = 32, split: str = "train", kind: str | None = None
) -> Clip:
    """A clip of one object that moves across the image, grows from small to large, or changes colour
    (``kind``: "move", "grow", "colour"; random when None). ``split="train"`` uses training pairs in
    every frame; ``"heldout"`` starts from a held-out pair."""
    _check("split", split, SPLITS)
    if frames < 2:
        raise ValueError(f"A clip needs at least 2 frames (got {frames}).")
    kind = CLIP_KINDS[rng.integers(len(CLIP_KINDS))] if kind is None else kind
    _check("clip kind", kind, CLIP_KINDS)
    pool = _pairs(split == "heldout")
    colour, shape = pool[rng.integers(len(pool))]
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    scenes, text = _clip_scenes(rng, kind, frames, colour, shape, background)
    phase = int(rng.integers(max(2, size // 8)))
    imgs = np.stack([background_image(background, size, phase) for _ in scenes])
    for img, sc in zip(imgs, scenes, strict=True):
        for o in sc.objects:
            img[object_mask(o, size)] = COLOURS[o.colour]
    return Clip(imgs, text, tuple(scenes), kind)
