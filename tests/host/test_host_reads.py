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

The same holds on the flow-matching families (issue 30's preparation): the contextualized Euler step on SD3 and Wan,
and the DiT edit from the store or with the source's branch recomputed. Exact inversion (``refine_steps``) reads by
design, for its stopping rule only.
"""

from __future__ import annotations

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
        """``file:line function`` of the pack's code that made the call, or ``None`` if ComfyUI or a library
        made it."""
        frame = sys._getframe(2)
        while frame is not None and "/torch/" in frame.f_code.co_filename:
            frame = frame.f_back
        if frame is None:
            return None
        path = frame.f_code.co_filename
        if path.startswith(PACK_DIRS):
            return f"{Path(path).relative_to(ROOT)}:{frame.f_lineno} {frame.f_code.co_name}"
        return None

    def inside_loop(self, last_call: int) -> list:
        """Reads after the first model call and before the last one began."""
        return [f for f in self.found if 1 <= f[0] < last_call]

    def after_loop(self, last_call: int) -> list:
        return [f for f in self.found if f[0] >= last_call]


@pytest.fixture(scope="module")
def env(comfy_inprocess):
    from comfy_models import build_sd15, build_tiny_clip, random_conditioning
    from helpers import pack_modules

    from contextdiff.adapter import AdapterConfig, ContextAdapter

    modules = pack_modules("nodes.sampler_function", "nodes.edit_runs", "nodes.types")
    torch.manual_seed(5)
    module = ContextAdapter(AdapterConfig(dim=64, depth=2)).eval().requires_grad_(False)
    torch.nn.init.normal_(module.patch_out.weight, std=0.02)  # a live, smooth bias
    torch.nn.init.normal_(module.patch_out.bias, std=0.05)
    adapter = modules["types"].LoadedAdapter(module, {}, "live")
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


# -- flow-matching families (SD3, Wan): the contextualized Euler step, refined inversion, the DiT edit -------------

FLOW_FAMILY = {"sd3": "sd3", "wan": "wan21"}


@pytest.fixture(scope="module")
def flow(comfy_inprocess):
    """Per family: the tiny model file, its text encoders at test size, a live adapter."""
    from comfy_models import build_flow, build_tiny_flow_clip
    from helpers import pack_modules

    from contextdiff.adapter import AdapterConfig, ContextAdapter

    modules = pack_modules("nodes.sampler_function", "nodes.edit_runs", "nodes.types", "contextdiff.editing")
    parts = {}
    for kind, family in FLOW_FAMILY.items():
        torch.manual_seed(7)
        config = AdapterConfig(dim=64, depth=1, context_dim=4096, latent_channels=16, video=kind == "wan")
        module = ContextAdapter(config).eval().requires_grad_(False)
        torch.nn.init.normal_(module.patch_out.weight, std=0.3)  # a live bias
        adapter = modules["types"].LoadedAdapter(module, {"base_model": family}, f"live_{family}")
        parts[kind] = (build_flow(kind, seed=0), build_tiny_flow_clip(kind, seed=0), adapter)
    return modules, parts


@pytest.mark.parametrize("kind", sorted(FLOW_FAMILY))
def test_the_flow_sampler_reads_the_host_only_before_its_first_step_and_after_its_last(flow, kind):
    """The contextualized Euler step (DDIM at eta 0 on a flow model) with a live adapter and CFG."""
    import comfy.sample
    import comfy.samplers
    from comfy_models import flow_conditioning, flow_latent

    modules, parts = flow
    model, _, adapter = parts[kind]
    counter = HostReads()
    sampler = modules["sampler_function"].contextdiff_ksampler(adapter, "ddim", on_level=counter.level)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    latent = flow_latent(kind)
    pos, neg = flow_conditioning(kind, 1), flow_conditioning(kind, 2)
    with counter:
        out = comfy.sample.sample_custom(
            model,
            comfy.sample.prepare_noise(latent, 3),
            3.0,
            sampler,
            sigmas,
            pos,
            neg,
            latent,
            disable_pbar=True,
            seed=3,
        )
    assert torch.isfinite(out).all()
    assert counter.calls == STEPS
    assert counter.inside_loop(STEPS) == [], counter.inside_loop(STEPS)
    assert len(counter.after_loop(STEPS)) <= 1, counter.after_loop(STEPS)


def _counted_edit(flow, monkeypatch, kind: str, recompute: bool, refine_steps: int = 0):
    """Inversion then the fused, blended edit (CFG) on a DiT, each under its own counter."""
    from comfy_models import flow_latent

    modules, parts = flow
    runs, editing = modules["edit_runs"], modules["editing"]
    model, clip, _ = parts[kind]
    counters = []
    told = runs.AttentionEditor.at_level

    def at_level(self, sigma):
        counters[-1].level(sigma)
        told(self, sigma)

    monkeypatch.setattr(runs.AttentionEditor, "at_level", at_level)
    src, tgt = "a cat sitting on a red mat", "a dog sitting on a red mat"

    def encode(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    inversion = editing.InversionSettings(steps=STEPS, scheduler="simple", refine_steps=refine_steps, fuse_start=0.5)
    settings = editing.EditSettings(
        cfg=2.0, source_prompt=src, target_prompt=tgt, blend_words="cat dog", blend_threshold=0.3
    )
    plan = runs.plan_edit(settings, inversion, clip, model=model)
    counters.append(HostReads())
    with counters[-1]:
        source = runs.invert(
            runs.Guide(model, encode(src)), {"samples": flow_latent(kind)}, inversion, recompute=recompute
        )
    counters.append(HostReads())
    with counters[-1]:
        result = runs.edit(runs.Guide(model, encode(tgt), encode("")), source, plan)
    assert torch.isfinite(result.samples).all()
    assert result.mask is not None  # the blend words' maps were collected: the fused path ran
    return source, counters


@pytest.mark.parametrize(("kind", "recompute"), [("sd3", False), ("wan", False), ("wan", True)])
def test_dit_inversion_and_edit_read_the_host_only_before_and_after_their_loops(flow, monkeypatch, kind, recompute):
    """SD3's joint attention and Wan's self- and cross-attention, fused with the shared words and a blend word, from
    the store or (Wan) with the source's branch recomputed beside the target's. Before, every fused attention call
    copied the shared words' positions to the device and every recomputed step the source prompt."""
    source, (inverted, edited) = _counted_edit(flow, monkeypatch, kind, recompute)
    calls = len(source.sigmas) - (1 if recompute else 0)  # with a store, one more call records the top level
    assert inverted.calls == calls
    assert inverted.inside_loop(calls) == [], inverted.inside_loop(calls)
    calls = len(source.sigmas) - 1
    assert edited.calls == calls
    assert edited.inside_loop(calls) == [], edited.inside_loop(calls)
    assert len(edited.after_loop(calls)) <= 1, edited.after_loop(calls)


def test_refined_inversion_reads_the_host_only_for_its_stopping_rule(flow, monkeypatch):
    """The exact solve (``refine_steps``) reads by design: ``||x||`` once per step, per iteration the residual's
    norm and (from the second on) one copy of the Anderson mixing's small normal equations. Nothing else."""
    refine = 4
    source, (inverted, edited) = _counted_edit(flow, monkeypatch, "sd3", recompute=False, refine_steps=refine)
    calls = inverted.calls
    steps = len(source.sigmas) - 1
    assert steps + 1 < calls <= steps * (1 + refine) + 1  # the refinement ran
    found = inverted.inside_loop(calls)
    assert {where.split()[-1] for _, _, where in found} <= {"refine", "anderson"}, found
    assert len(found) <= steps + 2 * (calls - 1 - steps), found  # per step, per refining call
    assert edited.inside_loop(edited.calls) == []
