"""bench quality's plan for issue 20: which models each seed trains, and the variant chosen on validation only."""

from __future__ import annotations

import argparse

import pytest

from bench import quality
from bench.quality_report import GEN_METRICS


def args(**kw) -> argparse.Namespace:
    base = dict(candidates=["self_bias", "eq5"], bias_l2_seeds=1, paper_seeds=None, n=8)
    return argparse.Namespace(**{**base, **kw})


def test_seed_zero_trains_every_candidate_and_the_other_seeds_only_the_chosen_one():
    a = args()
    assert quality.seed_variants(0, a, None) == ["contextdiff", "no_bias", "bias_l2", "self_bias", "eq5"]
    assert quality.seed_variants(1, a, "eq5") == ["contextdiff", "no_bias", "eq5"]
    assert quality.seed_variants(2, args(candidates=[], bias_l2_seeds=0), None) == ["contextdiff", "no_bias"]
    assert quality.seed_variants(1, args(paper_seeds=1), "self_bias") == ["no_bias", "self_bias"]
    assert quality.seed_variants(0, args(paper_seeds=1), None)[0] == "contextdiff"


def scores(caption: float, attribute: float) -> dict:
    return {m: caption if m == "caption" else attribute for m in GEN_METRICS}


@pytest.mark.parametrize(
    "val, chosen",
    [
        ({"self_bias": scores(0.10, 0.5), "eq5": scores(0.20, 0.1)}, "eq5"),  # whole captions first
        ({"self_bias": scores(0.10, 0.5), "eq5": scores(0.10, 0.6)}, "eq5"),  # then the attributes' mean
        ({"self_bias": scores(0.10, 0.5), "eq5": scores(0.10, 0.5)}, "self_bias"),  # then the order given
    ],
)
def test_the_variant_is_chosen_on_validation_prompts_only(tmp_path, val, chosen):
    """The choice reads the validation generation scores (the cache key the defaults sweep uses) and nothing
    else: a test-set entry that says otherwise does not change it, and the paper's Eq. 6 is reported, not chosen."""
    s = quality.Settings()
    a = args()
    val_captions = {quality.world.caption(x) for x in quality.prompts(quality.TEST_SEED, a.n, "train")}
    keys = {"contextdiff": "cd", "self_bias": "sb", "eq5": "e5"}
    cache = quality.Cache(tmp_path / "cache.json")
    for name, key in keys.items():
        cache.data[quality.validation_key(key, s, a.n)] = val.get(name, scores(0.9, 0.9))
        cache.data[f"{key}/gen/seen/{s}/{a.n}"] = scores(1.0 if name != chosen else 0.0, 0.0)  # test: ignored
    best, record = quality.choose_variant(None, cache, {}, keys, a, s, val_captions)
    assert best == chosen and record["chosen"] == chosen
    assert set(record["scores"]) == {"contextdiff", "self_bias", "eq5"}


def test_a_killed_training_resumes_only_when_its_state_is_of_the_same_length(tmp_path):
    """A rerun of the bench continues a model killed mid-training (the trainer refuses other options), but not a
    state of another length: the schedule would differ from the uninterrupted run's."""
    import torch

    from trainer.checkpoint import save_state

    (tmp_path / quality.RECIPE_COPY).write_text("mode: shapes\nsteps: 1000\n")
    out = tmp_path / "no_bias-seed2"
    assert not quality.killed_run(out, ["--steps", "3000"], tmp_path)  # nothing saved yet
    save_state(out, 500, {"w": torch.zeros(1)}, {}, {"mode": "shapes"})  # a state from before states kept options
    assert not quality.killed_run(out, ["--steps", "3000"], tmp_path)
    save_state(out, 1000, {"w": torch.zeros(1)}, {}, {"mode": "shapes", "config": {"steps": 3000}})
    assert quality.killed_run(out, ["--steps", "3000"], tmp_path)
    assert not quality.killed_run(out, ["--steps", "2000"], tmp_path)
    assert not quality.killed_run(out, [], tmp_path)  # the recipe's 1,000 steps


# ---- issue 31's controls (bench/quality_controls.py) -----------------------------------------------------------


def control_args(**kw) -> argparse.Namespace:
    base = dict(n=8, control_edits=64, control_val_edits=8, control_budget_steps=1000, control_timing_repeats=2)
    return argparse.Namespace(**{**base, "refine_steps": 50, "quick": False, **kw})


def test_the_controls_test_and_validation_sets_are_disjoint():
    from bench import quality_controls as qc

    sets = qc.test_sets(control_args())
    assert len(sets["edits"]) == 64 and len(sets["val_edits"]) == 8
    assert not {t.source_caption for t in sets["val_edits"]} & {t.source_caption for t in sets["edits"]}
    assert not {quality.world.caption(x) for x in sets["val_prompts"]} & {
        quality.world.caption(x) for x in sets["seen"]
    }
    rows = qc.configurations()
    assert len(rows) == 10 and {m for m, _ in rows.values()} == {"no_bias", *qc.ADAPTERS}
    assert all(sorted(e for m2, e in rows.values() if m2 == m) == [False, True] for m, _ in rows.values())


def test_the_adapters_budget_is_the_no_bias_models_cost(tmp_path, monkeypatch):
    """Steps = budget x (no-bias step cost / adapter step cost), measured once: a second call reads the cache."""
    import bench.shapes_train
    from bench import quality_controls as qc

    (tmp_path / quality.RECIPE_COPY).write_text(quality.RECIPE.read_text())
    timed = []

    def step_times(cfg, repeats, threads):
        timed.append(cfg.options.base_checkpoint)
        return (0.2 if cfg.options.base_checkpoint else 0.3), 9.9

    monkeypatch.setattr(bench.shapes_train, "step_times", step_times)
    cache = quality.Cache(tmp_path / "cache.json")
    got = qc.adapter_steps(cache, tmp_path, tmp_path / "base.safetensors", "frozen_self_bias", control_args())
    assert got["steps"] == 1500 and got["no_bias_step_cpu_s"] == 0.3 and got["adapter_step_cpu_s"] == 0.2
    assert timed == ["", str(tmp_path / "base.safetensors")]
    assert qc.adapter_steps(cache, tmp_path, tmp_path / "x", "frozen_self_bias", control_args()) == got
    assert len(timed) == 2
    assert (
        qc.adapter_steps(cache, tmp_path, tmp_path / "base.safetensors", "frozen_eq6", control_args())["steps"] == 1500
    )
    assert len(timed) == 3, "the no-bias step is measured once for both adapters"


def test_the_controls_settings_come_from_validation_only(tmp_path):
    """choose() reads the validation entries of the cache and nothing else: with every one present it computes nothing
    (no model is given), and test entries that say otherwise do not move it."""
    from bench import quality_controls as qc

    a = control_args()
    sets = qc.test_sets(a)
    base = quality.Settings()
    keys = {m: m for m in ("no_bias", *qc.ADAPTERS)}
    cache = quality.Cache(tmp_path / "cache.json")
    val_key = qc.captions_digest([quality.world.caption(x) for x in sets["val_prompts"]])
    edits_key = qc.captions_digest([t.source_caption + "->" + t.target_caption for t in sets["val_edits"]])
    best_strength = {"contextdiff": 1.5, "self_bias": 0.5, "frozen_eq6": 1.0, "frozen_self_bias": 1.5}
    for model in qc.ADAPTERS:
        for strength in qc.ADAPTER_STRENGTHS:
            s = base.but(strength=strength)
            cache.data[f"controls/{model}/val-gen/{s}/{val_key}"] = scores(
                0.5 if strength == best_strength[model] else 0.1, 0.3
            )
    test_key = qc.captions_digest([t.source_caption + "->" + t.target_caption for t in sets["edits"]])
    for model, exact in qc.configurations().values():
        s = base.but(strength=best_strength.get(model, 0.0))
        refine = 50 if exact else 0
        for fs in quality.FUSE_STARTS:
            t = s.but(fuse_start=fs)
            good = fs == 0.7
            cache.data[f"controls/{model}/val-edit/{t}/refine{refine}/{edits_key}"] = {
                "success": 0.5 if good else 0.2,
                "agree_tol": 0.8,
            }
            cache.data[f"controls/{model}/edit/{t}/refine{refine}/{test_key}"] = {
                "success": float(fs == 0.3),
                "agree_tol": 1.0,
            }
        for th in quality.THRESHOLDS:
            t = s.but(fuse_start=0.7, blend_threshold=th)
            good = th == 0.5
            cache.data[f"controls/{model}/val-edit/{t}/refine{refine}/{edits_key}"] = {
                "success": 0.5 if good else 0.2,
                "agree_tol": 0.9,
            }
    chosen = qc.choose(None, cache, {}, keys, sets, base, a)
    assert chosen["strength"] == {"no_bias": 0.0, **best_strength}
    for name, (model, _) in qc.configurations().items():
        assert chosen["edit"][name]["fuse_start"] == 0.7 and chosen["edit"][name]["blend_threshold"] == 0.5, name
        assert chosen["edit"][name]["strength"] == best_strength.get(model, 0.0)
