"""The shapes world (deterministic, compositional split, no overlaps) and its exact judge (>= 99% on
clean renders, and it notices when a caption is wrong)."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from shapesworld import judge, world


def test_world_is_deterministic_per_seed():
    a, ca, sa = world.sample_batch(7, 64)
    b, cb, sb = world.sample_batch(7, 64)
    c, cc, _ = world.sample_batch(8, 64)
    assert a.shape == (64, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and ca == cb and sa == sb
    assert not np.array_equal(a, c) and ca != cc
    clip1 = world.sample_clip(np.random.default_rng(3), frames=8)
    clip2 = world.sample_clip(np.random.default_rng(3), frames=8)
    assert clip1.frames.shape == (8, 32, 32, 3) and np.array_equal(clip1.frames, clip2.frames)
    assert clip1.caption == clip2.caption and clip1.scenes == clip2.scenes


def test_vocabulary_is_large_enough():
    assert len(world.COLOURS) >= 6 and len(world.SHAPES) >= 4 and len(world.SIZES) >= 2
    assert set(world.POSITIONS) == {"left", "right", "top", "bottom", "centre"}
    rgb = np.asarray(list(world.COLOURS.values()), float)
    gaps = np.linalg.norm(rgb[:, None] - rgb[None], axis=2)[~np.eye(len(rgb), dtype=bool)]
    assert gaps.min() > 100  # well separated on the 0-255 scale
    # every colour and every shape still occurs in training with some other partner
    train = {(c, s) for c in world.COLOURS for s in world.SHAPES} - world.HELD_OUT
    assert {c for c, _ in train} == set(world.COLOURS) and {s for _, s in train} == set(world.SHAPES)


def test_heldout_compositions_never_occur_in_training_batches():
    images, captions, scenes = world.sample_batch(11, 3000, "train")
    assert not any((o.colour, o.shape) in world.HELD_OUT for s in scenes for o in s.objects)
    # ... and not in the captions or the pixels either (read back independently by the judge)
    assert not any(f"{c} {s}" in text for text in captions for c, s in world.HELD_OUT)
    seen = {(o.colour, o.shape) for im in images[:1000] for o in judge.read(im).objects}
    assert not seen & world.HELD_OUT and len(seen) == 24 - len(world.HELD_OUT)
    rng = np.random.default_rng(5)
    for _ in range(200):
        clip = world.sample_clip(rng, split="train")
        assert not any((o.colour, o.shape) in world.HELD_OUT for s in clip.scenes for o in s.objects)
    # the held-out split always contains a novel pair
    _, _, held = world.sample_batch(11, 500, "heldout")
    assert all(any((o.colour, o.shape) in world.HELD_OUT for o in s.objects) for s in held)


def test_objects_never_overlap_or_touch_and_stay_inside():
    rng = np.random.default_rng(2)
    for _ in range(1000):
        scene = world.sample_scene(rng, n_objects=2)
        _, masks = world.render(scene, 32, masks=True)
        assert masks[0].sum() >= 30 and masks[1].sum() >= 30
        # 8-connected dilation of one never reaches the other: at least one background pixel between
        assert not (ndimage.binary_dilation(masks[0], np.ones((3, 3))) & masks[1]).any()
        for o in scene.objects:
            cx, cy, h = o.geometry()
            assert max(abs(cx), abs(cy)) + h <= 0.5 and world.region(cx, cy) == o.position


def test_caption_grammar_round_trips():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = world.sample_scene(rng)
        text = world.caption(scene)
        assert text.startswith("a ") and text.count(" and ") == len(scene.objects) - 1
        assert [o.attributes for o in world.parse_caption(text)] == [o.attributes for o in scene.objects]
    clip = world.sample_clip(np.random.default_rng(1), kind="move")
    assert "moving" in clip.caption


def test_judge_reads_clean_renders_at_least_99_percent():
    for split, n in (("train", 2000), ("heldout", 500)):
        images, _, scenes = world.sample_batch(1234, n, split)
        acc = judge.accuracy(scenes, [judge.read(im) for im in images])
        assert min(acc.values()) >= 0.99, (split, acc)
    rng = np.random.default_rng(1234)
    clips = [world.sample_clip(rng, kind=k) for k in world.CLIP_KINDS for _ in range(20)]
    targets = [s for c in clips for s in c.scenes]
    acc = judge.accuracy(targets, [s for c in clips for s in judge.read_clip(c.frames)])
    assert min(acc.values()) >= 0.99, acc


def test_judge_notices_every_wrong_attribute():
    """A judge that always agrees would pass the test above: each mutated caption must be caught."""
    others = {
        "colour": list(world.COLOURS),
        "shape": list(world.SHAPES),
        "size": list(world.SIZES),
        "position": list(world.POSITIONS),
    }
    rng = np.random.default_rng(9)
    for _ in range(100):
        scene = world.sample_scene(rng)
        seen = judge.read(world.render(scene))
        assert judge.compare(scene, seen)["caption"]
        attr = list(others)[rng.integers(4)]
        old = getattr(scene.objects[0], attr)
        new = [v for v in others[attr] if v != old][rng.integers(len(others[attr]) - 1)]
        wrong = replace(scene, objects=(replace(scene.objects[0], **{attr: new}),) + scene.objects[1:])
        verdict = judge.compare(wrong, seen)
        assert not verdict[attr] and not verdict["caption"]
        assert all(verdict[a] for a in judge.ATTRIBUTES if a != attr)
        fewer = judge.compare(scene, replace(seen, objects=seen.objects[:-1]))
        assert not fewer["count"] and not fewer["caption"]


def test_judge_reads_background_and_mild_noise():
    images, _, scenes = world.sample_batch(5, 300)
    noisy = judge.degrade(images, blur=0.5, noise=10.0, seed=1)
    seen = [judge.read(im) for im in noisy]
    assert judge.accuracy(scenes, seen)["caption"] >= 0.99
    assert np.mean([a.background == b.background for a, b in zip(scenes, seen, strict=True)]) >= 0.99


def test_bad_inputs_are_refused_with_a_clear_message():
    img = world.render(world.sample_scene(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="uint8"):
        judge.read(img.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="square RGB"):
        judge.read(img[:, :20])
    with pytest.raises(ValueError, match="Unknown colour 'purple'"):
        world.render(world.Scene((world.Obj("purple", "circle", "small", "left"),), "dark"))
    with pytest.raises(ValueError, match="Unknown split"):
        world.sample_scene(np.random.default_rng(0), split="test")
    with pytest.raises(ValueError, match="Not a shapes-world caption"):
        world.parse_caption("a fox in the snow")


# ---- scoring of edits -------------------------------------------------------------------------

from shapesworld import scoring  # noqa: E402


def test_edit_tasks_change_exactly_one_attribute_of_one_object():
    for task in scoring.edit_tasks(3, 40):
        diffs = [
            (a, b)
            for a, b in zip(task.source.objects, task.target.objects, strict=True)
            if a.attributes != b.attributes
        ]
        assert len(diffs) == 1
        ((a, b),) = diffs
        changed = [i for i, (x, y) in enumerate(zip(a.attributes, b.attributes, strict=True)) if x != y]
        assert [judge.ATTRIBUTES[i] for i in changed] == [task.kind]
        assert (b.colour, b.shape) not in world.HELD_OUT
        old, new = task.blend_words.split(", ")
        assert old in task.source_caption.split() and new in task.target_caption.split()


def test_a_perfect_edit_scores_full_and_no_edit_scores_zero():
    for k, task in enumerate(scoring.edit_tasks(4, 30)):
        source = world.render(task.source, 32, np.random.default_rng(k))
        perfect = world.render(task.target, 32, np.random.default_rng(k))  # same stripe phase
        s = scoring.score_edit(perfect, source, task)
        assert s["success"] == s["attribute"] == s["kept"] == s["agree_exact"] == s["background"] == 1.0
        assert s["psnr_outside"] == float("inf")
        unchanged = scoring.score_edit(source, source, task)
        assert unchanged["success"] == unchanged["attribute"] == 0.0 and unchanged["kept"] == 1.0
        # damage outside the edited object: preservation drops, the judge still reads the edit
        damaged = perfect.copy()
        outside = ~scoring.edited_region(task, 32)
        damaged[outside] = np.clip(damaged[outside].astype(int) + 20, 0, 255).astype(np.uint8)
        d = scoring.score_edit(damaged, source, task)
        assert d["agree_exact"] < 0.05 and d["agree_tol"] < 0.05 and 21 < d["psnr_outside"] < 23
        assert d["attribute"] == 1.0


def test_clip_edit_scores_flicker_and_trajectory():
    for task in scoring.clip_edit_tasks(6, 6):
        frames = np.stack([world.render(s, 32) for s in task.targets])
        s = scoring.score_clip_edit(frames, task)
        assert s["frame_success"] == 1.0 and s["flicker"] == 0.0 and s["missing"] == 0.0
        assert s["trajectory_px"] < 0.75  # box centre vs true centre: pixel rounding only
        bad = frames.copy()
        bad[3] = world.render(task.source.scenes[3], 32)  # one frame left unedited
        b = scoring.score_clip_edit(bad, task)
        assert b["frame_success"] == 7 / 8 and b["flicker"] == 2 / 7
        still = np.stack([frames[0]] * len(frames))  # the object stops moving
        if task.source.kind == "move":
            assert scoring.score_clip_edit(still, task)["trajectory_px"] > 3
