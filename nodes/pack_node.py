"""The base class of this pack's nodes (ComfyUI V3): a node's id is its class name, its description its docstring.

Each node then says what it does once, in the place a reader of the code looks first, and its schema holds only
what differs between nodes: the inputs and outputs.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

from comfy_api.latest import io


class PackNode(io.ComfyNode):
    """``class X(PackNode, display="Menu Name", category="sampling/contextdiff")`` with a docstring."""

    display: ClassVar[str]
    category: ClassVar[str]

    def __init_subclass__(cls, display: str | None = None, category: str | None = None, **kwargs):
        # ComfyUI copies node classes (comfy_api.internal.copy_class) without these keywords: keep the parent's.
        super().__init_subclass__(**kwargs)
        if display is not None:
            cls.display = display
        if category is not None:
            cls.category = category

    @classmethod
    def schema(cls, inputs: list, outputs: list, **more: object) -> io.Schema:
        """The node's schema: its id, menu name, category and description, with ``inputs`` and ``outputs``."""
        return io.Schema(
            node_id=cls.__name__,
            display_name=cls.display,
            category=cls.category,
            description=" ".join(inspect.getdoc(cls).split()),
            inputs=inputs,
            outputs=outputs,
            **more,
        )
