"""CLIP metrics for edited videos, as in the paper's Table 2 (CLIP-Text and CLIP-Temp).

CLIP-Text is the mean cosine similarity between each frame's CLIP image embedding and the
target prompt's text embedding; CLIP-Temp is the mean cosine similarity between the embeddings
of consecutive frames (we also report the mean over all frame pairs, which penalises slow drift
that consecutive pairs miss). Scores are raw cosines in [-1, 1], not multiplied by 100.

Nothing is downloaded: CLIP weights are a local file the user gives. Usage::

    python -m analysis.clip_metrics edited.mp4 --prompt "a jeep in the snow" --clip-weights ViT-B-32.pt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from copy import deepcopy
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

_DEFAULT_PREPROCESS = {
    "mode": "RGB",
    "mean": tuple(open_clip.OPENAI_DATASET_MEAN),
    "std": tuple(open_clip.OPENAI_DATASET_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}


class MetricsError(ValueError):
    """A model, weights file or input the metrics cannot use; the message says what to do."""


def _read_config(spec) -> tuple[dict, dict] | None:
    """(model_cfg, preprocess_cfg) for a dict or ``.json`` path, None for a built-in name."""
    if isinstance(spec, dict):
        cfg = deepcopy(spec)
    elif str(spec).lower().endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise MetricsError(f"CLIP model config {path} does not exist; check the path")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise MetricsError(f"CLIP model config {path} is not valid JSON ({err}); fix or replace it") from err
    else:
        return None
    # Hugging Face style folders wrap the architecture as {"model_cfg": ..., "preprocess_cfg": ...}.
    model_cfg = cfg.get("model_cfg", cfg)
    preprocess = cfg.get("preprocess_cfg", {}) if "model_cfg" in cfg else {}
    if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise MetricsError(
            "a CLIP model config needs embed_dim, vision_cfg and text_cfg (open_clip's "
            "model_configs/*.json format); copy one of those and edit it"
        )
    return model_cfg, preprocess


def _refuse_downloads(model_cfg: dict, name: str):
    # Hugging Face text towers and tokenizers fetch their config/vocab from the Hub even without
    # pretrained weights; this module promises never to touch the network.
    text = model_cfg.get("text_cfg", {})
    if text.get("hf_model_name") or text.get("hf_tokenizer_name"):
        raise MetricsError(
            f"CLIP model {name} needs a Hugging Face text model or tokenizer that would be "
            f"downloaded; use an OpenAI-style CLIP such as ViT-B-32 or ViT-L-14"
        )
    if "multimodal_cfg" in model_cfg:
        raise MetricsError(f"CLIP model {name} is a CoCa captioner; use a plain CLIP such as ViT-B-32")


def _why(err: Exception) -> str:
    """The informative line of a loading error (load_state_dict puts it after a header line)."""
    text = str(err)
    if "weights_only" in text or "Weights only load failed" in text:
        return "not a tensor checkpoint that torch can load safely; pickled code is refused"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if any(key in ln for key in ("size mismatch", "Missing key", "Unexpected key")):
            return ln[:300]
    return lines[0][:300] if lines else err.__class__.__name__


def _guard_load(load, weights: Path, name: str):
    try:
        return load()
    except Exception as err:  # torch.load, safetensors and load_state_dict all raise different types
        raise MetricsError(
            f"CLIP weights {weights.name} could not be loaded into model {name} ({_why(err)}); "
            f"pass the --model the checkpoint was trained as (an open_clip state dict, "
            f".bin/.pt/.safetensors)"
        ) from err


def load_clip(model_name="ViT-B-32", weights=None, device="cpu"):
    """An open_clip model (eval mode) and its tokenizer, built offline.

    ``model_name``: a built-in open_clip name (``ViT-B-32``, ``ViT-L-14``, ...), a path to an
    open_clip ``.json`` model config, or such a config as a dict (small test models).
    ``weights``: a local checkpoint file (``.pt``, ``.bin``, ``.safetensors``); None gives random
    weights, which is only useful for tests.
    """
    if weights is not None:
        weights = Path(weights)
        # An existing file only: open_clip would treat a string such as "openai" as a tag to download.
        if not weights.is_file():
            raise MetricsError(
                f"CLIP weights file {weights} does not exist; download a CLIP checkpoint "
                f"yourself and pass its path (nothing is downloaded for you)"
            )
    custom = _read_config(model_name)
    if custom is None:
        name = str(model_name)
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise MetricsError(
                f"unknown CLIP model {name!r}; use one of open_clip.list_models() "
                f"(for example ViT-B-32) or a path to a model config .json"
            )
        _refuse_downloads(model_cfg, name)
        if weights is None:
            try:
                model = open_clip.create_model(name, device="cpu")
            except Exception as err:
                raise MetricsError(f"could not build CLIP model {name} ({err}); pick another --model") from err
        else:
            # An absolute path is never mistaken for a pretrained tag, so nothing is downloaded.
            model = _guard_load(
                lambda: open_clip.create_model(name, pretrained=str(weights.resolve()), device="cpu"), weights, name
            )
        tokenizer = open_clip.get_tokenizer(name)
    else:
        model_cfg, preprocess = custom
        name = "custom config"
        _refuse_downloads(model_cfg, name)
        cfg = deepcopy(model_cfg)
        model_cls = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
        try:
            model = model_cls(**cfg)
        except Exception as err:
            raise MetricsError(f"could not build a CLIP model from the config ({err}); fix the config") from err
        pp = dict(_DEFAULT_PREPROCESS, size=model.visual.image_size)
        pp.update(preprocess)
        open_clip.set_model_preprocess_cfg(model, pp)
        text_cfg = model_cfg["text_cfg"]
        tokenizer = open_clip.SimpleTokenizer(
            context_length=text_cfg.get("context_length", 77), **text_cfg.get("tokenizer_kwargs", {})
        )
        if weights is not None:
            _guard_load(lambda: open_clip.load_checkpoint(model, str(weights)), weights, name)
    return model.to(device).eval(), tokenizer


def _preprocess_cfg(model) -> dict:
    visual = model.visual
    cfg = dict(_DEFAULT_PREPROCESS, size=getattr(visual, "image_size", 224))
    cfg.update(getattr(visual, "preprocess_cfg", None) or {})
    return cfg


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def preprocess_frames(model, frames: torch.Tensor) -> torch.Tensor:
    """(F, H, W, 3) in [0, 1] to CLIP input (F, 3, h, w), with the model's resize mode and mean/std."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MetricsError(f"frames must have shape (F, H, W, 3), not {tuple(frames.shape)}")
    cfg = _preprocess_cfg(model)
    out_h, out_w = _pair(cfg["size"])
    x = frames.permute(0, 3, 1, 2).to(torch.float32)
    h, w = x.shape[-2:]
    mode = cfg.get("interpolation", "bicubic")
    mode = mode if mode in ("bicubic", "bilinear") else "bilinear"
    resize_mode = cfg.get("resize_mode", "shortest")

    def resize(t, size):
        # antialias=True matches PIL's downscaling (open_clip's reference transform) closely.
        t = F.interpolate(t, size=size, mode=mode, align_corners=False, antialias=True)
        return t.clamp(0, 1)  # bicubic overshoots; PIL clips to uint8 the same way

    if resize_mode == "squash":
        x = resize(x, (out_h, out_w))
    elif resize_mode == "longest":
        scale = min(out_h / h, out_w / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = resize(x, (nh, nw))
        fill = cfg.get("fill_color", 0) / 255.0
        top, left = (out_h - nh) // 2, (out_w - nw) // 2
        x = F.pad(x, (left, out_w - nw - left, top, out_h - nh - top), value=fill)
    else:  # "shortest": scale the shorter side to fit, then centre-crop, as CLIP was trained
        scale = max(out_h / h, out_w / w)
        nh, nw = max(out_h, round(h * scale)), max(out_w, round(w * scale))
        x = resize(x, (nh, nw))
        top, left = (nh - out_h) // 2, (nw - out_w) // 2
        x = x[..., top : top + out_h, left : left + out_w]
    mean = torch.tensor(cfg["mean"], dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _device_dtype(model):
    p = next(model.parameters())
    return p.device, p.dtype


@torch.no_grad()
def image_embeddings(model, frames: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """L2-normalised CLIP image embeddings (F, D) of (F, H, W, 3) frames in [0, 1]."""
    device, dtype = _device_dtype(model)
    out = []
    # Batches bound memory: a long clip at 224x224 in one batch would not fit a small GPU.
    for i in range(0, frames.shape[0], batch_size):
        x = preprocess_frames(model, frames[i : i + batch_size]).to(device=device, dtype=dtype)
        out.append(F.normalize(model.encode_image(x).float(), dim=-1).cpu())
    if not out:
        raise MetricsError("no frames to embed; give at least one frame")
    return torch.cat(out)


@torch.no_grad()
def text_embedding(model, tokenizer, prompt: str) -> torch.Tensor:
    """L2-normalised CLIP text embedding (D,) of ``prompt``."""
    device, _ = _device_dtype(model)
    tokens = tokenizer([prompt]).to(device)
    return F.normalize(model.encode_text(tokens).float(), dim=-1)[0].cpu()


def clip_text_score(frame_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """CLIP-Text: mean over frames of cos(frame, prompt)."""
    f = F.normalize(frame_emb.float(), dim=-1)
    t = F.normalize(text_emb.float().reshape(-1), dim=0)
    return (f @ t).mean().item()


def clip_temporal_scores(frame_emb: torch.Tensor) -> dict:
    """CLIP-Temp: mean cos of consecutive frames and mean cos over all pairs i < j."""
    if frame_emb.ndim != 2 or frame_emb.shape[0] < 2:
        raise MetricsError(
            f"temporal consistency needs at least 2 frames, got {tuple(frame_emb.shape)}; use a longer clip"
        )
    e = F.normalize(frame_emb.float(), dim=-1)
    consecutive = (e[:-1] * e[1:]).sum(-1).mean()
    sim = e @ e.T
    i, j = torch.triu_indices(len(e), len(e), offset=1)
    return {"consecutive": consecutive.item(), "all_pairs": sim[i, j].mean().item()}


def evaluate_video(path, prompt: str, model, tokenizer, max_frames: int | None = None) -> dict:
    """All three Table 2 scores for one video file."""
    from media.video import read_video

    frames, fps = read_video(path, max_frames=max_frames)
    emb = image_embeddings(model, frames)
    temporal = clip_temporal_scores(emb)
    return {
        "video": str(path),
        "prompt": prompt,
        "frames": int(frames.shape[0]),
        "fps": fps,
        "clip_text": clip_text_score(emb, text_embedding(model, tokenizer, prompt)),
        "clip_temp_consecutive": temporal["consecutive"],
        "clip_temp_all_pairs": temporal["all_pairs"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.clip_metrics",
        description="CLIP-Text and CLIP-Temp of an edited video (the paper's Table 2 protocol). "
        "Scores are mean cosine similarities in [-1, 1].",
        epilog="No weights are downloaded: get a CLIP checkpoint yourself (for example OpenAI's "
        "ViT-B-32 in open_clip format) and pass it with --clip-weights.",
    )
    parser.add_argument("video", help="video file to score (.mp4, .webm, ...)")
    parser.add_argument("--prompt", required=True, help="target prompt of the edit")
    parser.add_argument(
        "--clip-weights",
        required=True,
        metavar="FILE",
        help="local CLIP checkpoint (.pt/.bin/.safetensors); never downloaded",
    )
    parser.add_argument(
        "--model",
        default="ViT-B-32",
        help="open_clip model name matching the weights (OpenAI's original CLIP "
        "weights need the -quickgelu variant, e.g. ViT-B-32-quickgelu), or a "
        "model config .json (default: ViT-B-32)",
    )
    parser.add_argument("--max-frames", type=int, default=None, help="score only the first N frames")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    from media.video import VideoError

    try:
        model, tokenizer = load_clip(args.model, args.clip_weights, args.device)
        result = evaluate_video(args.video, args.prompt, model, tokenizer, args.max_frames)
    except (MetricsError, VideoError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result["model"] = str(args.model)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"video: {result['video']} ({result['frames']} frames)")
        print(f"CLIP-text                {result['clip_text']:.4f}")
        print(f"CLIP-temp (consecutive)  {result['clip_temp_consecutive']:.4f}")
        print(f"CLIP-temp (all pairs)    {result['clip_temp_all_pairs']:.4f}")
    return (
        0 if all(math.isfinite(result[k]) for k in ("clip_text", "clip_temp_consecutive", "clip_temp_all_pairs")) else 1
    )


if __name__ == "__main__":
    sys.exit(main())
