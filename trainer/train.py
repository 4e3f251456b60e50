"""``python -m trainer.train --config trainer/configs/digits_joint.yaml [--key value ...]``

Trains ContextDiff and writes, under ``output_dir``: the checkpoint the ComfyUI nodes load
(``<name>.safetensors``), ``state/`` to resume from, ``log.jsonl``, ``loss.png`` and
``samples.png``. Under ``torchrun --nproc_per_node N`` it trains with DistributedDataParallel.
"""

from __future__ import annotations

import json
import sys

from .comfy_env import ensure_comfy_importable
from .config import ConfigError, load_config


def task_factory(cfg, device):
    if cfg.mode == "joint":
        from .joint import JointTask

        return JointTask(cfg, device)
    if cfg.mode == "shapes":
        from .shapes_mode import ShapesTask

        return ShapesTask(cfg, device)
    if cfg.mode == "adapter":
        from .adapter_mode import AdapterTask

        return AdapterTask(cfg, device)
    from .video_mode import VideoTask

    return VideoTask(cfg, device)


def main(argv=None) -> int:
    try:
        cfg = load_config(argv).check_inputs()
    except ConfigError as e:  # one sentence, before ComfyUI or a model is loaded
        print(f"error: {e}", file=sys.stderr)
        return 2
    ensure_comfy_importable(cpu=cfg.device == "cpu" or cfg.device == "auto" and not _cuda())
    from media.video import VideoError

    from .data import DataError
    from .loop import train

    try:
        summary = train(cfg, task_factory)
    except (DataError, VideoError) as e:  # bad data, found while reading it: what and what to do, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
