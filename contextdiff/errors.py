"""The pack's error type for bad input: a ``ValueError`` whose name reads cleanly in ComfyUI's error dialog.

ComfyUI names an exception by its class's ``__module__`` and loads a custom node pack under its install path
(``/home/.../custom_nodes/ContextDiff.contextdiff.edit_plan.EditInputError``); the dialog should read
``contextdiff.edit_plan.EditInputError: <what was wrong and what to do>``. Subclasses get their module name
relative to the pack's root, whatever name the pack was imported under.
"""

from __future__ import annotations

# This module is ``<root>.contextdiff.errors``, ``<root>`` the pack's import name ("" when imported as contextdiff).
_ROOT = __name__.rsplit(".", 2)[0] + "." if __name__.count(".") >= 2 else ""


def pack_relative(module: str) -> str:
    """``module`` without the pack's import name: ``/x/custom_nodes/pack.nodes.inputs`` -> ``nodes.inputs``."""
    return module.removeprefix(_ROOT) if _ROOT else module


class PackError(ValueError):
    """Bad input to a node: the message is one sentence saying what was wrong and what to do."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.__module__ = pack_relative(cls.__module__)


PackError.__module__ = pack_relative(PackError.__module__)
