"""Quality of the text-conditioned shapes model, measured by the exact judge (issue 11 item 6).

    python -m bench quality [--seeds 3] [--n 96] [--edits 24] [--clips 8] [--quick]

For each training seed it trains (or reuses) three models with ``python -m trainer.train`` and the
shapes recipe: ContextDiff (the paper's objective), the identical model with ``--use_bias false``,
and ContextDiff with ``--bias_l2``. Then, with ComfyUI imported in-process on the CPU and the pack's
own node code (the joint loader, ContextDiffKSampler, the inversion/edit runs, the video edit run):

- Generation: per-attribute and whole-caption accuracy of the judge on prompts with seen and with
  held-out colour-shape pairs, for ContextDiff, ContextDiff at adapter strength 0, and no-bias.
- Image editing (attribute swaps, object replacements): success by the judge, PSNR and pixel
  agreement outside the edited object, for plain inversion + fusion (no-bias model), bias-aware
  inversion + fusion, and the ablations (no fusion, no blend mask, fuse_start, blend threshold,
  ``--bias_l2``).
- Video editing: per-frame success, flicker and trajectory error, sparse-causal vs frame by frame.
- Node defaults (fuse_start, blend threshold, adapter strength, steps) chosen on validation prompts
  (their own seed; test captions removed) on the first seed's ContextDiff model.

Writes docs/quality.md, docs/quality.json and docs/quality_*.png, stamped with machine and date.
Results are cached per (model file, experiment) under ``--runs`` so an interrupted run resumes.

``--controls`` measures issue 31's controls instead, on the same models and cache (bench/quality_controls.py):
plain against exact inversion for each model, and adapters trained on the frozen no-bias model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from devkit import ROOT, import_pack
from shapesworld import judge, scoring, world

RECIPE = ROOT / "trainer" / "configs" / "shapes.yaml"
RECIPE_COPY = "recipe.yaml"  # every model of a run trains from this copy, taken when the run starts
VARIANTS = {"contextdiff": [], "no_bias": ["--use_bias", "false"], "bias_l2": ["--bias_l2", "1.0"]}
# Issue 20's leak-free candidates (docs/bias_leak.md): the best is chosen on validation prompts only.
CANDIDATES = {
    "self_bias": ["--self_bias", "1.0"],
    "eq5": ["--objective", "eq5"],
    "text_bias": ["--bias_input", "none"],
}
CANDIDATE_NAMES = {
    "self_bias": "self-consistent bias (--self_bias 1)",
    "eq5": "Eq. 5 (--objective eq5)",
    "text_bias": "text-only bias (--bias_input none)",
}
# Issue 31's adapters on the frozen no-bias model (``--base_checkpoint``; bench/quality_controls.py): Eq. 6 and the
# self-consistent bias.
FROZEN = {"frozen_eq6": [], "frozen_self_bias": ["--self_bias", "1.0"]}
ALL_VARIANTS = {**VARIANTS, **CANDIDATES, **FROZEN}
FUSE_STARTS = (0.3, 0.5, 0.7, 0.9)
THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)
STRENGTHS = (0.0, 0.5, 1.0, 1.5)
STEP_CHOICES = (10, 20, 40)
TEST_SEED, VAL_SEED, HELD_SEED, EDIT_SEED, VAL_EDIT_SEED, CLIP_SEED = 101, 202, 303, 404, 505, 606


@dataclass(frozen=True)
class Settings:
    """Sampling and editing settings of one experiment (the node inputs of the same names)."""

    steps: int = 20
    cfg: float = 3.0
    strength: float = 1.0
    fuse_start: float = 0.5
    blend_threshold: float = 0.3
    fuse: bool = True
    blend: bool = True
    chunk_size: int = 8

    def but(self, **kw) -> Settings:
        return Settings(**{**asdict(self), **kw})


# ---- models: train, load --------------------------------------------------------------------------


def train(variant: str, seed: int, runs: Path, extra: list[str], threads: int = 1) -> tuple[Path, float]:
    """Train one model (or reuse the finished one) and return its checkpoint and training seconds."""
    out = runs / f"{variant}-seed{seed}"
    done = out / "quality_train.json"
    if done.exists():
        info = json.loads(done.read_text())
        if info["args"] == extra and Path(info["checkpoint"]).exists():
            return Path(info["checkpoint"]), info["seconds"]
    resume = ["--resume", "true"] if killed_run(out, extra, runs) else []
    cmd = [
        sys.executable,
        "-m",
        "trainer.train",
        "--config",
        str(runs / RECIPE_COPY),
        "--seed",
        str(seed),
        "--output_dir",
        str(out),
        "--name",
        f"shapes-{variant}-seed{seed}",
        *ALL_VARIANTS[variant],
        *extra,
        *resume,
    ]
    print("[quality] train:", " ".join(cmd[2:]), flush=True)
    t = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    seconds = time.perf_counter() - t
    ckpt = final_checkpoint(out)
    done.write_text(json.dumps({"args": extra, "checkpoint": str(ckpt), "seconds": seconds}))
    return ckpt, seconds


def killed_run(out: Path, extra: list[str], runs: Path) -> bool:
    """Whether ``out`` holds the saved state of this very training, killed before it finished: then it resumes. The
    trainer replays the same steps (the result is the uninterrupted run's) and refuses a state of other options;
    the length is checked here, since the trainer lets a resumed run change it."""
    import yaml

    from trainer.checkpoint import latest_info

    info = latest_info(out)
    saved = None if info is None else info.get("config")
    if saved is None:
        return False
    recipe = yaml.safe_load((runs / RECIPE_COPY).read_text())
    steps = int(extra[extra.index("--steps") + 1]) if "--steps" in extra else recipe["steps"]
    return saved.get("steps") == steps


def final_checkpoint(out: Path) -> Path:
    """The newest .safetensors the trainer wrote into ``out`` (training state folders excluded)."""
    files = sorted((p for p in out.glob("*.safetensors")), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"the trainer wrote no .safetensors into {out}")
    return files[-1]


@dataclass
class Bundle:
    """What Load ContextDiff Shapes Model gives: MODEL, CLIP, the pixel-space VAE and the adapter."""

    model: object
    clip: object
    vae: object
    adapter: object
    name: str


def load(path: Path, pack) -> Bundle:
    """The checkpoint through the pack's shapes loader node, from a folder registered like models/contextdiff."""
    import folder_paths

    folder = pack.nodes.paths.FOLDER
    runs = str(path.parent.parent)
    if folder not in folder_paths.folder_names_and_paths:
        pack.nodes.paths.register_model_folder()
    if runs not in folder_paths.get_folder_paths(folder):
        folder_paths.add_model_folder_path(folder, runs)
    name = f"{path.parent.name}/{path.name}"
    model, clip, vae, adapter = pack.nodes.joint.ContextDiffShapesLoader.execute(name).result
    return Bundle(model, clip, vae, adapter, name)


# ---- running the nodes' code -----------------------------------------------------------------------


def encode(clip, texts: list[str]) -> list:
    """One CONDITIONING holding a batch of prompts, each encoded by the core CLIPTextEncode node."""
    import torch

    import nodes as comfy_nodes  # ComfyUI's nodes.py

    conds = [comfy_nodes.CLIPTextEncode().encode(clip, t)[0][0] for t in texts]
    tokens = torch.cat([c[0] for c in conds])
    extra = {k: v for k, v in conds[0][1].items() if k != "pooled_output"}
    pooled = [c[1].get("pooled_output") for c in conds]
    if all(p is not None for p in pooled):
        extra["pooled_output"] = torch.cat(pooled)
    return [[tokens, extra]]


def to_latent(images: np.ndarray):
    import torch

    return torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(samples) -> np.ndarray:
    x = samples.float().clamp(-1, 1).add(1).mul(127.5).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()


def generate(pack, b: Bundle, captions: list[str], s: Settings, seed: int, batch: int = 32) -> np.ndarray:
    """Images for ``captions`` through ContextDiffKSampler (ddim, eta 0, scheduler normal)."""
    import torch

    sampler = pack.nodes.samplers.ContextDiffKSampler
    negative_one = encode(b.clip, [""])
    out = []
    for i in range(0, len(captions), batch):
        part = captions[i : i + batch]
        latent = {"samples": torch.zeros(len(part), 3, 32, 32)}
        res = sampler.execute(
            b.model,
            encode(b.clip, part),
            negative_one,
            latent,
            seed + i,
            s.steps,
            s.cfg,
            "normal",
            "ddim",
            0.0,
            s.strength,
            1.0,
            b.adapter,
        )
        out.append(to_images(res.result[0]["samples"]))
    return np.concatenate(out)


def invert_image(pack, b: Bundle, source: np.ndarray, caption: str, s: Settings, refine_steps: int = 0):
    """The inversion node's run on ``source`` with its caption (guidance 1); ``refine_steps`` > 0 solves each step
    exactly (until converged, else the best iterate: ``contextdiff.inversion.refine``)."""
    import torch

    runs = pack.nodes.edit_runs
    inversion = runs.InversionSettings(
        steps=s.steps,
        cfg=1.0,
        fuse_start=s.fuse_start,
        strength=s.strength,
        store_dtype=torch.float16,
        refine_steps=refine_steps,
    )
    guide = runs.Guide(b.model, encode(b.clip, [caption]), adapter=b.adapter)
    return runs.invert(guide, {"samples": to_latent(source[None])}, inversion)


def edit_inverted(pack, b: Bundle, inv, source_caption: str, target_caption: str, words: str, s: Settings):
    """The edit sampler's run from the inversion ``inv`` to ``target_caption``; ``words`` the blend words."""
    runs = pack.nodes.edit_runs
    pos_tgt, neg = (encode(b.clip, [t]) for t in (target_caption, ""))
    edit = runs.EditSettings(
        cfg=s.cfg,
        source_prompt=source_caption,
        target_prompt=target_caption,
        blend_words=words if (s.blend and s.fuse) else "",
        blend_threshold=s.blend_threshold,
        fuse=s.fuse,
        strength=s.strength,
    )
    plan = runs.plan_edit(edit, inv.settings, b.clip)
    res = runs.edit(runs.Guide(b.model, pos_tgt, neg, b.adapter), inv, plan)
    return to_images(res.samples)[0]


def edit_image(pack, b: Bundle, source: np.ndarray, task: scoring.EditTask, s: Settings) -> np.ndarray:
    """Invert ``source`` with its caption, then edit it to the target caption: the edit nodes' runs."""
    inv = invert_image(pack, b, source, task.source_caption, s)
    return edit_inverted(pack, b, inv, task.source_caption, task.target_caption, task.blend_words, s)


def edit_clip(pack, b: Bundle, task: scoring.ClipEditTask, s: Settings) -> np.ndarray:
    """The video edit node's run on a rendered clip; ``chunk_size`` 1 edits frame by frame."""
    import torch

    frames = torch.from_numpy(task.source.frames).float() / 255.0
    runs, video_runs = pack.nodes.edit_runs, pack.nodes.video_runs
    edit = runs.EditSettings(
        cfg=s.cfg,
        source_prompt=task.source_caption,
        target_prompt=task.target_caption,
        blend_words=task.blend_words if s.blend else "",
        blend_threshold=s.blend_threshold,
        strength=s.strength,
    )
    inversion = runs.InversionSettings(steps=s.steps, fuse_start=s.fuse_start, strength=s.strength)
    video = video_runs.VideoSettings(edit, inversion, chunk_size=s.chunk_size, overlap=0 if s.chunk_size == 1 else 2)
    out, _ = video_runs.edit_video(b.model, b.vae, b.clip, frames, video, budget_bytes=16e9, adapter=b.adapter)
    return (out.clamp(0, 1) * 255).round().byte().numpy()


# ---- experiments (cached) -------------------------------------------------------------------------


class Cache:
    """Results per (model file digest, experiment key) in one json file, written after each entry."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str, compute):
        if key not in self.data:
            self.data[key] = compute()
            self.path.write_text(json.dumps(self.data, indent=1))
        return self.data[key]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def prompts(seed: int, n: int, split: str, exclude: set[str] = frozenset()) -> list[world.Scene]:
    """``n`` scenes of ``split`` whose captions are not in ``exclude`` (validation stays off the test set)."""
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:
        s = world.sample_scene(rng, split)
        if world.caption(s) not in exclude:
            out.append(s)
    return out


def validation_prompts(n: int, test_captions: set[str]) -> list[world.Scene]:
    """The validation prompts: their own seed, the test captions removed."""
    return prompts(VAL_SEED, n, "train", test_captions)


def validation_key(model_key: str, s: Settings, n: int) -> str:
    """The cache key of one model's generation score on the validation prompts at settings ``s``."""
    return f"{model_key}/val-gen/{s.steps}/{s.strength}/{s.cfg}/{n}"


def generation_score(pack, b: Bundle, scenes: list[world.Scene], s: Settings, seed: int) -> dict:
    images = generate(pack, b, [world.caption(x) for x in scenes], s, seed)
    return judge.accuracy(scenes, [judge.read(im) for im in images])


def edit_score(pack, b: Bundle, tasks: list[scoring.EditTask], s: Settings) -> dict:
    rows = []
    for k, task in enumerate(tasks):
        source = world.render(task.source, 32, np.random.default_rng(k))
        rows.append(scoring.score_edit(edit_image(pack, b, source, task, s), source, task))
    return mean_rows(rows)


def clip_score(pack, b: Bundle, tasks: list[scoring.ClipEditTask], s: Settings) -> dict:
    return mean_rows([scoring.score_clip_edit(edit_clip(pack, b, t, s), t) for t in tasks])


def mean_rows(rows: list[dict]) -> dict:
    """Mean of each metric; PSNR averaged over finite values (identical images count as 60 dB)."""
    out = {}
    for k in rows[0]:
        v = np.asarray([r[k] for r in rows], float)
        if k.startswith("psnr"):
            v = np.minimum(v, 60.0)
        out[k] = float(np.nanmean(v))
    return out


# ---- the benchmark --------------------------------------------------------------------------------


def choose_defaults(
    pack,
    cache: Cache,
    b: Bundle,
    key: str,
    base: Settings,
    n: int,
    edits: int,
    test_captions: set[str],
    test_edit_captions: set[str],
) -> tuple[Settings, dict]:
    """Sweep the node defaults on validation prompts and edits (disjoint from the test set)."""
    val = validation_prompts(n, test_captions)
    val_tasks = [t for t in scoring.edit_tasks(VAL_EDIT_SEED, 4 * edits) if t.source_caption not in test_edit_captions]
    val_tasks = val_tasks[:edits]
    sweep = {"generation": {}, "edit_fuse_start": {}, "edit_threshold": {}}

    def gen_value(kv):  # whole-caption accuracy; ties go to the node's defaults, then to fewer steps
        steps, strength = kv[0].split("/")
        default = Settings()
        return kv[1]["caption"], -abs(float(strength) - default.strength), -abs(int(steps) - default.steps), -int(steps)

    def sweep_generation(settings: list[Settings]) -> Settings:
        for s in settings:
            sweep["generation"][f"{s.steps}/{s.strength:g}"] = cache.get(
                validation_key(key, s, n),
                lambda s=s: generation_score(pack, b, val, s, VAL_SEED),
            )
        steps, strength = max(sweep["generation"].items(), key=gen_value)[0].split("/")
        return base.but(steps=int(steps), strength=float(strength))

    # one input at a time: the strength at 20 steps, then the steps at that strength
    chosen = sweep_generation([base.but(steps=20, strength=v) for v in STRENGTHS])
    chosen = sweep_generation([chosen.but(steps=v) for v in STEP_CHOICES])

    for fs in FUSE_STARTS:
        s = chosen.but(fuse_start=fs)
        sweep["edit_fuse_start"][str(fs)] = cache.get(
            f"{key}/val-edit/{s}/{len(val_tasks)}", lambda s=s: edit_score(pack, b, val_tasks, s)
        )
    chosen = chosen.but(fuse_start=edit_best(sweep["edit_fuse_start"], Settings().fuse_start))
    for th in THRESHOLDS:
        s = chosen.but(blend_threshold=th)
        sweep["edit_threshold"][str(th)] = cache.get(
            f"{key}/val-edit/{s}/{len(val_tasks)}", lambda s=s: edit_score(pack, b, val_tasks, s)
        )
    chosen = chosen.but(blend_threshold=edit_best(sweep["edit_threshold"], Settings().blend_threshold))
    return chosen, {
        "validation_prompts": len(val),
        "validation_edits": len(val_tasks),
        "sweep": sweep,
        "criterion": "generation: whole-caption accuracy; editing: mean of success x agreement-within-8 outside "
        "the edited object; ties go to the node's defaults (strength 1, 20 steps, fuse_start 0.5, threshold 0.3)",
    }


def edit_best(sweep_part: dict, default: float) -> float:
    """The swept value whose edits count most: an edit counts when it succeeds and keeps the rest (agreement within
    8/255); ties: the value closest to the node default."""
    return float(
        max(sweep_part.items(), key=lambda kv: (kv[1]["success"] * kv[1]["agree_tol"], -abs(float(kv[0]) - default)))[0]
    )


def best_name(variant: str) -> str:
    """The report's name of the chosen bias variant's model."""
    return f"best variant: {CANDIDATE_NAMES[variant]}"


def edit_ablations(chosen: Settings, best: str | None = None) -> dict[str, tuple[str, Settings]]:
    """Name -> (model variant, settings) of every editing configuration measured on the test edits."""
    out = {
        "plain inversion + fusion (no bias)": ("no_bias", chosen.but(strength=0.0)),
        "bias-aware inversion + fusion (ContextDiff)": ("contextdiff", chosen),
        "ContextDiff model, adapter strength 0": ("contextdiff", chosen.but(strength=0.0)),
        "no fusion": ("contextdiff", chosen.but(fuse=False, blend=False)),
        "fusion, no blend mask": ("contextdiff", chosen.but(blend=False)),
        "--bias_l2 model": ("bias_l2", chosen),
    }
    if best:
        out[f"bias-aware inversion + fusion ({best_name(best)})"] = (best, chosen)
    out.update({f"fuse_start {fs}": ("contextdiff", chosen.but(fuse_start=fs)) for fs in FUSE_STARTS})
    out.update({f"blend threshold {th}": ("contextdiff", chosen.but(blend_threshold=th)) for th in THRESHOLDS})
    return out


def seed_variants(seed: int, args, best: str | None) -> list[str]:
    """The models of one training seed: no bias always; Eq. 6 on the first ``--paper_seeds`` seeds (all by
    default); the ``--bias_l2`` ablation on the first ``--bias_l2_seeds``; every candidate on seed 0 (to choose
    among them), the chosen one on the others."""
    paper = args.paper_seeds is None or seed < args.paper_seeds
    out = (["contextdiff"] if paper else []) + ["no_bias"] + (["bias_l2"] if seed < args.bias_l2_seeds else [])
    return out + (list(args.candidates) if seed == 0 else [best] if best else [])


def train_all(plan: list[tuple[str, int]], runs: Path, extra: list[str], args) -> None:
    """Train every model of ``plan`` first, ``--jobs`` single-threaded trainers side by side."""
    if args.jobs > 1:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda vs: train(vs[0], vs[1], runs, extra, args.threads), plan))


def choose_variant(pack, cache, bundles: dict, keys: dict, args, s: Settings, test_captions: set[str]):
    """Issue 20's best variant: the candidate with the highest whole-caption accuracy on the validation prompts
    (ties: mean attribute accuracy, then the order of ``--candidates``), at the chosen node defaults."""
    from bench.quality_report import GEN_METRICS

    val = validation_prompts(args.n, test_captions)
    scores = {
        c: cache.get(  # choose_defaults' key: the same sampling is not run twice
            validation_key(keys[c], s, args.n),
            lambda c=c: generation_score(pack, bundles[c], val, s, VAL_SEED),
        )
        for c in ["contextdiff", *args.candidates]
    }
    order = list(args.candidates)
    best = max(
        order, key=lambda c: (scores[c]["caption"], np.mean([scores[c][m] for m in GEN_METRICS]), -order.index(c))
    )
    return best, {"validation_prompts": len(val), "scores": scores, "chosen": best}


def run(args) -> dict:
    pack = import_pack()
    for sub in ("paths", "joint", "samplers", "edit_runs", "video_runs"):
        __import__(f"{pack.__name__}.nodes.{sub}")
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False

    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if not (runs / RECIPE_COPY).exists():
        (runs / RECIPE_COPY).write_text(RECIPE.read_text())
    cache = Cache(runs / "quality_cache.json")
    extra = ["--steps", str(args.train_steps)] if args.train_steps else []
    base = Settings(cfg=args.cfg)
    test_seen = prompts(TEST_SEED, args.n, "train")
    test_held = prompts(HELD_SEED, args.n, "heldout")
    test_tasks = scoring.edit_tasks(EDIT_SEED, args.edits)
    clip_tasks = scoring.clip_edit_tasks(CLIP_SEED, args.clips)
    test_captions = {world.caption(x) for x in test_seen}
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "started"},
        "recipe": (runs / RECIPE_COPY).read_text(),
        "per_seed": {},
        "training_seconds": {},
    }
    train_all([(v, 0) for v in seed_variants(0, args, None)], runs, extra, args)
    chosen = best = None
    for seed in range(args.seeds):
        if seed == 1:  # the variant is chosen: the other seeds' models, side by side
            train_all(
                [(v, sd) for sd in range(1, args.seeds) for v in seed_variants(sd, args, best)], runs, extra, args
            )
        ckpts, bundles = {}, {}
        for variant in seed_variants(seed, args, best):
            ckpts[variant], secs = train(variant, seed, runs, extra, args.threads)
            result["training_seconds"][f"{variant}-seed{seed}"] = secs
            bundles[variant] = load(ckpts[variant], pack)
        keys = {v: digest(p) for v, p in ckpts.items()}
        if chosen is None:  # defaults from validation on the first seed's ContextDiff model
            chosen, selection = choose_defaults(
                pack,
                cache,
                bundles["contextdiff"],
                keys["contextdiff"],
                base,
                args.n,
                args.edits,
                test_captions,
                {t.source_caption for t in test_tasks},
            )
            result["defaults"] = {"chosen": asdict(chosen), **selection}
            if args.candidates:
                best, result["variant_choice"] = choose_variant(pack, cache, bundles, keys, args, chosen, test_captions)
        r = result["per_seed"][seed] = {"generation": {}, "editing": {}, "video": {}}
        gen = {
            "ContextDiff": ("contextdiff", chosen),
            "ContextDiff, strength 0": ("contextdiff", chosen.but(strength=0.0)),
            "no bias": ("no_bias", chosen.but(strength=0.0)),
        }
        if best:
            gen[best_name(best)] = (best, chosen)
        gen = {name: (v, s) for name, (v, s) in gen.items() if v in bundles}  # --paper_seeds: Eq. 6 on fewer seeds
        for name, (variant, s) in gen.items():
            for split, scenes, sd in (("seen", test_seen, TEST_SEED), ("held-out", test_held, HELD_SEED)):
                r["generation"][f"{name} | {split}"] = cache.get(
                    f"{keys[variant]}/gen/{split}/{s}/{len(scenes)}",
                    lambda b=bundles[variant], s=s, sc=scenes, sd=sd: generation_score(pack, b, sc, s, sd),
                )
        for name, (variant, s) in edit_ablations(chosen, best).items():
            if variant not in bundles:
                continue
            r["editing"][name] = cache.get(
                f"{keys[variant]}/edit/{s}/{len(test_tasks)}",
                lambda b=bundles[variant], s=s: edit_score(pack, b, test_tasks, s),
            )
        videos = [
            ("ContextDiff, sparse-causal (chunk of 8)", "contextdiff", chosen.but(chunk_size=8)),
            ("ContextDiff, frame by frame (chunk of 1)", "contextdiff", chosen.but(chunk_size=1)),
        ]
        if best:
            videos.append((f"{best_name(best)}, sparse-causal (chunk of 8)", best, chosen.but(chunk_size=8)))
        for name, variant, s in (v for v in videos if v[1] in bundles):
            r["video"][name] = cache.get(
                f"{keys[variant]}/video/{s}/{len(clip_tasks)}",
                lambda s=s, b=bundles[variant]: clip_score(pack, b, clip_tasks, s),
            )
        if seed == 0:
            result["samples"] = sample_figure(pack, bundles["contextdiff"], test_seen, test_held, chosen, args.docs)
            if best:
                result["samples_best"] = sample_figure(
                    pack, bundles[best], test_seen, test_held, chosen, args.docs, "quality_samples_best.png"
                )
        report(result, args)  # after every seed, so that a long run shows what it has so far
    return result


def report(result: dict, args) -> None:
    from bench.quality_report import write_report

    result["seeds_done"] = len(result["per_seed"])
    result["aggregate"] = aggregate(result["per_seed"])
    result["wall_seconds"] = time.perf_counter() - args.started
    write_report(result, args)


def aggregate(per_seed: dict) -> dict:
    """section -> name -> metric -> [mean, sd, seeds] over the seeds that ran it (sd with ddof=1; 0 for one)."""
    seeds = list(per_seed.values())
    out = {}
    for section in seeds[0]:
        out[section] = {}
        for name in seeds[0][section]:
            out[section][name] = {}
            have = [s[section][name] for s in seeds if name in s[section]]
            for m in have[0]:
                v = np.asarray([h[m] for h in have], float)
                out[section][name][m] = [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)]
    return out


def sample_figure(pack, b: Bundle, seen, held, s: Settings, docs: Path, name: str = "quality_samples.png") -> str:
    """Prompts and their images (first seed's ContextDiff model) as docs/quality_samples.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = list(seen[:6]) + list(held[:6])
    images = generate(pack, b, [world.caption(x) for x in scenes], s, 7)
    fig, axes = plt.subplots(2, 6, figsize=(15, 6.2))
    for ax, im, sc in zip(axes.flat, images, scenes, strict=False):
        ok = judge.compare(sc, judge.read(im))["caption"]
        ax.imshow(im, interpolation="nearest")
        ax.set_title(
            world.caption(sc).replace(" and ", "\nand ") + ("\n[judge: right]" if ok else "\n[judge: wrong]"),
            fontsize=7,
        )
        ax.axis("off")
    fig.suptitle(f"{b.name} (seed 0) - top: seen colour-shape pairs; bottom: held-out pairs", fontsize=9)
    fig.tight_layout()
    path = docs / name
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=3, help="training seeds (>= 3 for mean +- sd)")
    ap.add_argument("--n", type=int, default=96, help="prompts per generation set (seen, held-out, validation)")
    ap.add_argument("--edits", type=int, default=24, help="image edits per configuration")
    ap.add_argument("--clips", type=int, default=8, help="video edits (8 frames each) per configuration")
    ap.add_argument(
        "--bias_l2_seeds",
        type=int,
        default=1,
        help="train the --bias_l2 ablation model on the first N seeds only (an editing ablation; its rows say N)",
    )
    ap.add_argument(
        "--candidates",
        type=lambda text: [c for c in text.split(",") if c],
        default=list(CANDIDATES),
        help="bias variants trained on the first seed; the best on validation prompts is trained on every seed "
        f"(comma-separated, of: {', '.join(CANDIDATES)}; empty: none)",
    )
    ap.add_argument(
        "--paper_seeds",
        type=int,
        default=None,
        help="train the paper's Eq. 6 model on the first N seeds only (default: every seed); its rows then say N",
    )
    ap.add_argument("--jobs", type=int, default=1, help="models trained side by side before the evaluation")
    ap.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance of sampling and editing")
    ap.add_argument("--train_steps", type=int, default=0, help="override the recipe's training steps (0 = recipe)")
    ap.add_argument(
        "--controls",
        action="store_true",
        help="issue 31's controls instead of the main tables (bench/quality_controls.py): plain vs exact inversion "
        "per model, adapters on the frozen no-bias model; writes quality_controls.md/json/png into --docs",
    )
    ap.add_argument("--control_edits", type=int, default=64, help="--controls: test edits per configuration")
    ap.add_argument("--control_val_edits", type=int, default=16, help="--controls: validation edits per setting")
    ap.add_argument(
        "--control_budget_steps",
        type=int,
        default=1000,
        help="--controls: the frozen-model adapters train for what this many no-bias model steps cost",
    )
    ap.add_argument(
        "--control_timing_repeats", type=int, default=5, help="--controls: steps timed to measure that cost"
    )
    ap.add_argument(
        "--refine_steps",
        type=int,
        default=50,
        help="--controls: exact inversion's most iterations per step (it stops when converged; else the best iterate)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: --n 12 --edits 4 --clips 2, 60 training steps")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "quality"), help="models and result cache")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="where quality.md/json/png go")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared CPU, OpenMP's spinning "
        "threads made a forward pass 20x slower than one thread)",
    )
    args = ap.parse_args(argv)
    if args.paper_seeds is not None and args.paper_seeds < 1:
        ap.error("--paper_seeds must be at least 1: the node defaults are chosen on the first seed's Eq. 6 model")
    unknown = [c for c in args.candidates if c not in CANDIDATES]
    if unknown:
        ap.error(f"--candidates: {', '.join(unknown)} unknown; choose from {', '.join(CANDIDATES)}")
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.edits, args.clips = min(args.n, 12), min(args.edits, 4), min(args.clips, 2)
        args.train_steps = args.train_steps or 60
        args.runs = str(Path(args.runs).with_name(Path(args.runs).name + "-quick"))
        args.control_edits, args.control_val_edits = min(args.control_edits, 2), min(args.control_val_edits, 2)
        args.control_budget_steps = min(args.control_budget_steps, 20)
        args.refine_steps, args.control_timing_repeats = min(args.refine_steps, 5), min(args.control_timing_repeats, 2)
    args.docs.mkdir(parents=True, exist_ok=True)
    args.started = time.perf_counter()
    if args.controls:
        from bench.quality_controls import run_controls

        run_controls(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
