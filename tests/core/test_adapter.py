"""The adapter network and its file format, without ComfyUI."""

import json
import pickle
import resource
import struct

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from contextdiff.adapter import AdapterConfig, ContextAdapter
from contextdiff.adapter_io import load_adapter, read_metadata, save_adapter
from contextdiff.checkpoint import CheckpointError, sniff


def live_adapter(**kw):
    torch.manual_seed(0)
    a = ContextAdapter(AdapterConfig(dim=32, depth=2, **kw))
    torch.nn.init.normal_(a.patch_out.weight, std=0.3)
    return a.eval()


def test_fresh_adapter_is_exactly_zero():
    a = ContextAdapter(AdapterConfig(dim=32, depth=2))
    out = a(torch.randn(2, 4, 9, 11), torch.randn(1, 77, 768), torch.tensor([1.0, 900.0]))
    assert out.shape == (2, 4, 9, 11) and torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("context_dim", [768, 1024, 2048])
def test_context_dims_and_text_dependence(context_dim):
    a = live_adapter(context_dim=context_dim)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    o1 = a(x, torch.randn(1, 10, context_dim), t)
    o2 = a(x, torch.randn(1, 10, context_dim), t)
    assert (o1 - o2).abs().max() > 1e-4
    o3 = a(x, torch.randn(1, 10, context_dim), torch.tensor([100.0]))
    assert (o3 - o1).abs().max() > 1e-4
    with pytest.raises(ValueError, match="context dim"):
        a(x, torch.randn(1, 10, context_dim + 8), t)


def test_odd_sizes_are_padded_and_cropped_back():
    a = live_adapter(patch_size=4)
    x = torch.randn(1, 4, 13, 15)
    text, t = torch.randn(1, 77, 768), torch.tensor([300.0])
    out = a(x, text, t)
    assert out.shape == x.shape
    padded = a(F.pad(x, (0, 1, 0, 3), mode="replicate"), text, t)
    torch.testing.assert_close(out, padded[..., :13, :15])
    with pytest.raises(ValueError, match="latents"):
        a(torch.randn(1, 3, 8, 8), text, t)


def test_pair_equals_two_calls():
    a = live_adapter()
    x, text = torch.randn(2, 4, 8, 8), torch.randn(1, 77, 768)
    ra, rb = a.pair(x, text, torch.tensor([999.0, 10.0]))
    torch.testing.assert_close(ra, a(x, text, torch.tensor([999.0, 999.0])), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rb, a(x, text, torch.tensor([10.0, 10.0])), rtol=1e-5, atol=1e-6)


def test_video_attention_is_causal_within_window():
    a = ContextAdapter(AdapterConfig(dim=32, depth=1, video=True, temporal_window=3))
    torch.nn.init.normal_(a.patch_out.weight, std=0.3)
    frames, text, t = torch.randn(6, 4, 8, 8), torch.randn(1, 77, 768), torch.tensor(400.0)
    base = a(frames, text, t)
    changed = frames.clone()
    changed[2] += 1.0
    diff = (a(changed, text, t) - base).abs().amax(dim=(1, 2, 3))
    # Same module, same shapes: unaffected frames agree to rounding, affected ones move by > 1e-4.
    assert diff[:2].max() <= 1e-6, "earlier frames must not see a later one"
    assert (diff[2:5] > 1e-4).all(), "frames 2..4 have frame 2 in their 3-frame window"
    assert diff[5] <= 1e-6, "frame 5's window (3..5) excludes frame 2 with one block"
    # The image adapter has no temporal path: frames are independent.
    img = live_adapter()
    d_img = (img(changed, text, t) - img(frames, text, t)).abs().amax(dim=(1, 2, 3))
    assert d_img[2] > 1e-4 and d_img[[0, 1, 3, 4, 5]].max() <= 1e-6


def test_file_round_trip(tmp_path):
    a = live_adapter(video=True)
    path = save_adapter(a, tmp_path / "a.safetensors", "sd15", training={"lr": 1e-5, "steps": 3})
    b, meta = load_adapter(path)
    assert meta["config"] == a.cfg and meta["base_model"] == "sd15" and meta["training"]["steps"] == 3
    assert meta["context_dim"] == "768" and meta["latent_channels"] == "4"
    assert meta["producer"].startswith("contextdiff")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    x, text = torch.randn(3, 4, 8, 8), torch.randn(1, 77, 768)
    # Two module instances: kernels may sum in another order on another CPU (AVX-512 or not).
    torch.testing.assert_close(a(x, text, torch.tensor(5.0)), b(x, text, torch.tensor(5.0)), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temporary file"


def test_text_only_adapter_reads_no_image_and_its_files_say_so(tmp_path):
    """``image_input=False`` (issue 20's leak-free bias): the output depends on the text and t, never on x0; the
    flag survives the file, and a file written before the flag existed loads as an image-reading adapter."""
    a = live_adapter(image_input=False)
    text, t = torch.randn(1, 77, 768), torch.tensor(500.0)
    zeros, noise = torch.zeros(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(a(noise, text, t), a(zeros, text, t))
    assert (a(zeros, torch.randn(1, 77, 768), t) - a(zeros, text, t)).abs().max() > 1e-4  # still the text's
    assert (a(zeros, text, t)[0, 0] - a(zeros, text, t)[0, 0].mean()).abs().max() > 1e-4  # a map, not a constant
    image = live_adapter()
    assert (image(noise, text, t) - image(zeros, text, t)).abs().max() > 1e-4  # the paper's reads x0
    b, meta = load_adapter(save_adapter(a, tmp_path / "text.safetensors", "sd15"))
    assert meta["config"].image_input is False and torch.equal(b(noise, text, t), b(zeros, text, t))
    old = save_adapter(image, tmp_path / "old.safetensors", "sd15")
    config = image.cfg.to_dict()
    del config["image_input"]
    _rewrite_metadata(old, config=json.dumps(config))
    assert load_adapter(old)[1]["config"].image_input is True


def _rewrite_metadata(path, **changes):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"].update(changes)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n :])


def test_bad_files_say_what_is_wrong(tmp_path):
    good = save_adapter(live_adapter(), tmp_path / "good.safetensors", "sd15")
    cases = {}
    pick = tmp_path / "p.safetensors"
    torch.save({"w": torch.ones(2)}, pick)
    cases[pick] = "refused because loading it can run code"
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    cases[empty] = "empty or truncated"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    cases[junk] = "corrupt safetensors header"
    short = tmp_path / "short.safetensors"
    short.write_bytes(good.read_bytes()[:-100])
    cases[short] = "is corrupt"
    for name, change, msg in [
        ("v.safetensors", {"format_version": "99"}, "format version 99"),
        ("o.safetensors", {"format": "lora"}, "not a ContextDiff adapter"),
        (
            "c.safetensors",
            {"config": json.dumps({**live_adapter().cfg.to_dict(), "dim": 64})},
            "has shape (64,), the architecture needs (128,)",
        ),
        (
            "d.safetensors",
            {"config": json.dumps({**live_adapter().cfg.to_dict(), "depth": 3})},
            "does not match its own architecture",
        ),
    ]:
        p = tmp_path / name
        p.write_bytes(good.read_bytes())
        _rewrite_metadata(p, **change)
        cases[p] = msg
    nan = live_adapter()
    with torch.no_grad():
        nan.patch_out.weight[0, 0] = float("nan")
    cases[save_adapter(nan, tmp_path / "nan.safetensors", "sd15")] = "NaN"
    ext = tmp_path / "a.bin"
    ext.write_bytes(good.read_bytes())
    cases[ext] = "must be .safetensors"
    for path, msg in cases.items():
        with pytest.raises(CheckpointError, match=None) as err:
            load_adapter(path)
        assert msg in str(err.value), (path.name, str(err.value))
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "missing.safetensors")


# --- conditioning batches: ComfyUI's rule, tile then cut (comfy.utils.repeat_to_batch_size) --------------


@pytest.mark.parametrize("latent_batch, positive_batch", [(4, 2), (3, 2), (1, 2), (5, 3), (2, 1), (2, 2)])
def test_batch_mismatch_text_is_tiled_like_comfyui(latent_batch, positive_batch):
    """Sample i reads prompt i % P, exactly as if each sample's prompt had been given one by one."""
    a = live_adapter()
    x, t = torch.randn(latent_batch, 4, 8, 8), torch.tensor(400.0)
    text = torch.randn(positive_batch, 7, 768)
    batched = a(x, text, t)
    r_a, r_b = a.pair(x, text, torch.tensor([900.0, 400.0]))
    for i in range(latent_batch):
        one = a(x[i : i + 1], text[i % positive_batch : i % positive_batch + 1], t)
        torch.testing.assert_close(batched[i : i + 1], one, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r_b[i : i + 1], one, rtol=1e-5, atol=1e-6)
        other = a(x[i : i + 1], text[(i + 1) % positive_batch : (i + 1) % positive_batch + 1], t)
        if positive_batch > 1:  # the test can tell the prompts apart
            assert (other - one).abs().max() > 1e-3
    assert r_a.shape == x.shape


def test_batch_mismatch_matches_comfyui_repeat_to_batch_size(comfy_inprocess):
    """The rule against ComfyUI's own function, for every batch pair up to 7."""
    import comfy.utils

    from contextdiff.adapter import match_text_batch

    for p in range(1, 8):
        text = torch.randn(p, 3, 5)
        for b in range(1, 8):
            assert torch.equal(match_text_batch(text, b), comfy.utils.repeat_to_batch_size(text, b)), (p, b)


# --- hyper-parameter bounds: refused by name before any layer is built ---------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("heads", 0),
        ("heads", -8),
        ("dim", 0),
        ("dim", 10**7),
        ("depth", 10**6),
        ("dim", 30),
        ("mlp_ratio", 0.0),
        ("mlp_ratio", float("nan")),
        ("mlp_ratio", 1e9),
        ("patch_size", "2"),
        ("depth", 2.5),
        ("video", "yes"),
        ("image_input", 1),
        ("latent_channels", True),
        ("temporal_window", 0),
        ("context_dim", None),
    ],
)
def test_bad_hyper_parameters_refused_by_name(name, value):
    with pytest.raises(ValueError) as err:
        AdapterConfig(**{**AdapterConfig().to_dict(), name: value})
    assert f"{name}=" in str(err.value), str(err.value)


def test_forged_heads_zero_is_a_sentence_not_zerodivision(tmp_path):
    good = save_adapter(live_adapter(), tmp_path / "h.safetensors", "sd15")
    _rewrite_metadata(good, config=json.dumps({**live_adapter().cfg.to_dict(), "heads": 0}))
    with pytest.raises(CheckpointError) as err:
        load_adapter(good)
    assert "h.safetensors" in str(err.value) and "heads=0" in str(err.value) and "re-export" in str(err.value)


# --- format sniffing: safetensors by its header, whatever its first byte -------------------------------------


def test_pickle_sniff_three_hundred_header_lengths(tmp_path):
    """300 adapters with metadata of different lengths all load (1 in 32 headers start with 0x80)."""
    a = ContextAdapter(AdapterConfig(dim=8, depth=1, heads=2))
    first_bytes = set()
    for i in range(300):
        path = save_adapter(a, tmp_path / f"a{i}.safetensors", "sd15", training={"note": "x" * i})
        first_bytes.add(path.read_bytes()[0])
        load_adapter(path)
    assert 0x80 in first_bytes, "no header length started with 0x80: the test lost its point"


def test_pickle_sniff_still_refuses_real_pickles(tmp_path):
    state = live_adapter().state_dict()
    for name, save in [
        ("zip", lambda p: torch.save(state, p)),
        ("legacy", lambda p: torch.save(state, p, _use_new_zipfile_serialization=False)),
        ("proto2", lambda p: p.write_bytes(pickle.dumps({"w": 1}, protocol=2))),
        ("proto5", lambda p: p.write_bytes(pickle.dumps({"w": 1}, protocol=5))),
    ]:
        path = tmp_path / f"{name}.safetensors"
        save(path)
        head = path.read_bytes()[:9]
        assert sniff(head, path.stat().st_size) in ("pickle", "zip"), name
        with pytest.raises(CheckpointError, match="refused because loading it can run code"):
            load_adapter(path)


# --- forged tensor tables: checked against the declared architecture before anything is allocated -----------


def _forged_file(path, **config):
    meta = {
        "format": "contextdiff-adapter",
        "format_version": "1",
        "base_model": "sd15",
        "training": "{}",
        "config": json.dumps({**AdapterConfig().to_dict(), **config}),
    }
    save_file({"patch_in.weight": torch.zeros(1)}, str(path), metadata=meta)
    return path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_forged_architecture_allocates_nothing(tmp_path):
    """A 400-byte file declaring a 2 GB adapter (dim 4096, depth 2) is refused; peak memory does not move."""
    path = _forged_file(tmp_path / "big.safetensors", dim=4096, depth=2)
    assert path.stat().st_size < 1024
    before = _peak_rss_mb()
    with pytest.raises(CheckpointError, match="does not match its own architecture"):
        load_adapter(path)
    assert _peak_rss_mb() - before < 100


def test_forged_shapes_that_lie_about_their_bytes(tmp_path):
    """A table whose shapes match the architecture but whose byte ranges do not: corrupt, before reading."""
    good = save_adapter(live_adapter(), tmp_path / "g.safetensors", "sd15")
    data = good.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    key = sorted(k for k in header if k != "__metadata__")[0]
    header[key]["dtype"] = "F64"  # declares twice the bytes its range holds
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    good.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n :])
    with pytest.raises(CheckpointError, match="does not fit the file"):
        load_adapter(good)


# --- diverged weights: named with the file and the fix ---------------------------------------------------------


def test_huge_weights_refused_when_loaded(tmp_path):
    a = live_adapter()
    with torch.no_grad():
        a.patch_out.weight.mul_(1e30)
    path = save_adapter(a, tmp_path / "huge.safetensors", "sd15")
    with pytest.raises(CheckpointError) as err:
        load_adapter(path)
    assert "huge.safetensors" in str(err.value) and "earlier checkpoint" in str(err.value)


def test_huge_output_names_the_adapter(tmp_path):
    a = live_adapter()
    with torch.no_grad():
        a.patch_out.weight.normal_(std=5e3)
    b, _ = load_adapter(save_adapter(a, tmp_path / "loud.safetensors", "sd15"))
    with pytest.raises(FloatingPointError) as err:
        b.pair(torch.randn(1, 4, 8, 8), torch.randn(1, 7, 768), torch.tensor([900.0, 800.0]))
    assert "'loud.safetensors'" in str(err.value) and "gave a bias of magnitude" in str(err.value)
    ra, _ = live_adapter().pair(torch.randn(1, 4, 8, 8), torch.randn(1, 7, 768), torch.tensor([900.0, 800.0]))
    assert ra.abs().max() > 0  # an ordinary adapter passes the same check
