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
