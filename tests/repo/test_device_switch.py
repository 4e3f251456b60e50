"""The suite's device switch (CONTEXTDIFF_DEVICE) and its device-dependent tolerances, declared once."""

from __future__ import annotations

import pytest

from devkit import device


def test_the_cpu_is_the_default_and_other_values_are_refused(monkeypatch):
    monkeypatch.delenv("CONTEXTDIFF_DEVICE", raising=False)
    assert device.device() == "cpu" and device.on_cpu()
    monkeypatch.setenv("CONTEXTDIFF_DEVICE", "CUDA ")
    assert device.device() == "cuda" and not device.on_cpu()
    monkeypatch.setenv("CONTEXTDIFF_DEVICE", "tpu")
    with pytest.raises(SystemExit, match="one of"):
        device.device()


def test_each_tolerance_keeps_the_cpu_bound_and_says_why_cuda_differs(monkeypatch):
    for name, (cpu, cuda, why) in device.TOLERANCES.items():
        assert 0 < cpu <= cuda and why, name
        monkeypatch.setenv("CONTEXTDIFF_DEVICE", "cpu")
        assert device.tolerance(name) == cpu
        monkeypatch.setenv("CONTEXTDIFF_DEVICE", "cuda")
        assert device.tolerance(name) == cuda


def test_the_server_and_the_trainer_tests_follow_the_switch(monkeypatch):
    """The loopback server drops --cpu and the trainer tests pass --device cuda when the switch says cuda."""
    import inspect

    from devkit import comfy_host

    assert '*(["--cpu"] if on_cpu() else [])' in inspect.getsource(comfy_host.ComfyServer)
    from pathlib import Path

    trainer_tests = (Path(__file__).parents[1] / "host" / "test_trainer.py").read_text()
    assert '"--device", device()' in trainer_tests
