"""Tests by layer: ``core/`` the method (torch; ComfyUI only imported as a reference to compare with),
``host/`` the pack inside ComfyUI (in-process or a real server on loopback), ``repo/`` the repository itself
(docs, packaging, type hints). Shared helpers: ``helpers.py``; model builders: ``comfy_models.py``.

How the tests reach ComfyUI and the pack is ``devkit`` (pytest puts the repository root on the import path from
pyproject.toml's ``pythonpath``, and this folder as the folder of this conftest, so ``helpers`` and
``comfy_models`` import by their names)."""

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    """Mark each test with its layer (the folder it is in: ``core``, ``host``, ``repo``), and every test that
    needs the ComfyUI server (directly or through a fixture) as ``server``."""
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        item.add_marker(getattr(pytest.mark, layer))
        if "server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def comfy_inprocess():
    """ComfyUI's modules imported in this process, on the CPU."""
    from devkit import comfyui

    return comfyui()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real ComfyUI host for the session, with the pack and the test nodes loaded."""
    from devkit.comfy_host import ComfyServer

    srv = ComfyServer(tmp_path_factory.mktemp("comfy"), [TESTS / "host_nodes" / "contextdiff_testing"])
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def adapters(server):
    """Adapter files in the host's models/contextdiff: zero, live (random output), wrong dim, broken."""
    import torch

    from contextdiff.adapter import AdapterConfig, ContextAdapter
    from contextdiff.adapter_io import save_adapter

    d = server.adapters_dir
    save_adapter(ContextAdapter(AdapterConfig(dim=64, depth=2)), d / "zero.safetensors", "sd15")
    torch.manual_seed(5)
    live = ContextAdapter(AdapterConfig(dim=64, depth=2))
    torch.nn.init.normal_(live.patch_out.weight, std=0.5)
    torch.nn.init.normal_(live.patch_out.bias, std=0.5)
    save_adapter(live, d / "live.safetensors", "sd15")
    gentle = ContextAdapter(AdapterConfig(dim=64, depth=2))  # a smooth, small bias, like a trained adapter's
    torch.nn.init.normal_(gentle.patch_out.weight, std=0.02)
    torch.nn.init.normal_(gentle.patch_out.bias, std=0.05)
    save_adapter(gentle, d / "gentle.safetensors", "sd15")
    save_adapter(ContextAdapter(AdapterConfig(dim=64, depth=2, context_dim=2048)), d / "sdxl.safetensors", "sdxl")
    data = (d / "live.safetensors").read_bytes()
    (d / "corrupt.safetensors").write_bytes(data[: len(data) // 2])
    torch.save(live.state_dict(), d / "pickled.safetensors")
    torch.save(live.state_dict(), d / "pickled.pt")
    return d
