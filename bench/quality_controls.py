"""Issue 31's controls, ``python -m bench quality --controls``: is the editing gain the bias or a smaller inversion
error, and what does an adapter trained on a frozen model (the SD user's path) do?

Models, per training seed (``--seeds``), all trained or reused by :func:`bench.quality.train` under ``--runs``, so the
models of the main run (``--train_steps 3000``: ``no_bias``, ``contextdiff``, ``self_bias``) are read from its cache:

- the no-bias model, the Eq. 6 model and the self-consistent model (``--self_bias 1``);
- two adapters on the frozen no-bias model (``--base_checkpoint``): Eq. 6 and the self-consistent bias, trained for
  as many steps as the no-bias model's last ``--control_budget_steps`` (1,000) cost. The cost of a step is the least
  one-thread CPU time of a few steps of each (``bench.shapes_train.step_times``), measured once on this machine and
  kept in the cache, so that a resumed run trains the same number of steps.

Editing (``--control_edits`` test edits, 64 by default): every model with plain (approximate) DDIM inversion and with
exact inversion (``--refine_steps`` Anderson iterations per step at most: until converged, else the best iterate);
the no-bias model at strength 0 (it has no adapter; it is also the frozen models at strength 0), the others
bias-aware at their chosen strength. Per edit: the judge's success, pixels kept within 8/255 and PSNR outside the
edited object, and the reconstruction of inversion alone (the source inverted and sampled back with its own caption
at guidance 1, no fusion): PSNR and pixels within 8/255 over the whole image.

Generation (``--n`` seen and ``--n`` held-out test prompts): the frozen adapters against the frozen model at strength 0.

Every choice is made on the first seed's models, on validation prompts and edits of their own seeds with the test
captions removed: each adapter's strength (whole-caption accuracy, adapter on: 0.5, 1, 1.5), then per editing
configuration fuse_start and the blend threshold (success x kept pixels). Results: mean ± sd over the seeds, in
``<docs>/quality_controls.md`` / ``.json`` and ``quality_controls_*.png``; cached per (model file, experiment) in
``<runs>/quality_cache.json`` under keys of their own (``controls/...``), beside the main run's.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from shapesworld import judge, scoring, world

from . import quality as q

BASES = ("no_bias", "contextdiff", "self_bias")
ADAPTERS = ("contextdiff", "self_bias", *q.FROZEN)
NAMES = {
    "no_bias": "no-bias model",
    "contextdiff": "Eq. 6 model",
    "self_bias": "self-consistent model",
    "frozen_eq6": "frozen no-bias model + Eq. 6 adapter",
    "frozen_self_bias": "frozen no-bias model + self-consistent adapter",
}
ADAPTER_STRENGTHS = (0.5, 1.0, 1.5)  # the adapter on; strength 0 is the no-bias (frozen) model's row
EDIT_EXTRA = ("psnr_recon", "agree_tol_recon")


def configurations() -> dict[str, tuple[str, bool]]:
    """Editing row name -> (model, exact inversion)."""
    out = {}
    for model in ("no_bias", *ADAPTERS):
        how = "inversion" if model == "no_bias" else "bias-aware inversion"
        out[f"{NAMES[model]}, plain {how}"] = (model, False)
        out[f"{NAMES[model]}, exact {how}"] = (model, True)
    return out


def captions_digest(texts: list[str]) -> str:
    """A short key of a list of prompts or edits: cache entries name the very set they were measured on."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]


def test_sets(args) -> dict:
    """The test prompts (seen, held-out), the test edits, and validation sets disjoint from them."""
    seen, held = q.prompts(q.TEST_SEED, args.n, "train"), q.prompts(q.HELD_SEED, args.n, "heldout")
    edits = scoring.edit_tasks(q.EDIT_SEED, args.control_edits)
    test_sources = {t.source_caption for t in edits}
    pool = scoring.edit_tasks(q.VAL_EDIT_SEED, 8 * args.control_val_edits)
    val_edits = [t for t in pool if t.source_caption not in test_sources][: args.control_val_edits]
    val = q.validation_prompts(args.n, {world.caption(x) for x in seen})
    return {"seen": seen, "held-out": held, "edits": edits, "val_prompts": val, "val_edits": val_edits}


# ---- models ----------------------------------------------------------------------------------------


def step_cost(cache: q.Cache, runs: Path, options: list[str], name: str, args) -> float:
    """Least one-thread CPU seconds of a training step of the recipe with ``options`` (measured once, cached)."""
    recipe = runs / q.RECIPE_COPY
    key = f"controls/step-cpu-s/{name}/{q.digest(recipe)}/{args.control_timing_repeats}"

    def measure() -> float:
        from bench.shapes_train import step_times
        from trainer.config import load_config

        cfg = load_config(["--config", str(recipe), *options, "--device", "cpu"])
        return step_times(cfg, args.control_timing_repeats, 1)[0]

    return cache.get(key, measure)


def adapter_steps(cache: q.Cache, runs: Path, base: Path, variant: str, args) -> dict:
    """Steps of the frozen-model adapter ``variant`` that cost what ``--control_budget_steps`` steps of the no-bias
    model cost, from :func:`step_cost` of each (the no-bias step measured once for both adapters)."""
    full_s = step_cost(cache, runs, ["--use_bias", "false"], "no_bias", args)
    frozen_s = step_cost(cache, runs, ["--base_checkpoint", str(base), *q.FROZEN[variant]], variant, args)
    return {
        "steps": max(1, round(args.control_budget_steps * full_s / frozen_s)),
        "no_bias_step_cpu_s": full_s,
        "adapter_step_cpu_s": frozen_s,
        "repeats": args.control_timing_repeats,
    }


def train_models(cache: q.Cache, runs: Path, extra: list[str], args, result: dict) -> dict[int, dict[str, Path]]:
    """Every seed's models: the main run's three (reused from ``--runs``), then the frozen-model adapters."""
    q.train_all([(v, sd) for sd in range(args.seeds) for v in BASES], runs, extra, args)
    ckpts: dict[int, dict[str, Path]] = {}
    for seed in range(args.seeds):
        ckpts[seed] = {}
        for variant in BASES:
            ckpts[seed][variant], result["training_seconds"][f"{variant}-seed{seed}"] = q.train(
                variant, seed, runs, extra, args.threads
            )
    for variant in q.FROZEN:
        result["adapter_steps"][variant] = adapter_steps(cache, runs, ckpts[0]["no_bias"], variant, args)
    frozen_extra = {
        (v, sd): frozen_args(result["adapter_steps"][v]["steps"], ckpts[sd]["no_bias"])
        for v in q.FROZEN
        for sd in range(args.seeds)
    }

    def one(plan: tuple[str, int]) -> tuple[Path, float]:
        return q.train(*plan, runs, frozen_extra[plan], args.threads)

    if args.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, frozen_extra))
    for variant, seed in frozen_extra:
        ckpts[seed][variant], result["training_seconds"][f"{variant}-seed{seed}"] = one((variant, seed))
    return ckpts


def frozen_args(steps: int, base: Path) -> list[str]:
    return ["--steps", str(steps), "--base_checkpoint", str(base.resolve())]


# ---- measurements ------------------------------------------------------------------------------------


def edit_rows(pack, b: q.Bundle, tasks: list[scoring.EditTask], s: q.Settings, exact: int, recon: bool) -> dict:
    """Mean edit scores (:func:`shapesworld.scoring.score_edit`) of ``tasks``; with ``recon`` also the reconstruction
    of inversion alone from the same inversion (its caption, guidance 1, no fusion)."""
    rows = []
    for k, task in enumerate(tasks):
        started = time.process_time()  # CPU seconds per edit (one thread): what a later run can plan with
        source = world.render(task.source, 32, np.random.default_rng(k))
        inv = q.invert_image(pack, b, source, task.source_caption, s, exact)
        edited = q.edit_inverted(pack, b, inv, task.source_caption, task.target_caption, task.blend_words, s)
        row = scoring.score_edit(edited, source, task)
        if recon:
            same = s.but(cfg=1.0, fuse=False, blend=False)
            back = q.edit_inverted(pack, b, inv, task.source_caption, task.source_caption, "", same)
            row["psnr_recon"] = scoring.psnr(back, source)
            row["agree_tol_recon"] = scoring.agreement(back, source, None, 8)
        row["cpu_s"] = time.process_time() - started
        rows.append(row)
    return q.mean_rows(rows)


def choose(pack, cache: q.Cache, bundles: dict, keys: dict, sets: dict, base: q.Settings, args) -> dict:
    """Every setting, on the first seed's models and the validation sets only (see the module docstring)."""
    val, val_edits = sets["val_prompts"], sets["val_edits"]
    val_key = captions_digest([world.caption(x) for x in val])
    edits_key = captions_digest([t.source_caption + "->" + t.target_caption for t in val_edits])
    chosen: dict = {"strength": {"no_bias": 0.0}, "edit": {}, "validation": {"strength": {}, "edit": {}}}
    for model in ADAPTERS:
        scores = {}
        for strength in ADAPTER_STRENGTHS:
            s = base.but(strength=strength)
            scores[strength] = cache.get(
                f"controls/{keys[model]}/val-gen/{s}/{val_key}",
                lambda s=s, m=model: q.generation_score(pack, bundles[m], val, s, q.VAL_SEED),
            )
        chosen["strength"][model] = max(
            ADAPTER_STRENGTHS,
            key=lambda v: (scores[v]["caption"], np.mean([scores[v][m] for m in judge.ATTRIBUTES]), -abs(v - 1.0)),
        )
        chosen["validation"]["strength"][NAMES[model]] = {str(k): v for k, v in scores.items()}
    for name, (model, exact) in configurations().items():
        s = base.but(strength=chosen["strength"][model])
        refine = args.refine_steps if exact else 0
        sweep = {}
        for field, values in (("fuse_start", q.FUSE_STARTS), ("blend_threshold", q.THRESHOLDS)):
            values = (values[0], values[-1]) if args.quick else values  # a smoke run: both ends of each grid
            part = sweep[field] = {}
            for value in values:
                trial = s.but(**{field: value})
                part[str(value)] = cache.get(
                    f"controls/{keys[model]}/val-edit/{trial}/refine{refine}/{edits_key}",
                    lambda t=trial, m=model, r=refine: edit_rows(pack, bundles[m], val_edits, t, r, recon=False),
                )
            s = s.but(**{field: q.edit_best(part, getattr(q.Settings(), field))})
        chosen["edit"][name] = asdict(s)
        chosen["validation"]["edit"][name] = sweep
    return chosen


def run_controls(args) -> dict:
    pack = q.import_pack()
    for sub in ("paths", "joint", "samplers", "edit_runs"):
        __import__(f"{pack.__name__}.nodes.{sub}")
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if not (runs / q.RECIPE_COPY).exists():
        (runs / q.RECIPE_COPY).write_text(q.RECIPE.read_text())
    cache = q.Cache(runs / "quality_cache.json")
    extra = ["--steps", str(args.train_steps)] if args.train_steps else []
    sets = test_sets(args)
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "started"},
        "recipe": (runs / q.RECIPE_COPY).read_text(),
        "training_seconds": {},
        "adapter_steps": {},
        "sets": {k: len(v) for k, v in sets.items()},
        "per_seed": {},
    }
    ckpts = train_models(cache, runs, extra, args, result)
    base = q.Settings(cfg=args.cfg)
    chosen = None
    edit_key = captions_digest([t.source_caption + "->" + t.target_caption for t in sets["edits"]])
    for seed in range(args.seeds):
        bundles = {v: q.load(p, pack) for v, p in ckpts[seed].items()}
        keys = {v: q.digest(p) for v, p in ckpts[seed].items()}
        if chosen is None:
            chosen = result["chosen"] = choose(pack, cache, bundles, keys, sets, base, args)
        r = result["per_seed"][seed] = {"editing": {}, "generation": {}}
        for name, (model, exact) in configurations().items():
            s = q.Settings(**chosen["edit"][name])
            refine = args.refine_steps if exact else 0
            r["editing"][name] = cache.get(
                f"controls/{keys[model]}/edit/{s}/refine{refine}/{edit_key}",
                lambda b=bundles[model], s=s, r_=refine: edit_rows(pack, b, sets["edits"], s, r_, recon=True),
            )
        for model in ("no_bias", *q.FROZEN):
            s = base.but(strength=chosen["strength"][model])
            name = f"{NAMES[model]}{', strength 0' if model == 'no_bias' else ''}"
            for split, seed_of in (("seen", q.TEST_SEED), ("held-out", q.HELD_SEED)):
                scenes = sets[split]
                key = captions_digest([world.caption(x) for x in scenes])
                r["generation"][f"{name} | {split}"] = cache.get(
                    f"controls/{keys[model]}/gen/{s}/{key}",
                    lambda b=bundles[model], s=s, sc=scenes, sd=seed_of: q.generation_score(pack, b, sc, s, sd),
                )
        if seed == 0:
            result["samples"] = samples_figure(pack, bundles, sets, chosen, base, args.docs)
        report(result, args)
    return result


def samples_figure(pack, bundles: dict, sets: dict, chosen: dict, base: q.Settings, docs: Path) -> str:
    """One picture: a row of samples per model (first seed), the same prompts and noise, each at its strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = list(sets["seen"][:4]) + list(sets["held-out"][:4])
    models = ["no_bias", *ADAPTERS]
    fig, axes = plt.subplots(len(models), len(scenes), figsize=(2.1 * len(scenes), 2.4 * len(models)), squeeze=False)
    for row, model in zip(axes, models, strict=True):
        s = base.but(strength=chosen["strength"][model])
        images = q.generate(pack, bundles[model], [world.caption(x) for x in scenes], s, 7)
        for ax, im, sc in zip(row, images, scenes, strict=True):
            ok = judge.compare(sc, judge.read(im))["caption"]
            ax.imshow(im, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(("right" if ok else "wrong") + f" (strength {s.strength:g})", fontsize=7)
        row[0].set_ylabel(NAMES[model].replace(" + ", "\n+ "), fontsize=7)
    for ax, sc in zip(axes[-1], scenes, strict=True):
        ax.set_xlabel(world.caption(sc).replace(" and ", "\nand "), fontsize=6)
    fig.suptitle("seed 0; left four: seen colour-shape pairs, right four: held-out pairs; judge's verdict", fontsize=9)
    fig.tight_layout()
    path = docs / "quality_controls_samples.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def report(result: dict, args) -> None:
    from bench.quality_controls_report import write_report

    result["seeds_done"] = len(result["per_seed"])
    result["aggregate"] = q.aggregate(result["per_seed"])
    result["wall_seconds"] = time.perf_counter() - args.started
    write_report(result, args)
    (args.docs / "quality_controls.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
