"""The nodes' help pages (``web/docs/<NodeId>.md``, shown in the frontend's node-library help panel): where the
frontend fetches them, and their inputs and outputs tables, written from the node's schema as the host reports it
in ``/object_info`` so that they cannot drift from the nodes.

A page is hand-written prose (what the node does, an example, its equations) around one generated block between
:data:`BEGIN` and :data:`END`; ``python -m scripts.make_help_pages`` rewrites the block, ``tests/host/
test_help_pages.py`` fails when it is stale. Only what the pack itself declares goes into the block (types,
defaults, ranges, tooltips), never the host's own lists (schedulers, files), so one page fits every host.
"""

from __future__ import annotations

import json

from devkit.comfy_host import ROOT, node_inputs, pack_folder

PAGES = ROOT / "web" / "docs"
BEGIN = "<!-- inputs and outputs: written from the node's schema by `python -m scripts.make_help_pages` -->"
END = "<!-- end of the generated inputs and outputs -->"


def help_url(name: str, info: dict) -> str:
    """The URL the frontend (1.32 to 1.35 at least: ``nodeHelpService.ts``) fetches a custom node's help page from,
    ``/extensions/<pack folder>/docs/<NodeId>.md`` (:func:`devkit.comfy_host.pack_folder`)."""
    return f"/extensions/{pack_folder(info['python_module'])}/docs/{name}.md"


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _value(value) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def _kind(spec) -> str:
    kind = spec[0]
    return "choice" if isinstance(kind, list) or kind == "COMBO" else kind


def block(info: dict) -> str:
    """The generated part of a node's page: its inputs (in the frontend's order) and outputs."""
    optional = set(info["input"].get("optional", {}))
    rows = ["## Inputs", "", "| input | type | default | range | what it is |", "|---|---|---|---|---|"]
    for name, spec in node_inputs(info):
        opts = spec[1] if len(spec) > 1 else {}
        low, high = opts.get("min"), opts.get("max")
        limits = f"{_value(low)} to {_value(high)}" if low is not None and high is not None else ""
        default = _value(opts["default"]) if "default" in opts else ""
        label = f"`{name}`" + (" (optional)" if name in optional else "")
        rows.append(f"| {label} | {_cell(_kind(spec))} | {default} | {limits} | {_cell(opts.get('tooltip', ''))} |")
    rows += ["", "## Outputs", "", "| output | type | what it is |", "|---|---|---|"]
    tips = info.get("output_tooltips") or [None] * len(info["output"])
    for name, kind, tip in zip(info["output_name"], info["output"], tips, strict=True):
        rows.append(f"| `{name}` | {_cell(kind)} | {_cell(tip or '')} |")
    return "\n".join([BEGIN, "", *rows, "", END])


def generated(page: str) -> str | None:
    """The generated block of a page as it stands, or None when the page has none."""
    if page.count(BEGIN) != 1 or page.count(END) != 1:
        return None
    return BEGIN + page.split(BEGIN)[1].split(END)[0] + END


def with_block(page: str, info: dict) -> str:
    """The page with its generated block rewritten from ``info`` (the node's ``/object_info`` entry)."""
    old = generated(page)
    if old is None:
        raise ValueError(f"the page needs one line {BEGIN!r} and one line {END!r} where its tables go")
    return page.replace(old, block(info))
