"""The nodes' help pages (web/docs/<NodeId>.md): one for every node the pack registers in the host, served by the
host at the URL the frontend's help panel fetches, with tables that match the node's schema on this host, and the
prose a user needs: what the node does, an example from a shipped workflow, and its equations with a link to the
notation on the repository."""

from __future__ import annotations

import json
import re
import tomllib
import urllib.request

import pytest

from devkit.comfy_host import PACK_NAME, ROOT
from devkit.help_pages import BEGIN, END, PAGES, block, generated, help_url

REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
NOTATION = f"{REPOSITORY}/blob/main/docs/notation.md"
WORKFLOW_LINK = re.compile(re.escape(REPOSITORY) + r"/blob/main/workflows/([\w-]+)\.json")


@pytest.fixture(scope="module")
def ours(server) -> dict:
    info = server.get("/object_info")
    nodes = {name: spec for name, spec in info.items() if spec.get("python_module", "").endswith(PACK_NAME)}
    assert len(nodes) >= 10, sorted(nodes)
    return nodes


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def section(page: str, title: str) -> str:
    parts = re.split(r"^## (.+)$", page, flags=re.M)
    found = [body for head, body in zip(parts[1::2], parts[2::2], strict=True) if head.strip() == title]
    assert len(found) == 1, f"needs one '## {title}' section"
    return found[0]


def test_every_node_has_its_page_served_where_the_help_panel_fetches_it(server, ours):
    for name, info in ours.items():
        with urllib.request.urlopen(server.url + help_url(name, info), timeout=30) as r:
            assert r.status == 200
            assert r.read() == (PAGES / f"{name}.md").read_bytes(), name
    assert sorted(p.stem for p in PAGES.glob("*.md")) == sorted(ours), "a page for a node the pack does not register"
    # The frontend runs every .js the host lists under a pack's web folder: the help folder must hold none.
    folder = help_url(next(iter(ours)), next(iter(ours.values()))).rsplit("/docs/", 1)[0]
    assert not [url for url in server.get("/extensions") if url.startswith(folder + "/")]


def test_help_url_follows_the_frontend():
    """nodeHelpService.ts: /extensions/<module after custom_nodes., without a registry @version>/docs/<NodeId>.md."""
    node = "ContextDiffKSampler"
    registry_install = {"python_module": "custom_nodes.contextdiff@0_1_0"}
    assert help_url(node, registry_install) == f"/extensions/contextdiff/docs/{node}.md"
    with pytest.raises(ValueError, match="not a custom node's"):
        help_url("KSampler", {"python_module": "nodes"})


def test_tables_match_the_schema_and_name_every_input(ours):
    for name, info in ours.items():
        page = (PAGES / f"{name}.md").read_text()
        assert generated(page) == block(info), (
            f"web/docs/{name}.md is stale against the node's schema: run python -m scripts.make_help_pages"
        )
        tables = generated(page)
        for section_name in ("required", "optional"):
            for inp in info["input"].get(section_name, {}):
                assert f"| `{inp}`" in tables, f"{name}: input {inp} is not in its page"
        for out in info["output_name"]:
            assert f"| `{out}` |" in tables, f"{name}: output {out} is not in its page"


def test_stale_tables_are_seen(ours):
    """The check above fails when the schema changes: a new input, or a changed default."""
    name, info = next(iter(ours.items()))
    changed = json.loads(json.dumps(info))
    changed["input"].setdefault("optional", {})["extra_input"] = ["INT", {"default": 3, "tooltip": "new"}]
    assert block(changed) != generated((PAGES / f"{name}.md").read_text())
    assert "| `extra_input` (optional) | INT | `3` |" in block(changed)


def test_pages_say_what_the_node_does_give_an_example_and_the_equations(ours):
    notation = (ROOT / "docs" / "notation.md").read_text().splitlines()
    headings = {github_anchor(line[3:]) for line in notation if line.startswith("## ")}
    for name, info in ours.items():
        page = (PAGES / f"{name}.md").read_text()
        intro = page.split(BEGIN)[0]
        assert intro.startswith(f"# {info['display_name']}\n"), f"{name}: the title is the node's display name"
        assert len(intro.split()) >= 40, f"{name}: say what the node does before the tables"
        assert page.index(END) < page.index("## Example") < page.index("## Equations")

        example = section(page, "Example")
        used = WORKFLOW_LINK.findall(example)
        assert used, f"{name}: the example links a shipped workflow"
        assert all((ROOT / "workflows" / f"{w}.json").is_file() for w in used), f"{name}: links {used}"
        first = json.loads((ROOT / "workflows" / f"{used[0]}.json").read_text())["nodes"]
        assert name in {n["type"] for n in first}, f"{name}: its example workflow {used[0]} does not use it"

        equations = section(page, "Equations")
        assert "```" in equations, f"{name}: the equations go in a code block"
        anchors = re.findall(re.escape(NOTATION) + r"#([\w-]+)\)", equations)
        assert anchors, f"{name}: the equations link {NOTATION}"
        assert set(anchors) <= headings, f"{name}: {anchors} are not sections of docs/notation.md"
