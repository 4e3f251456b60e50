"""The value on a link of the workflow graph, where ComfyUI's own pure string nodes compute it: a prompt text typed
into a Primitive String (Multiline) node, joined by Concatenate, replaced, trimmed... reaches a CLIP Text Encode
through a link, and the API prompt holds only the link.

Those nodes (``comfy_extras/nodes_string.py`` and ``nodes_primitive.py``) are pure functions of their inputs, so the
host's own classes recompute the value from the graph, the same value the executed graph carried. Any other node
(another pack's, a file reader, a random prompt) is not run again: its value is :class:`Unknown`, naming it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

from comfy_api.latest import io

MAX_DEPTH = 32


class Unknown(NamedTuple):
    """A value the graph does not say: it comes out of node ``node_id`` (of ``class_type``)."""

    node_id: str
    class_type: str


def is_link(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


@functools.cache
def pure_nodes() -> dict[str, type[io.ComfyNode]]:
    """ComfyUI's own string and primitive nodes by class type (none where this host has no such modules)."""
    try:
        from comfy_extras import nodes_primitive, nodes_string
    except ImportError:
        return {}
    found = {}
    for module in (nodes_primitive, nodes_string):
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, io.ComfyNode) and cls is not io.ComfyNode:
                found[cls.define_schema().node_id] = cls
    return found


def linked_value(prompt: Mapping, link: list, depth: int = 0) -> object:
    """The value on ``link`` (``[node_id, output_index]``), computed by the host's own pure node classes, or
    :class:`Unknown` naming the first node on the way whose output only its run knows."""
    node_id = str(link[0])
    node = prompt.get(node_id)
    class_type = node.get("class_type", "?") if isinstance(node, Mapping) else "?"
    cls = pure_nodes().get(class_type)
    if cls is None or depth >= MAX_DEPTH:
        return Unknown(node_id, class_type)
    kwargs = {}
    for name, value in node.get("inputs", {}).items():
        kwargs[name] = linked_value(prompt, value, depth + 1) if is_link(value) else value
        if isinstance(kwargs[name], Unknown):
            return kwargs[name]
    try:
        return cls.execute(**kwargs).args[link[1]]
    except Exception:  # inputs the host would have refused: its own error reaches the user from that node
        return Unknown(node_id, class_type)
