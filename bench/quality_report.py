"""docs/quality.md, docs/quality.json and the plots of ``python -m bench quality`` (bench/quality.py)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np

GEN_METRICS = ("colour", "shape", "size", "position", "count", "caption")
EDIT_METRICS = ("success", "attribute", "kept", "psnr_outside", "agree_exact", "agree_tol", "background")
VIDEO_METRICS = ("frame_success", "flicker", "trajectory_px", "missing")
PERCENT = {
    "colour",
    "shape",
    "size",
    "position",
    "count",
    "caption",
    "success",
    "attribute",
    "kept",
    "agree_exact",
    "agree_tol",
    "agree_tol_recon",
    "background",
    "frame_success",
    "flicker",
    "missing",
}


def fmt(metric: str, v: list[float], seeds: int | None = None) -> str:
    mean, sd, n = v
    fewer = f" ({n} seed{'s' * (n > 1)})" if seeds is not None and n < seeds else ""
    if metric in PERCENT:
        return f"{100 * mean:.1f} ± {100 * sd:.1f}{fewer}"
    return f"{mean:.2f} ± {sd:.2f}{fewer}"


def table(rows: dict, metrics: tuple[str, ...], first: str, seeds: int | None = None) -> str:
    columns = first.count("|") + 1 + len(metrics)  # the row names may hold a "|" themselves
    lines = [f"| {first} | " + " | ".join(metrics) + " |", "|---" * columns + "|"]
    for name, vals in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(m, vals[m], seeds) for m in metrics) + " |")
    return "\n".join(lines)


def difference(rows: dict, a: str, b: str, metric: str, scale: float = 100, unit: str = "points") -> str:
    """'a - b' in points with both sds, and whether the gap exceeds the larger sd."""
    if a not in rows or b not in rows:
        return "not measured in this run"
    (ma, sa, na), (mb, sb, nb) = rows[a][metric], rows[b][metric]
    d = scale * (ma - mb)
    if min(na, nb) < 2:  # one seed has no spread to compare the gap with
        verdict = "one training seed: no seed-to-seed sd to compare with"
    elif abs(ma - mb) > max(sa, sb):
        verdict = "larger than the seed-to-seed sd"
    else:
        verdict = "within the seed-to-seed sd"
    return f"{d:+.{1 if unit == 'points' else 2}f} {unit} ({verdict})"


FLOOR = 0.10  # whole-caption accuracy below which the models do not yet draw what the prompts say
# Rough accuracy of guessing, per attribute of a one-object prompt (6 colours, 4 shapes, 2 sizes, 5 positions,
# 1 or 2 objects); a two-object prompt needs both right, so its chance is lower still.
CHANCE = {"colour": 1 / 6, "shape": 1 / 4, "size": 1 / 2, "position": 1 / 5, "count": 1 / 2}


def learned_attributes(gen: dict) -> tuple[list[str], list[str]]:
    """Attributes some model draws well above chance (best mean > 2x chance, or > chance + 25 points for
    size and count), and those it does not."""
    drawn, not_drawn = [], []
    for attribute, chance in CHANCE.items():
        best = max(v[attribute][0] for v in gen.values())
        (drawn if best > min(2 * chance, chance + 0.25) else not_drawn).append(
            f"{attribute} (best {100 * best:.0f}%, chance about {100 * chance:.0f}%)"
        )
    return drawn, not_drawn


def floor_warning(gen: dict) -> str:
    """What the models have learned, so that each comparison below is read for what it can say."""
    best = max(v["caption"][0] for v in gen.values())
    drawn, not_drawn = learned_attributes(gen)
    learned = (
        f"They do draw {', '.join(drawn)}, so the columns of those attributes can speak to text alignment; "
        if drawn
        else "No attribute is drawn well above chance; "
    )
    missing = f"not yet {', '.join(not_drawn)}." if not_drawn else "every attribute is drawn."
    if best >= FLOOR:
        return f"The best model reads right on {100 * best:.0f}% of the whole captions. {learned}{missing}"
    return (
        f"**At this training length the models do not draw whole captions yet** (best {100 * best:.1f}%), so "
        f"differences in the caption column are between models at the floor. {learned}{missing} The editing rows "
        "measure how well inversion and fusion keep the source more than whether the model can draw the edit."
    )


def bars(path: Path, groups: dict[str, dict], metrics: tuple[str, ...], title: str) -> None:
    """Grouped bars (percent, mean ± sd); names "model | split" get one panel per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[str]] = {}
    for name in groups:
        panels.setdefault(name.split(" | ")[1] if " | " in name else "", []).append(name)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.8), squeeze=False, sharey=True)
    x = np.arange(len(metrics))
    for ax, (panel, names) in zip(axes[0], panels.items(), strict=True):
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ax.bar(
                x + i * width - 0.4 + width / 2,
                [100 * groups[name][m][0] for m in metrics],
                width,
                yerr=[100 * groups[name][m][1] for m in metrics],
                capsize=2,
                label=name.split(" | ")[0],
            )
        ax.set_xticks(x, metrics, fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_title(f"{title}{': ' + panel if panel else ''}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("% (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def edit_plot(path: Path, rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(names) + 1.5), sharey=True)
    y = np.arange(len(names))
    for ax, metric, label in (
        (axes[0], "success", "edit success (judge), %"),
        (axes[1], "agree_tol", "pixels kept outside the object (within 8/255), %"),
    ):
        ax.barh(
            y,
            [100 * rows[n][metric][0] for n in names],
            xerr=[100 * rows[n][metric][1] for n in names],
            capsize=2,
            color="tab:blue" if metric == "success" else "tab:green",
        )
        ax.set_xlabel(label)
        ax.set_xlim(0, 100)
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


CD, NO_BIAS, CD_OFF = "ContextDiff", "no bias", "ContextDiff, strength 0"
BIAS_AWARE, PLAIN = "bias-aware inversion + fusion (ContextDiff)", "plain inversion + fusion (no bias)"
NO_FUSION, NO_MASK, BIAS_L2 = "no fusion", "fusion, no blend mask", "--bias_l2 model"
SPARSE, FRAMEWISE = "ContextDiff, sparse-causal (chunk of 8)", "ContextDiff, frame by frame (chunk of 1)"


def claims(gen: dict, ed: dict, vid: dict, best: str | None = None) -> list[str]:
    """One bullet per claim of the paper: text, then each comparison's :func:`difference`; with ``best`` (the
    report's name of issue 20's chosen bias variant) its comparisons with no bias and with Eq. 6 first."""

    def g(split: str, a: str, b: str, metric: str) -> tuple:
        return gen, f"{a} | {split}", f"{b} | {split}", metric

    bullets = [
        [
            ("Text alignment (generation), ContextDiff minus no-bias, colour: seen ", g("seen", CD, NO_BIAS, "colour")),
            ("; held-out ", g("held-out", CD, NO_BIAS, "colour")),
            ("; shape: seen ", g("seen", CD, NO_BIAS, "shape")),
        ],
        [
            (
                "Text alignment (generation), ContextDiff minus no-bias, whole caption: seen ",
                g("seen", CD, NO_BIAS, "caption"),
            ),
            ("; held-out ", g("held-out", CD, NO_BIAS, "caption")),
        ],
        [
            (
                "The adapter's share (same ContextDiff model, strength 1 minus 0), colour: seen ",
                g("seen", CD, CD_OFF, "colour"),
            ),
            ("; whole caption: seen ", g("seen", CD, CD_OFF, "caption")),
        ],
        [
            ("Editing fidelity, bias-aware minus plain inversion: success ", (ed, BIAS_AWARE, PLAIN, "success")),
            ("; kept pixels ", (ed, BIAS_AWARE, PLAIN, "agree_tol")),
        ],
        [
            ("The paper's objective minus `--bias_l2`, edit success: ", (ed, BIAS_AWARE, BIAS_L2, "success")),
            ("; kept pixels ", (ed, BIAS_AWARE, BIAS_L2, "agree_tol")),
        ],
        [
            (
                "Attention fusion alone (fusion without the blend mask minus no fusion), kept pixels: ",
                (ed, NO_MASK, NO_FUSION, "agree_tol"),
            ),
            ("; PSNR outside the object ", (ed, NO_MASK, NO_FUSION, "psnr_outside", 1, "dB")),
            (
                ". The blend mask's share (bias-aware inversion + fusion minus fusion without the mask), kept pixels: ",
                (ed, BIAS_AWARE, NO_MASK, "agree_tol"),
            ),
        ],
        [
            (
                "Sparse-causal minus frame-by-frame (ContextDiff), per-frame success: ",
                (vid, SPARSE, FRAMEWISE, "frame_success"),
            ),
            ("; flicker ", (vid, SPARSE, FRAMEWISE, "flicker")),
        ],
    ]
    if best:
        bullets[:0] = [
            [
                (f"Whole caption, {best} minus no-bias: seen ", g("seen", best, NO_BIAS, "caption")),
                ("; held-out ", g("held-out", best, NO_BIAS, "caption")),
                ("; position: held-out ", g("held-out", best, NO_BIAS, "position")),
                ("; count: held-out ", g("held-out", best, NO_BIAS, "count")),
            ],
            [
                (f"Whole caption, {best} minus the paper's Eq. 6: seen ", g("seen", best, CD, "caption")),
                ("; held-out ", g("held-out", best, CD, "caption")),
            ],
            [
                (
                    f"Edit success, {best} minus Eq. 6 (both bias-aware): ",
                    (ed, f"bias-aware inversion + fusion ({best})", BIAS_AWARE, "success"),
                ),
                ("; kept pixels ", (ed, f"bias-aware inversion + fusion ({best})", BIAS_AWARE, "agree_tol")),
            ],
        ]
    return ["- " + "".join(text + difference(*spec) for text, spec in parts) + "." for parts in bullets]


def variant_section(result: dict) -> list[str]:
    """Issue 20's choice among the bias variants, on validation prompts: each candidate's accuracies."""
    choice = result.get("variant_choice")
    if not choice:
        return []
    names = {"contextdiff": "Eq. 6 (paper)", **importlib.import_module("bench.quality").CANDIDATE_NAMES}
    rows = [
        f"| {names.get(name, name)} | " + " | ".join(f"{100 * v[m]:.1f}" for m in GEN_METRICS) + " |"
        for name, v in choice["scores"].items()
    ]
    return [
        "## The bias variant, chosen on validation prompts",
        "",
        f"Candidates (issue 20, docs/bias_leak.md): the leak-free variants, trained on the first seed. Chosen: "
        f"**{names.get(choice['chosen'])}**, by whole-caption accuracy on {choice['validation_prompts']} validation "
        "prompts (ties: mean attribute accuracy), at the node defaults above; the paper's Eq. 6 for reference. Only "
        "the chosen one is trained on the other seeds.",
        "",
        "| model (validation) | " + " | ".join(GEN_METRICS) + " |",
        "|---" * (len(GEN_METRICS) + 1) + "|",
        *rows,
        "",
    ]


def best_row(result: dict) -> str | None:
    """The generation rows' name of the chosen bias variant, ``None`` in a run without candidates."""
    choice = result.get("variant_choice")
    return importlib.import_module("bench.quality").best_name(choice["chosen"]) if choice else None


def write_report(result: dict, args) -> None:
    docs: Path = args.docs
    stamp = importlib.import_module("bench.__main__").stamp()
    result["stamp"] = stamp
    agg = result["aggregate"]
    (docs / "quality.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    bars(docs / "quality_generation.png", agg["generation"], GEN_METRICS, "generation, judge accuracy")
    edit_plot(docs / "quality_editing.png", agg["editing"])
    bars(
        docs / "quality_video.png",
        {k: {m: v[m] for m in ("frame_success", "flicker")} for k, v in agg["video"].items()},
        ("frame_success", "flicker"),
        "video editing",
    )

    d = result["defaults"]
    chosen = d["chosen"]
    judge_link = os.path.relpath(Path(__file__).resolve().parents[1] / "docs" / "quality_judge.md", docs.resolve())
    secs = result["training_seconds"]
    gen, ed, vid = agg["generation"], agg["editing"], agg["video"]
    lines = [
        "# Quality of the text-conditioned shapes model, judged exactly",
        "",
        f"Written by `python -m bench quality {'--quick ' if args.quick else ''}--seeds {args.seeds} --n {args.n} "
        f"--edits {args.edits} --clips {args.clips} --cfg {args.cfg}"
        + (f" --train_steps {args.train_steps}" if args.train_steps else "")
        + f"`: {result['seeds_done']} of {args.seeds} "
        f"training seeds done ({result['wall_seconds'] / 60:.0f} min in the last invocation; results of earlier "
        "invocations come from its cache).",
        "",
        stamp + f"\n- load average at the end: {', '.join(f'{x:.1f}' for x in __import__('os').getloadavg())} "
        "(the CPU was shared with other jobs: training times are wall-clock)",
        "",
        "Models: the shapes recipe (`trainer/configs/shapes.yaml`"
        + (f", {args.train_steps} steps instead of its own" if args.train_steps else "")
        + f"; the copy used is at the end), "
        f"{result['seeds_done']} training seeds x 2 variants (ContextDiff; the identical model with `--use_bias "
        "false`)"
        + (
            f" with ContextDiff (the paper's Eq. 6) on the first {args.paper_seeds} seed(s) only (its rows say so)"
            if getattr(args, "paper_seeds", None) is not None and args.paper_seeds < result["seeds_done"]
            else ""
        )
        + (
            f", and ContextDiff with `--bias_l2 1.0` on {min(args.bias_l2_seeds, result['seeds_done'])} seed(s) "
            "(an editing ablation; its rows say so)"
            if args.bias_l2_seeds
            else " (no `--bias_l2` model in this run)"
        )
        + (
            f"; the bias variants {', '.join(args.candidates)} on the first seed, the best on validation prompts "
            "on every seed (below)"
            if result.get("variant_choice")
            else ""
        )
        + ". Training time per "
        f"model: {np.mean(list(secs.values())) / 60:.1f} min on average ({min(secs.values()) / 60:.1f}-"
        f"{max(secs.values()) / 60:.1f}). Every number is mean ± sd over the training seeds; the judge "
        f"(`shapesworld/judge.py`, 100% on clean renders, see [quality_judge.md]({judge_link})) reads every image. "
        "Sampling is the ContextDiff KSampler (ddim, eta 0, scheduler normal), editing the inversion/edit nodes' "
        "runs, video the video edit node's run, all in-process on the CPU.",
        "",
        "## Node defaults, chosen on validation prompts",
        "",
        f"Chosen: steps **{chosen['steps']}**, adapter_strength **{chosen['strength']:g}**, fuse_start "
        f"**{chosen['fuse_start']:g}**, blend_threshold **{chosen['blend_threshold']:g}** (cfg {chosen['cfg']:g} "
        f"fixed). Validation: {d['validation_prompts']} prompts and {d['validation_edits']} edits of their own seeds, "
        f"test captions removed, on the first seed's ContextDiff model. Criterion: {d['criterion']}.",
        "",
        "| steps / adapter_strength | " + " | ".join(GEN_METRICS) + " |",
        "|---" * (len(GEN_METRICS) + 1) + "|",
        *[
            f"| {k} | " + " | ".join(f"{100 * v[m]:.1f}" for m in GEN_METRICS) + " |"
            for k, v in d["sweep"]["generation"].items()
        ],
        "",
        "| edit setting (validation) | success | agree_tol | psnr_outside |",
        "|---|---|---|---|",
        *[
            f"| fuse_start {k} | {100 * v['success']:.1f} | {100 * v['agree_tol']:.1f} | {v['psnr_outside']:.1f} |"
            for k, v in d["sweep"]["edit_fuse_start"].items()
        ],
        *[
            f"| blend threshold {k} | {100 * v['success']:.1f} | {100 * v['agree_tol']:.1f} | {v['psnr_outside']:.1f} |"
            for k, v in d["sweep"]["edit_threshold"].items()
        ],
        "",
        *variant_section(result),
        "## Generation",
        "",
        f"{args.n} test prompts with seen colour-shape pairs and {args.n} with a held-out pair (never in training). "
        "Per-attribute columns: every object of the prompt has it right; `caption`: all of it, count included.",
        "",
        table(gen, GEN_METRICS, "model | prompts", result["seeds_done"]),
        "",
        "![generation](quality_generation.png)",
        "",
        "![samples](quality_samples.png)",
        *(["", "![samples of the best variant](quality_samples_best.png)"] if result.get("samples_best") else []),
        "",
        "## Image editing",
        "",
        f"{args.edits} test edits, half attribute swaps (colour), half object replacements (shape), each on a rendered "
        "source inverted with its caption. `success`: the judge reads the whole target caption; `attribute`: the "
        "edited attribute changed; `kept`: every other attribute and the count as in the source; `psnr_outside` (dB, "
        "capped at 60) and `agree_exact`/`agree_tol` (share of pixels equal / within 8 of 255): outside the edited "
        "object (grown by 1 px); `background`: the background kind survives.",
        "",
        table(ed, EDIT_METRICS, "configuration", result["seeds_done"]),
        "",
        "![editing](quality_editing.png)",
        "",
        "## Video editing",
        "",
        f"{args.clips} rendered clips of 8 frames (moving or growing objects), colour or shape edited in every frame. "
        "`frame_success`: share of frames whose target holds; `flicker`: share of consecutive frame pairs whose main "
        "object changes colour or shape (or vanishes); `trajectory_px`: distance of the object's centre from the "
        "source's; `missing`: frames without an object.",
        "",
        table(vid, VIDEO_METRICS, "method", result["seeds_done"]),
        "",
        "![video](quality_video.png)",
        "",
        "## The paper's claims at this scale",
        "",
        floor_warning(gen),
        "",
        *claims(gen, ed, vid, best_row(result)),
        "",
        "All numbers per seed are in [quality.json](quality.json).",
        "",
        "## The recipe every model was trained from",
        "",
        "```yaml",
        result["recipe"].strip(),
        "```",
    ]
    (docs / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
