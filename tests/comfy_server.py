"""A real ComfyUI host on loopback, with the pack loaded the way ComfyUI loads custom nodes."""

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

from host import ROOT, comfyui_dir

PACK_NAME = "ContextDiff-ComfyUI"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """Starts ``main.py --cpu`` in a scratch folder; ``stop()`` ends it."""

    def __init__(self, workdir: Path, extra_custom_nodes: list[Path] = (), timeout: float = 120):
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
            "  loras: loras\n")
        self.log_path = self.workdir / "comfyui.log"
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
               "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
               "--user-directory", str(self.workdir / "user"), "--extra-model-paths-config", str(config),
               "--disable-auto-launch", "--preview-method", "none"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=comfyui_dir(), stdout=self._log, stderr=subprocess.STDOUT, env=env)
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
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
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


class PromptError(RuntimeError):
    pass


def error_message(entry: dict) -> str:
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message')}"
        if kind == "execution_interrupted":
            return "interrupted"
    return json.dumps(entry["status"])
