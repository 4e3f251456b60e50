"""No host synchronisation inside the sampling loops (issue 19), counted on the CPU.

On a GPU, every read of a device value on the host (``Tensor.item``, ``bool(tensor)``, ``float(tensor)``,
``.tolist()``, ``.cpu()``) and every blocking copy between host and device (``.to(device)`` without
``non_blocking``, indexing with a Python list, which copies the list to the device) makes the CPU wait until
the GPU has finished all queued work, so it cannot queue the next UNet call meanwhile. On the CPU these cost
nothing, so no CPU timing shows them; the calls themselves can be counted. A ``TorchFunctionMode`` sees every
such call and who made it: calls made by this pack's own code (``contextdiff/``, ``nodes/``) are counted,
those inside ComfyUI, torch or a library are not (they are the same for the core samplers). Steps are told
apart by the model calls (the samplers' ``on_level`` hook): after the first model call, none of the pack's
code may read the host until the last one; after it, one read is allowed (the end-of-run check).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from contextdiff.editing import EditSettings, InversionSettings

ROOT = Path(__file__).resolve().parents[2]
PACK_DIRS = tuple(str(ROOT / d) + "/" for d in ("contextdiff", "nodes", "hostside"))
READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "__format__"}
TRANSFERS = {"to", "cuda", "copy_", "tensor", "as_tensor"}


def _is_device(a) -> bool:
    return isinstance(a, torch.device) or (isinstance(a, str) and a.split(":")[0] in ("cpu", "cuda", "mps", "xpu"))


class HostReads(TorchFunctionMode):
    """Counts the pack's host reads and blocking transfers, each with its place and the model call it followed."""

    def __init__(self):
        super().__init__()
        self.calls = 0  # model calls so far (on_level)
        self.found: list[tuple[int, str, str]] = []

    def level(self, sigma: float) -> None:
        self.calls += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self._blocking(name, args, kwargs):
            where = self._caller()
            if where is not None:
                self.found.append((self.calls, name, where))
        return func(*args, **kwargs)

    @staticmethod
    def _blocking(name: str, args, kwargs) -> bool:
        if name in READS:
            return True
        if name in ("__getitem__", "__setitem__") and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            return any(isinstance(i, list) for i in index)
        if name in TRANSFERS:
            moves = any(_is_device(a) for a in args[1:]) or _is_device(kwargs.get("device"))
            return moves and not kwargs.get("non_blocking", False)
        return False

    @staticmethod
    def _caller() -> str | None:
        """``file:line`` of the pack's code that made the call, or ``None`` if ComfyUI or a library made it."""
        frame = sys._getframe(2)
        while frame is not None and "/torch/" in frame.f_code.co_filename:
            frame = frame.f_back
        if frame is None:
            return None
        path = frame.f_code.co_filename
        if path.startswith(PACK_DIRS):
            return f"{Path(path).relative_to(ROOT)}:{frame.f_lineno}"
        return None

    def inside_loop(self, last_call: int) -> list:
        """Reads after the first model call and before the last one began."""
        return [f for f in self.found if 1 <= f[0] < last_call]

    def after_loop(self, last_call: int) -> list:
        return [f for f in self.found if f[0] >= last_call]


@pytest.fixture(scope="module")
def env(comfy_inprocess):
    from comfy_models import build_sd15, build_tiny_clip, random_conditioning

    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from devkit import import_pack

    pack = import_pack()
    modules = {m: importlib.import_module(f"{pack.__name__}.nodes.{m}") for m in ("sampler_function", "edit_runs")}
    types_ = importlib.import_module(f"{pack.__name__}.nodes.types")
    torch.manual_seed(5)
    module = ContextAdapter(AdapterConfig(dim=64, depth=2)).eval().requires_grad_(False)
    torch.nn.init.normal_(module.patch_out.weight, std=0.02)  # a live, smooth bias
    torch.nn.init.normal_(module.patch_out.bias, std=0.05)
    adapter = types_.LoadedAdapter(module, {}, "live")
    clip = build_tiny_clip()

    def enc(text):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    return modules, adapter, build_sd15(0, 32, 768), clip, enc, random_conditioning


STEPS = 6


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_sampler_reads_the_host_only_before_its_first_step_and_after_its_last(env, method):
    """ContextDiffKSampler and the ContextDiff Sampler (one sampler function), with a live adapter and CFG."""
    import comfy.sample
    import comfy.samplers

    modules, adapter, model, _, _, random_conditioning = env
    counter = HostReads()
    sampler = modules["sampler_function"].contextdiff_ksampler(adapter, method, on_level=counter.level)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS)
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    pos, neg = random_conditioning(1), random_conditioning(2)
    with counter:
        out = comfy.sample.sample_custom(
            model, noise, 4.0, sampler, sigmas, pos, neg, latent, disable_pbar=True, seed=3
        )
    assert torch.isfinite(out).all()
    assert counter.calls == STEPS
    assert counter.inside_loop(STEPS) == [], counter.inside_loop(STEPS)
    assert len(counter.after_loop(STEPS)) <= 1, counter.after_loop(STEPS)


def test_inversion_and_edit_read_the_host_only_before_and_after_their_loops(env, monkeypatch):
    """Bias-aware inversion (recording the attention) and the fused, blended edit with a live adapter."""
    modules, adapter, model, clip, enc, _ = env
    runs = modules["edit_runs"]
    editor_cls = runs.AttentionEditor
    counter = HostReads()
    told = editor_cls.at_level

    def at_level(self, sigma):
        counter.level(sigma)
        told(self, sigma)

    monkeypatch.setattr(editor_cls, "at_level", at_level)
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    src, tgt = "a cat sitting on the grass", "a dog sitting on the grass"
    settings = InversionSettings(steps=STEPS, fuse_start=0.5)
    edit = EditSettings(cfg=3.0, source_prompt=src, target_prompt=tgt, blend_words="cat dog")
    plan = runs.plan_edit(edit, settings, clip)
    with counter:
        source = runs.invert(runs.Guide(model, enc(src), adapter=adapter), latent, settings)
    calls = len(source.sigmas)  # a call per step, and the final evaluation at the top level the store records
    assert counter.calls == calls
    assert counter.inside_loop(calls) == [], counter.inside_loop(calls)
    counter = HostReads()
    with counter:
        result = runs.edit(runs.Guide(model, enc(tgt), adapter=adapter), source, plan)
    assert result.mask is not None and torch.isfinite(result.samples).all()
    calls = len(source.sigmas) - 1
    assert counter.calls == calls
    assert counter.inside_loop(calls) == [], counter.inside_loop(calls)
    assert len(counter.after_loop(calls)) <= 1, counter.after_loop(calls)


def test_the_counter_sees_what_it_must(env):
    """The counter is no stub: the reads the loops had before (per-step finite check, the adapter's bound, a
    sigma moved to the CPU, a list index) are each counted, with their place in the pack."""
    from contextdiff import sampling
    from contextdiff.adapter import AdapterConfig, ContextAdapter

    counter = HostReads()
    x = torch.ones(2, 4, 8, 8)
    with counter:
        sampling.require_direction(torch.tensor([2.0, 1.0, 0.0]), reversible=True)  # bool(tensor)
        ContextAdapter(AdapterConfig(dim=32, depth=1)).check_output(x)  # .item()
        torch.as_tensor(torch.tensor(3.0)).to("cpu", torch.float64)  # not the pack's code: not counted
    names = [(n, w.split(":")[0]) for _, n, w in counter.found]
    assert ("__bool__", "contextdiff/sampling.py") in names
    assert ("item", "contextdiff/adapter.py") in names
    assert len(names) == 2, counter.found
