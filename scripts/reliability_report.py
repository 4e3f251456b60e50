"""Runs every bad-input, fault and load test and writes docs/reliability.md: each case tried, what
happened, and the totals. One command:

    .venv/bin/python -m scripts.reliability_report
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The reliability cases across the suite, by keyword (issue 12's classes: batch mismatch, stale caches, forged
# files, format sniffing, misleading errors, late validation, other packs' patches, features that do nothing).
SELECT = (
    "reliability or bad or corrupt or fuzz or forged or nan or interrupt or sigkill or full_disk or load_fifty "
    "or empty or truncated or outside or channels or refuse or missing or escape or traversal or pickle "
    "or not_a_video or memory_limit or batch_mismatch or cache or sniff or misleading or huge or validat "
    "or another_pack or other_pack or silent or warns or inversion_is_exact or inversion_node_is_exact "
    "or classic_inversion or stochastic_loops_match_reference or discretized_gaussian or perfect_denoiser "
    "or bias_not_zero_at_T or ddim_sigma_takes or readme_checkpoint or tooltip "
    "or categories or umask or heads_zero "
    # issue 22's classes
    "or edit_source or identity_mismatch or prompt_text or first_chunk or before_the_inversion "
    "or before_inverting or error_types or pixels_to_image or labels or label_count or label_text "
    "or reversed_range or cancel_checks "
    # issue 32's classes
    "or round4"
)
# Issue 12's classes of problems found by driving the pack as a user would, and the keywords of their tests
# (the names of the tests that check each class; a test may count in more than one).
CLASSES = [
    ("1", "batch mismatch: the bias follows ComfyUI's tiling of conditioning", ("batch_mismatch",)),
    ("3", "caches follow the file's content", ("cache",)),
    (
        "4",
        "validation before any computation",
        ("before_running", "before_loading", "before_decoding", "before_comfyui", "validat", "outside", "bad_values"),
    ),
    ("5", "forged files allocate nothing", ("forged", "fuzz")),
    ("6", "errors name the actual cause", ("misleading", "nan_inputs", "heads_zero")),
    (
        "7",
        "inversion exact where the node says so",
        ("inversion_is_exact", "inversion_node_is_exact", "classic_inversion"),
    ),
    (
        "8",
        "the math's test gaps closed",
        (
            "stochastic_loops_match_reference",
            "discretized_gaussian",
            "perfect_denoiser",
            "bias_not_zero_at_T",
            "ddim_sigma_takes",
        ),
    ),
    ("9", "other packs' patches composed or refused", ("another_pack", "other_pack")),
    ("10", "no silent no-op, interrupt within a UNet call", ("silent", "warns", "interrupt")),
    ("11", "formats sniffed by content", ("sniff", "pickle")),
    ("12", "the real-checkpoint path as the README writes it", ("readme_checkpoint", "missing_adapter")),
    ("13", "tooltips, categories, file modes", ("tooltip", "category", "categories", "umask")),
]
# Issue 22's classes (found by a third user-style run through the server), same form.
CLASSES_22 = [
    ("1", "an edit source carries what made it; another model is refused, named", ("edit_source", "identity_mismatch")),
    ("2", "edit prompt texts are the texts the conditioning encoded", ("prompt_text",)),
    ("3", "a blend word past the first 75-token chunk named with its position", ("first_chunk",)),
    ("4", "edit-plan checks before the first model call", ("before_the_inversion", "before_inverting")),
    (
        "5",
        "sizes bounded by the data they lay out, refused before allocating",
        ("pixels_to_image", "video_decode", "inversion_store", "inversion_too_large"),
    ),
    (
        "6",
        "labels parse to what they say or name the bad part; count vs batch stated",
        ("class_labels.py", "_labels_", "reversed_range", "label_count", "label_text"),
    ),
    ("7", "Cancel honoured within one attention call on every path", ("interrupt", "cancel_checks")),
    ("8", "error types read cleanly in ComfyUI's dialog", ("error_types",)),
]
# Issue 32's classes (a fourth user-style run: Cancel, linked prompt texts, combined conditionings, training data,
# messages, temporary files), same form.
CLASSES_32 = [
    ("1", "a job refused or cancellable at every stage", ("round4_cancel",)),
    ("2", "prompt texts through links resolved or named", ("round4_linked_text",)),
    ("3", "combined conditionings: what was fused, said exactly", ("round4_combined",)),
    (
        "4",
        "training images and captions read faithfully or refused by name, before any model loads",
        ("round4_image_modes", "round4_captions", "round4_bad_files"),
    ),
    ("5", "messages name the actual cause and the input that holds it", ("round4_messages",)),
    ("6", "no temporary file of a killed run survives the next one", ("round4_stale_temp",)),
]
# Tests that assert that nothing was lost or half-written.
NO_LOSS = ("sigkill", "full_disk", "interrupt", "atomic", "round_trip")


class Collector:
    def __init__(self):
        self.rows = []

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.rows.append((report.nodeid, report.outcome, report.duration, getattr(report, "case_doc", "")))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        doc = (getattr(item.function, "__doc__", None) or "").strip().splitlines()
        outcome.get_result().case_doc = doc[0] if doc else ""


def class_table(rows: list, classes: list, prefix: str = "") -> list[str]:
    """One table row per class: the cases whose test id holds one of its keywords, and how many passed."""
    table = []
    for number, title, keys in classes:
        hits = [r for r in rows if any(k in r[0] for k in keys)]
        ok = sum(1 for r in hits if r[1] == "passed")
        table.append(f"| {prefix}{number} | {title} | {len(hits)} | {ok} |")
    return table


def main() -> int:
    collector = Collector()
    started = time.time()
    code = pytest.main([str(ROOT / "tests"), "-q", "-k", SELECT, "-p", "no:cacheprovider"], plugins=[collector])
    rows = collector.rows
    lines = []
    for nodeid, outcome, duration, doc in rows:
        name = nodeid.split("::", 1)[1]
        lost = (
            "0 (asserted)"
            if any(k in nodeid for k in NO_LOSS) and outcome == "passed"
            else ("?" if outcome != "passed" else "n/a")
        )
        result = "clear error / handled" if outcome == "passed" else outcome.upper()
        lines.append(
            f"| `{nodeid.split('::')[0].removeprefix('tests/')}` | `{name}` | {doc} | {result} | "
            f"{lost} | {duration:.1f} s |"
        )
    survived = sum(1 for r in rows if r[1] == "passed")
    asserted = sum(1 for r in rows if r[1] == "passed" and any(k in r[0] for k in NO_LOSS))
    by_class, by_class_22 = class_table(rows, CLASSES), class_table(rows, CLASSES_22, "22.")
    by_class_32 = class_table(rows, CLASSES_32, "32.")
    page = ROOT / "docs" / "reliability.md"
    page.write_text(f"""# Reliability

Every bad input, fault and load case the test suite tries, regenerated by
`.venv/bin/python -m scripts.reliability_report` ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC,
{time.time() - started:.0f} s). Each case must end in one clear message naming the problem and the fix (in ComfyUI's
history when it runs through the host), lose nothing, and leave the host serving the next prompt.

**Totals: {len(rows)} cases tried, {survived} survived, {len(rows) - survived} failed; data lost: 0 in the
{asserted} cases that assert it.**

Issue 12's classes (item 2, no bitwise float equality across modules or runs, is a rule for the suite's own
assertions rather than a case to try; a case can count in more than one class):

| class | what must hold | cases | passed |
|---|---|---|---|
{chr(10).join(by_class)}

Issue 22's classes (a case can count in more than one class, and in issue 12's table too):

| class | what must hold | cases | passed |
|---|---|---|---|
{chr(10).join(by_class_22)}

Issue 32's classes (a case can count in more than one class, and in the tables above too):

| class | what must hold | cases | passed |
|---|---|---|---|
{chr(10).join(by_class_32)}

| file | case | what is tried | result | data lost | time |
|---|---|---|---|---|---|
{chr(10).join(lines)}
""")
    print(f"wrote {page}: {len(rows)} cases, {survived} survived")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
