import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))


@pytest.fixture(scope="session")
def comfy_inprocess():
    """ComfyUI's modules imported in this process, on the CPU."""
    from host import import_comfy_cpu
    return import_comfy_cpu()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real ComfyUI host for the session, with the pack and the test nodes loaded."""
    from comfy_server import ComfyServer
    srv = ComfyServer(tmp_path_factory.mktemp("comfy"), [TESTS / "host_nodes" / "contextdiff_testing"])
    yield srv
    srv.stop()
