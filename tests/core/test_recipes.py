"""Every shipped recipe parses and validates (with the paths a user must add)."""

from pathlib import Path

import pytest

from trainer.config import MODES, load_config

RECIPES = sorted((Path(__file__).resolve().parents[2] / "trainer" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads(path):
    extra = ["--checkpoint", "model.safetensors", "--video", "v.mp4", "--prompt", "p"]
    cfg = load_config(["--config", str(path), *extra])
    assert cfg.mode in MODES and cfg.steps > 0
    assert cfg.export_path == Path(cfg.output_dir) / f"{cfg.name}.safetensors"


def test_video_recipe_follows_table_8():
    cfg = load_config(
        [
            "--config",
            str(next(p for p in RECIPES if p.stem == "video_tune")),
            "--checkpoint",
            "m",
            "--video",
            "v",
            "--prompt",
            "p",
        ]
    )
    assert (cfg.lr, cfg.weight_decay, cfg.frame_stride, cfg.temporal_window) == (1e-5, 1e-2, 2, 3)
    assert 8 <= cfg.frames <= 24 and cfg.adapter_heads == 8 and cfg.adapter_depth == 4


def test_unknown_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: joint\nlearning_rate: 3\n")
    with pytest.raises(SystemExit, match="unknown keys"):
        load_config(["--config", str(bad)])


def test_name_sets_the_adapter_path_unless_the_folder_is_given():
    """The recipes for a user's own checkpoint fix no folder: --name picks both, runs/<name>/<name>.safetensors."""
    for recipe in ("sd15_adapter", "video_tune"):
        path = next(p for p in RECIPES if p.stem == recipe)
        cfg = load_config(
            ["--config", str(path), "--checkpoint", "m", "--video", "v", "--prompt", "p", "--name", "my-adapter"]
        )
        assert cfg.export_path == Path("runs/my-adapter/my-adapter.safetensors"), recipe
        cfg = load_config(
            [
                "--config",
                str(path),
                "--checkpoint",
                "m",
                "--video",
                "v",
                "--prompt",
                "p",
                "--name",
                "my-adapter",
                "--output_dir",
                "elsewhere",
            ]
        )
        assert cfg.export_path == Path("elsewhere/my-adapter.safetensors"), recipe
