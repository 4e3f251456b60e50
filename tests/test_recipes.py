"""Every shipped recipe parses and validates (with the paths a user must add)."""

from pathlib import Path

import pytest

from trainer.config import load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "trainer" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads(path):
    extra = ["--checkpoint", "model.safetensors", "--video", "v.mp4", "--prompt", "p"]
    cfg = load_config(["--config", str(path), *extra])
    assert cfg.mode in ("joint", "adapter", "video") and cfg.steps > 0


def test_video_recipe_follows_table_8():
    cfg = load_config(["--config", str(next(p for p in RECIPES if p.stem == "video_tune")),
                       "--checkpoint", "m", "--video", "v", "--prompt", "p"])
    assert (cfg.lr, cfg.weight_decay, cfg.frame_stride, cfg.temporal_window) == (1e-5, 1e-2, 2, 3)
    assert 8 <= cfg.frames <= 24 and cfg.adapter_heads == 8 and cfg.adapter_depth == 4


def test_unknown_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: joint\nlearning_rate: 3\n")
    with pytest.raises(SystemExit, match="unknown keys"):
        load_config(["--config", str(bad)])
