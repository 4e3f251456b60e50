"""The adapter network and its file format, without ComfyUI."""

import json
import struct

import pytest
import torch
import torch.nn.functional as F

from contextdiff.adapter import AdapterConfig, ContextAdapter
from contextdiff.adapter_io import AdapterFileError, load_adapter, read_metadata, save_adapter


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
    assert meta["context_dim"] == "768" and meta["latent_channels"] == "4" and meta["producer"].startswith("contextdiff")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    x, text = torch.randn(3, 4, 8, 8), torch.randn(1, 77, 768)
    # Two module instances: kernels may sum in another order on another CPU (AVX-512 or not).
    torch.testing.assert_close(a(x, text, torch.tensor(5.0)), b(x, text, torch.tensor(5.0)), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temporary file"


def _rewrite_metadata(path, **changes):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["__metadata__"].update(changes)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])


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
    for name, change, msg in [("v.safetensors", {"format_version": "99"}, "format version 99"),
                              ("o.safetensors", {"format": "lora"}, "not a ContextDiff adapter"),
                              ("c.safetensors", {"config": json.dumps({**live_adapter().cfg.to_dict(), "dim": 64})},
                               "has shape (64,), the architecture needs (128,)"),
                              ("d.safetensors", {"config": json.dumps({**live_adapter().cfg.to_dict(), "depth": 3})},
                               "does not match its own architecture")]:
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
        with pytest.raises(AdapterFileError, match=None) as err:
            load_adapter(path)
        assert msg in str(err.value), (path.name, str(err.value))
    with pytest.raises(AdapterFileError, match="does not exist"):
        read_metadata(tmp_path / "missing.safetensors")
