"""Issue 22.6: every label string parses to what it says or is refused naming the offending part; a label count
that differs from the latent batch is described by ComfyUI's own tiling rule."""

from __future__ import annotations

import pytest

from contextdiff.class_labels import batch_note, parse_labels


@pytest.mark.parametrize(
    "text, expected",
    [
        ("7", [7]),
        ("0-9", list(range(10))),
        ("1, 3, 5", [1, 3, 5]),
        ("1; 3;5", [1, 3, 5]),
        ("-1", [-1]),
        ("+3", [3]),
        (" 2 - 4 ", [2, 3, 4]),
        ("3-1", [3, 2, 1]),  # a reversed range runs downwards: what it says
        ("0, 3-1", [0, 3, 2, 1]),  # ... also inside a list
        ("9-0", list(range(9, -1, -1))),
        ("4-4", [4]),
        ("1,,2,", [1, 2]),
        ("0-9, -1", [*range(10), -1]),
    ],
)
def test_labels_parse_to_what_they_say(text, expected):
    assert parse_labels(text, 10) == expected


@pytest.mark.parametrize(
    "text, named",
    [
        ("seven", "'seven' in labels 'seven' is not a class"),
        ("0, seven", "'seven' in labels '0, seven'"),
        ("1.5", "'1.5' in labels"),
        ("1 3", "'1 3' in labels"),
        ("3-", "'3-' in labels"),
        ("-1-3", "'-1-3' in labels"),
        ("0, 3-x", "'3-x' in labels"),
        ("12", "label '12' in '12' is not a class: this model has classes 0..9"),
        ("-2", "label '-2'"),
        ("0, 5-12", "range '5-12' in '0, 5-12' goes past the last class, 9"),
        ("0-99999999999999999999", "range '0-99999999999999999999'"),  # refused before expanding
        ("", "no class given"),
        (" , ;", "no class given"),
    ],
)
def test_bad_labels_refused_naming_the_part(text, named):
    with pytest.raises(ValueError) as err:
        parse_labels(text, 10)
    assert named in str(err.value), str(err.value)


def test_batch_note_follows_comfyui_tiling():
    """Sample i gets label i mod n, cut at the batch (ComfyUI's own rule: tests/host/test_sizes_and_labels)."""
    labels = list(range(6))
    more = batch_note(labels, 8)
    assert "6 labels" in more and "latent batch of 8" in more and "i mod 6" in more
    assert "0, 1, 2, 3, 4, 5, 0, 1." in more
    fewer = batch_note(labels, 4)
    assert "keeps the first 4 (0, 1, 2, 3)" in fewer and "ignores the other 2" in fewer
    assert "one per sample" in batch_note(labels, 6)
    unknown = batch_note(labels, None)
    assert "6 labels: 0, 1, 2, 3, 4, 5." in unknown and "connect the latent" in unknown
    assert "(600 in all)" in batch_note(labels * 100, 600)  # long lists are shortened, the count kept
