"""Class labels as a user writes them (paper §4.3, class-to-image): ``'7'``, ``'0-9'``, ``'1, 3, 5'``, ``'9-0'``,
``'-1'`` (the null class). Every string either parses to exactly what it says or is refused naming the part
that is wrong; and how a label list meets a latent batch of another size, in ComfyUI's words."""

from __future__ import annotations

import re

_SINGLE = re.compile(r"[+-]?\d+")
_RANGE = re.compile(r"\+?(\d+)\s*-\s*\+?(\d+)")
EXAMPLES = "write class numbers, e.g. '7', '0-9', '9-0' or '1, 3, 5' (-1 = unconditional)"


def parse_labels(text: str, num_classes: int) -> list[int]:
    """The labels ``text`` names, in order (a range ``a-b`` runs from ``a`` to ``b``, downwards when ``b < a``);
    ``-1`` is the null class. Parts are separated by commas or semicolons. Raises ``ValueError`` naming the
    first part that is not a class of ``0..num_classes-1``, ``-1`` or such a range, before expanding anything."""
    labels: list[int] = []
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    for part in (p for p in parts if p):
        if _SINGLE.fullmatch(part):
            value = int(part)
            if not -1 <= value < num_classes:
                raise ValueError(
                    f"label {part!r} in {text!r} is not a class: this model has classes 0..{num_classes - 1} "
                    "(and -1 for unconditional)"
                )
            labels.append(value)
        elif match := _RANGE.fullmatch(part):
            lo, hi = int(match[1]), int(match[2])
            if max(lo, hi) >= num_classes:
                raise ValueError(
                    f"range {part!r} in {text!r} goes past the last class, {num_classes - 1}: "
                    f"this model has classes 0..{num_classes - 1}"
                )
            labels.extend(range(lo, hi + 1) if lo <= hi else range(lo, hi - 1, -1))
        else:
            raise ValueError(f"{part!r} in labels {text!r} is not a class, a range or -1: {EXAMPLES}")
    if not labels:
        raise ValueError(f"no class given in labels {text!r}: {EXAMPLES}")
    return labels


def _listed(labels: list[int], limit: int = 24) -> str:
    shown = ", ".join(str(c) for c in labels[:limit])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > limit else "")


def batch_note(labels: list[int], batch: int | None) -> str:
    """What the labels condition on a latent batch of ``batch`` (``None``: not known), following ComfyUI's rule
    (``comfy.utils.repeat_to_batch_size``: repeated to fill a larger batch, cut to a smaller one)."""
    n = len(labels)
    head = f"{n} label{'s' if n != 1 else ''}: {_listed(labels)}"
    if batch is None:
        return (
            f"{head}. On a latent batch of another size ComfyUI repeats them (sample i gets label i mod {n}) "
            "or keeps the first ones; connect the latent to see which."
        )
    if batch == n:
        return f"{head}, one per sample of the latent batch of {batch}."
    per_sample = [labels[i % n] for i in range(batch)]
    if batch > n:
        return (
            f"{head}, for a latent batch of {batch}: ComfyUI repeats them, sample i gets label i mod {n}, "
            f"so the samples get {_listed(per_sample)}."
        )
    return (
        f"{head}, for a latent batch of {batch}: ComfyUI keeps the first {batch} ({_listed(per_sample)}) "
        f"and ignores the other {n - batch}."
    )
