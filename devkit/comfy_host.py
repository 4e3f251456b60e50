"""A real ComfyUI host on loopback, with the pack loaded the way ComfyUI loads custom nodes, and the
conversion of UI-format workflows (what users drag onto the canvas) to the API format it runs.

Used by the demos (scripts/demo.py, scripts/shapes_demo.py), scripts/make_workflows.py and the tests' ``server``
fixture. ComfyUI is the one :func:`trainer.comfy_env.find_comfyui` finds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devkit.device import on_cpu
from trainer.comfy_env import find_comfyui

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "ContextDiff-ComfyUI"
# Frontend-only nodes: they never reach the server.
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """Starts ``main.py --cpu`` in a scratch folder; ``stop()`` ends it."""

    def __init__(
        self, workdir: Path, extra_custom_nodes: list[Path] = (), timeout: float = 120, extra_paths: dict | None = None
    ):
        """``extra_paths``: more model folders, ``{kind: folder}`` (e.g. ``{"checkpoints": ...}``)."""
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        nodes_dir = self.workdir / "custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        (nodes_dir / PACK_NAME).symlink_to(ROOT, target_is_directory=True)
        for extra in extra_custom_nodes:
            (nodes_dir / extra.name).symlink_to(extra, target_is_directory=True)
        self.models_dir = self.workdir / "models"
        self.adapters_dir = self.models_dir / "contextdiff"
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        self.input_dir = self.workdir / "input"
        self.output_dir = self.workdir / "output"
        for d in (self.input_dir, self.output_dir, self.workdir / "user"):
            d.mkdir(exist_ok=True)
        config = self.workdir / "extra_model_paths.yaml"
        config.write_text(
            "contextdiff_tests:\n"
            f"  base_path: {self.models_dir}\n"
            f"  custom_nodes: {nodes_dir}\n"
            "  contextdiff: contextdiff\n"
            "  checkpoints: checkpoints\n"
            "  diffusion_models: diffusion_models\n"
            "  vae: vae\n"
            "  loras: loras\n"
        )
        # More folders, e.g. {"checkpoints": "/data/sd"} for a user's own checkpoint.
        for i, (kind, path) in enumerate((extra_paths or {}).items()):
            config.write_text(config.read_text() + f"extra_{i}:\n  base_path: {path}\n  {kind}: .\n")
        self.log_path = self.workdir / "comfyui.log"
        cmd = [
            sys.executable,
            "main.py",
            *(["--cpu"] if on_cpu() else []),  # CONTEXTDIFF_DEVICE=cuda: ComfyUI picks the GPU
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-api-nodes",
            "--database-url",
            "sqlite:///:memory:",
            "--output-directory",
            str(self.output_dir),
            "--input-directory",
            str(self.input_dir),
            "--user-directory",
            str(self.workdir / "user"),
            "--extra-model-paths-config",
            str(config),
            "--disable-auto-launch",
            "--preview-method",
            "none",
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=find_comfyui(), stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during start-up:\n{self.log()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"POST {path} failed with {e.code}: {e.read().decode(errors='replace')}") from None
        return json.loads(body) if body else None

    def queue(self, prompt: dict) -> str:
        return self.post("/prompt", {"prompt": prompt})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                status = hist[prompt_id]["status"]
                if status.get("status_str") in ("success", "error") or status.get("completed"):
                    return hist[prompt_id]
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue, wait, and raise with ComfyUI's own error message when the prompt failed."""
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"].get("status_str") != "success":
            raise PromptError(error_message(entry))
        return entry

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def fresh_object_info() -> dict:
    """``/object_info`` of a host started for the purpose (the pack loaded, nothing else), then stopped: what the
    frontend builds its node definitions from."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(Path(tmp))
        try:
            return server.get("/object_info")
        finally:
            server.stop()


class PromptError(RuntimeError):
    pass


def error_message(entry: dict) -> str:
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message')}"
        if kind == "execution_interrupted":
            return "interrupted"
    return json.dumps(entry["status"])


def pack_folder(python_module: str) -> str:
    """The pack folder the frontend names a custom node's files by (help pages, workflow templates): the part of
    the node's ``python_module`` after ``custom_nodes.``, without a registry install's ``@version``."""
    parts = python_module.split(".")
    if len(parts) < 2 or parts[0] != "custom_nodes":
        raise ValueError(f"python_module {python_module!r} is not a custom node's")
    return parts[1].split("@")[0]


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def node_inputs(info: dict):
    """``(name, spec)`` of a node's inputs in the order the frontend lays out widgets."""
    for section in ("required", "optional"):
        yield from info["input"].get(section, {}).items()


def widget_values(node: dict, info: dict) -> list[tuple[str, list, object, object]]:
    """``(name, spec, value, control)`` of each widget of a UI-format node, matched the way the frontend lays out
    ``widgets_values``: in input order, a widget with ``control_after_generate`` (a seed) followed by its control
    value ("fixed", "randomize", ...). ``value`` and ``control`` are None where the list runs short."""
    values = list(node.get("widgets_values") or [])
    out, w = [], 0
    for name, spec in node_inputs(info):
        if not is_widget(spec):
            continue
        control = bool(spec[1].get("control_after_generate")) if len(spec) > 1 else False
        value = values[w] if w < len(values) else None
        after = values[w + 1] if control and w + 1 < len(values) else None
        out.append((name, spec, value, after))
        w += 1 + int(control)
    return out


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow to the API prompt, as the frontend does on 'Queue'.

    Widget values are matched to widget inputs as :func:`widget_values` does; links become
    ``[node_id, output_slot]``; notes, reroutes and muted or bypassed nodes are left out. An input linked to a
    bypassed node takes, as the frontend's bypass does, that node's input of the same type (its own slot first),
    and is left out where there is none (an optional input, e.g. a bypassed adapter loader's adapter) or where the
    node is muted.
    """
    links = {link[0]: link for link in workflow.get("links", [])}
    by_id = {node["id"]: node for node in workflow["nodes"]}

    def source(link_id):
        """``[node_id, slot]`` that a link carries once bypassed nodes pass their inputs through, else None."""
        _, src, slot, _, _, kind = links[link_id]
        node = by_id[src]
        if node.get("mode", 0) == 2:
            return None
        if node.get("mode", 0) != 4:
            return [str(src), slot]
        inputs = node.get("inputs", [])
        same = [i for i in inputs[slot : slot + 1] + inputs if i.get("type") == kind and i.get("link") is not None]
        return source(same[0]["link"]) if same else None

    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):
            continue
        if node["type"] not in object_info:
            raise KeyError(f"node type {node['type']} (node {node['id']}) is not installed in this ComfyUI")
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = {name: value for name, _, value, _ in widget_values(node, object_info[node["type"]])}
        inputs = {}
        for name, _ in node_inputs(object_info[node["type"]]):
            if name in linked:
                origin = source(linked[name])
                if origin is not None:
                    inputs[name] = origin
            elif values.get(name) is not None:
                inputs[name] = values[name]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
