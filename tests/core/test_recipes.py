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


def test_flat_options_fill_the_chosen_modes_section():
    """The CLI and YAML stay flat; each mode's section gets its own options with its own meaning, other
    modes' options are type-checked and left out, and the stored config is the mode's options only."""
    from trainer.config import (
        AdapterOptions,
        ConfigError,
        FrozenBaseOptions,
        JointOptions,
        ShapesOptions,
        TrainConfig,
        VideoOptions,
    )

    shapes = load_config(["--mode", "shapes", "--unet_channels", "32", "--norm_groups", "8", "--image_size", "16"])
    assert isinstance(shapes.options, ShapesOptions) and shapes.options.image_size == 16 == shapes.image_size
    base = ["--checkpoint", "m", "--image_size", "64", "--frames", "5", "--unet_mult", "1,2"]
    adapter = load_config(["--mode", "adapter", *base])
    video = load_config(["--mode", "video", *base, "--video", "v", "--prompt", "p"])
    assert type(adapter.options) is AdapterOptions and type(video.options) is VideoOptions
    assert adapter.options.image_size == video.options.image_size == 64 and video.options.frames == 5
    assert isinstance(adapter.options, FrozenBaseOptions) and isinstance(video.options, FrozenBaseOptions)
    # --frames and --unet_mult mean nothing for adapter mode: not stored, not readable
    assert not {"frames", "unet_mult", "unet_channels", "video"} & set(adapter.to_dict())
    with pytest.raises(AttributeError, match="adapter.*frames"):
        adapter.frames  # noqa: B018
    assert set(video.to_dict()) - set(adapter.to_dict()) == {
        "video",
        "prompt",
        "frames",
        "frame_stride",
        "temporal_window",
    }
    joint = load_config(["--mode", "joint", "--unet_channels", "32"])
    assert type(joint.options) is JointOptions and joint.to_dict()["dataset"] == "digits"
    assert set(joint.to_dict()) == {f for f in TrainConfig.__dataclass_fields__ if f != "options"} | set(
        JointOptions.__dataclass_fields__
    )
    # another mode's option with a bad value is still refused, like any option
    with pytest.raises(ConfigError, match="frames=.*expected a int"):
        TrainConfig.from_flat({"mode": "joint", "unet_channels": 32, "frames": "eight"}).validate()
    with pytest.raises(ConfigError, match="frames=0: must be at least 1"):
        load_config(["--mode", "video", *base, "--video", "v", "--prompt", "p", "--frames", "0"])
