"""ContextDiffAdapterLoader: pick an adapter file from ``models/contextdiff/``."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..contextdiff.adapter_io import load_adapter
from ..contextdiff.checkpoint import ADAPTER, content_hash
from .paths import FOLDER
from .types import Adapter, LoadedAdapter


class ContextDiffAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ContextDiffAdapterLoader",
            display_name=ADAPTER.loader,
            category="loaders/contextdiff",
            description="Loads a context-aware adapter (the paper's relational network r_phi) from "
            "models/contextdiff/. Only .safetensors adapters written by this pack's trainer load; "
            "pickles are refused because they can run code.",
            inputs=[
                io.Combo.Input(
                    "adapter_name",
                    options=folder_paths.get_filename_list(FOLDER),
                    tooltip="An adapter file in models/contextdiff/ (train one with python -m trainer.train).",
                ),
            ],
            outputs=[
                Adapter.Output(
                    display_name="adapter", tooltip="Connect to ContextDiff KSampler or ContextDiff Sampler."
                )
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, adapter_name: str) -> str:
        # The content decides: a file rewritten with the same size and mtime (even in place) still reloads.
        path = folder_paths.get_full_path(FOLDER, adapter_name)
        if path is None:
            return adapter_name
        try:
            return content_hash(path)
        except OSError:
            return adapter_name  # vanished or unreadable: execute() names the problem

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER, adapter_name)
        if path is None:
            raise FileNotFoundError(
                f"ContextDiff adapter '{adapter_name}' is not in models/contextdiff/; "
                "copy it there and refresh the page."
            )
        module, meta = load_adapter(path)
        return io.NodeOutput(LoadedAdapter(module=module, meta=meta, name=adapter_name))
