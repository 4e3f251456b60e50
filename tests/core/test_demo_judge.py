"""The main job's text-to-image picture prints the exact judge's verdicts: checked on renders whose truth is known."""

from __future__ import annotations

import numpy as np
from PIL import Image

from scripts.shapes_demo import judged_label, verdicts
from shapesworld import world


def picture(text: str, background: str = "stripes") -> Image.Image:
    """A clean render of ``text``, enlarged 4x as the workflow's ImageScaleBy does."""
    image = world.render(world.Scene(world.parse_caption(text), background), 32)
    return Image.fromarray(image).resize((128, 128), Image.BILINEAR)


def test_verdicts_read_each_picture_against_its_caption():
    text = "a small red triangle on the left and a small blue circle on the right"
    right = verdicts(text, [picture(text)])[0]
    assert all(right.values()), right
    moved = verdicts(text, [picture("a small red triangle on the right and a small blue circle on the left")])[0]
    assert moved["colour"] and moved["shape"] and moved["count"] and not moved["position"] and not moved["caption"]
    one = verdicts(text, [picture("a small red triangle on the left", "dark")])[0]
    assert not one["count"] and not one["caption"]


def test_judged_label_counts_bias_on_and_off_separately():
    text = "a large green circle in the centre"
    on = verdicts(text, [picture(text), picture(text, "light"), picture("a large green square in the centre")])
    off = verdicts(text, [picture("a large red circle in the centre")] * 3)
    label = judged_label(text, on, off)
    assert label.splitlines() == [text, "judge, on|off: colour 3|0  shape 2|3  position 3|3  count 3|3  whole 2|0"]
    assert np.mean([v["caption"] for v in on]) == 2 / 3
