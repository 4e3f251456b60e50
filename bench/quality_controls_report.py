"""quality_controls.md (in --docs) and its plot, written by ``python -m bench quality --controls``."""

from __future__ import annotations

import importlib
import os

from .quality_controls import NAMES, configurations
from .quality_report import EDIT_METRICS, GEN_METRICS, difference, edit_plot, table

EDIT_COLUMNS = ("success", "agree_tol", "psnr_outside", "psnr_recon", "agree_tol_recon", "attribute", "kept")


def row(model: str, exact: bool) -> str:
    """The editing row of ``model`` with plain or exact inversion (:func:`configurations`' names)."""
    return next(n for n, (m, e) in configurations().items() if m == model and e == exact)


def comparisons(ed: dict, gen: dict) -> list[str]:
    """The comparisons the issue asks for, each with :func:`difference`'s verdict against the seed-to-seed sd."""

    def edits(a: tuple, b: tuple, what: str) -> str:
        ra, rb = row(*a), row(*b)
        return (
            f"- {what} ({ra} minus {rb}): success {difference(ed, ra, rb, 'success')}; kept pixels "
            f"{difference(ed, ra, rb, 'agree_tol')}; PSNR outside {difference(ed, ra, rb, 'psnr_outside', 1, 'dB')}; "
            f"reconstruction PSNR {difference(ed, ra, rb, 'psnr_recon', 1, 'dB')}."
        )

    off = f"{NAMES['no_bias']}, strength 0"
    lines = [
        edits(("no_bias", True), ("no_bias", False), "What exact inversion alone gives the no-bias model"),
        edits(("contextdiff", False), ("no_bias", False), "Today's comparison, Eq. 6 bias-aware against plain"),
        edits(("contextdiff", True), ("no_bias", True), "The bias once inversion error is controlled, Eq. 6"),
        edits(("self_bias", True), ("no_bias", True), "The same for the self-consistent model"),
        edits(("contextdiff", True), ("contextdiff", False), "Exact inversion on the Eq. 6 model"),
    ]
    for frozen in ("frozen_eq6", "frozen_self_bias"):
        lines.append(edits((frozen, False), ("no_bias", False), f"The {NAMES[frozen]} against the frozen model alone"))
        lines.append(edits((frozen, True), ("no_bias", True), f"The same with exact inversion ({NAMES[frozen]})"))
        for split in ("seen", "held-out"):
            a, b = f"{NAMES[frozen]} | {split}", f"{off} | {split}"
            lines.append(
                f"- Generation, {NAMES[frozen]} minus the frozen model at strength 0, {split} prompts: whole caption "
                f"{difference(gen, a, b, 'caption')}; colour {difference(gen, a, b, 'colour')}; position "
                f"{difference(gen, a, b, 'position')}."
            )
    return lines


def write_report(result: dict, args) -> None:
    docs = args.docs
    stamp = importlib.import_module("bench.__main__").stamp()
    result["stamp"] = stamp
    agg = result["aggregate"]
    ed, gen = agg["editing"], agg["generation"]
    edit_plot(docs / "quality_controls_editing.png", ed)
    chosen, steps = result["chosen"], result["adapter_steps"]
    secs = result["training_seconds"]
    sets = result["sets"]
    command = (
        f"python -m bench quality --controls {'--quick ' if args.quick else ''}--seeds {args.seeds} --n {args.n} "
        f"--control_edits {args.control_edits} --control_val_edits {args.control_val_edits} --cfg {args.cfg}"
        f" --refine_steps {args.refine_steps} --control_budget_steps {args.control_budget_steps}"
        + (f" --train_steps {args.train_steps}" if args.train_steps else "")
        + f" --docs {os.path.relpath(docs)}"
    )
    lines = [
        "# Controls: the bias or the inversion error, and adapters on a frozen model (issue 31)",
        "",
        f"Written by `{command}`: {result['seeds_done']} of {args.seeds} training seeds done "
        f"({result['wall_seconds'] / 60:.0f} min in the last invocation; earlier invocations' results come from the "
        "cache). How it is measured: `bench/quality_controls.py`.",
        "",
        stamp + f"\n- load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "",
        "## Models",
        "",
        "Per seed: the shapes recipe's no-bias, Eq. 6 and self-consistent (`--self_bias 1`) models"
        + (f" ({args.train_steps} steps)" if args.train_steps else "")
        + ", and two adapters trained on the frozen no-bias model (`--base_checkpoint`: UNet and text encoder "
        "frozen), with Eq. 6 and with the self-consistent bias, for as many steps as the no-bias model's last "
        f"{args.control_budget_steps} steps cost (least one-thread CPU seconds per step):",
        "",
        "| adapter on the frozen model | steps | CPU s per adapter step | CPU s per no-bias step |",
        "|---|---|---|---|",
        *[
            f"| {NAMES[v]} | {b['steps']} | {b['adapter_step_cpu_s']:.3f} | {b['no_bias_step_cpu_s']:.3f} |"
            for v, b in steps.items()
        ],
        "",
        f"Training wall time per model: {', '.join(f'{k} {v / 60:.1f} min' for k, v in secs.items())} (reused "
        "models: the time of the run that trained them).",
        "",
        "## Settings, chosen on validation only",
        "",
        f"On the first seed's models: {sets['val_prompts']} validation prompts and {sets['val_edits']} validation "
        "edits of their own seeds, the test captions removed. Adapter strength (whole-caption accuracy, the adapter "
        "on): "
        + ", ".join(f"{NAMES[m]} **{v:g}**" for m, v in chosen["strength"].items() if m != "no_bias")
        + "; then per editing row fuse_start and the blend threshold (success x kept pixels, ties: the node "
        f"default). Guidance {args.cfg:g}, 20 steps (ddim_uniform for the edits). Exact inversion: at most "
        f"{args.refine_steps} Anderson iterations per step, stopping when converged (else the best iterate).",
        "",
        "| editing row | fuse_start | blend threshold | strength |",
        "|---|---|---|---|",
        *[
            f"| {name} | {s['fuse_start']:g} | {s['blend_threshold']:g} | {s['strength']:g} |"
            for name, s in chosen["edit"].items()
        ],
        "",
        "## Editing",
        "",
        f"{sets['edits']} test edits (half colour swaps, half shape replacements). `success`: the judge reads the "
        "whole target caption; `agree_tol`: pixels outside the edited object within 8/255 of the source; "
        "`psnr_outside`: PSNR there (dB, capped at 60); `psnr_recon` / `agree_tol_recon`: the source inverted and "
        "sampled back with its own caption at guidance 1 without fusion (inversion alone), over the whole image. "
        "The frozen models at strength 0 are the no-bias model's rows (the same UNet and text encoder).",
        "",
        table(ed, EDIT_COLUMNS, "configuration", result["seeds_done"]),
        "",
        "![editing](quality_controls_editing.png)",
        "",
        "## Generation",
        "",
        f"{sets['seen']} test prompts with seen colour-shape pairs and {sets['held-out']} with held-out pairs.",
        "",
        table(gen, GEN_METRICS, "model | prompts", result["seeds_done"]),
        "",
        "![samples of each model](quality_controls_samples.png)",
        "",
        "## Comparisons (mean differences; the verdict compares each with the seed-to-seed sd)",
        "",
        *comparisons(ed, gen),
        "",
        "All numbers per seed, the validation sweeps and the other edit metrics "
        f"({', '.join(m for m in EDIT_METRICS if m not in EDIT_COLUMNS)}) are in "
        "[quality_controls.json](quality_controls.json).",
    ]
    if args.quick or result["seeds_done"] < 2:
        lines[2:2] = [
            "**A smoke run (`--quick`) or one seed: these numbers answer nothing; they show the code runs.**",
            "",
        ]
    (docs / "quality_controls.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
