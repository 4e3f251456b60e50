"""Rewrites the inputs and outputs tables of the nodes' help pages (web/docs/<NodeId>.md) from a live host's
/object_info. The prose around them (what the node does, an example, its equations) is written by hand; a node
without a page is an error that says so. Run after changing a node's inputs, outputs or tooltips:

    .venv/bin/python -m scripts.make_help_pages
"""

from __future__ import annotations

from devkit.comfy_host import PACK_NAME, fresh_object_info
from devkit.help_pages import PAGES, with_block


def main():
    info = fresh_object_info()
    ours = {name: spec for name, spec in info.items() if spec.get("python_module", "").endswith(PACK_NAME)}
    missing = sorted(name for name in ours if not (PAGES / f"{name}.md").exists())
    if missing:
        raise SystemExit(
            f"no help page for {', '.join(missing)}: write web/docs/<NodeId>.md (what the node does, an example, "
            "the equations it implements with a link to docs/notation.md; copy the layout of another page), then "
            "run this again to fill in its tables"
        )
    for name, spec in sorted(ours.items()):
        path = PAGES / f"{name}.md"
        page = path.read_text()
        new = with_block(page, spec)
        if new != page:
            path.write_text(new)
            print(f"updated {path.relative_to(PAGES.parents[1])}")
    stale = sorted(p.stem for p in PAGES.glob("*.md") if p.stem not in ours)
    if stale:
        raise SystemExit(f"pages for nodes the pack does not register: {', '.join(stale)}; remove or rename them")


if __name__ == "__main__":
    main()
