"""Every input of every ContextDiff node has a tooltip, as the running host reports it (/object_info)."""


def missing_tooltips(info: dict) -> list[str]:
    """``Node.input`` for each input of a ContextDiff node (test nodes excluded) without a tooltip."""
    missing = []
    for node, spec in sorted(info.items()):
        if not node.startswith("ContextDiff") or node.startswith("ContextDiffTest_"):
            continue
        for section in ("required", "optional"):
            for name, declared in spec["input"].get(section, {}).items():
                options = declared[1] if len(declared) > 1 and isinstance(declared[1], dict) else {}
                if not str(options.get("tooltip", "")).strip():
                    missing.append(f"{node}.{name}")
    return missing


def test_checker_finds_an_input_without_tooltip():
    info = {
        "ContextDiffX": {
            "input": {"required": {"a": ["INT", {"tooltip": "ok"}], "b": ["INT", {}]}, "optional": {"c": [["x", "y"]]}}
        },
        "ContextDiffTest_Y": {"input": {"required": {"d": ["INT", {}]}}},
        "Other": {"input": {}},
    }
    assert missing_tooltips(info) == ["ContextDiffX.b", "ContextDiffX.c"]


def test_every_contextdiff_input_has_a_tooltip(server):
    info = server.get("/object_info")
    assert sum(n.startswith("ContextDiff") and not n.startswith("ContextDiffTest_") for n in info) >= 9
    assert missing_tooltips(info) == []
