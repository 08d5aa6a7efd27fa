"""Valid workflow files and the exact definitions they compile to.

Each `compiler_cases/valid/<name>.yaml|json` has a sidecar `<name>.expected.json` with the
whole compiled definition, except `source.file` (at every level, child workflows included),
which depends on how the path was given. After an intended change to the compiled shape,
rewrite the sidecars with `DAGWRIGHT_UPDATE_EXPECTED=1 pytest tests/test_compiler_valid.py`
and review the diff before committing it.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from dagwright.activities.tools import Tool, ToolRegistry
from dagwright.interpreter.compiler import compile_file
from dagwright.interpreter.loader import load_file

CASES_DIR = Path(__file__).parent / "compiler_cases" / "valid"
CASE_FILES = sorted(
    path for path in CASES_DIR.iterdir() if path.is_file() and path.suffix in (".yaml", ".json")
    and not path.name.endswith(".expected.json")
)
UPDATE_ENV = "DAGWRIGHT_UPDATE_EXPECTED"


def fetch_quote(ticker: str, days: int = 5) -> dict:
    """Return a price quote (a stand-in: these tests only compile workflows)."""
    return {"ticker": ticker, "days": days, "price": 1.0}


def make_registry() -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(Tool("fetch_quote", fetch_quote))
    return registry


def without_source_file(definition: dict[str, Any]) -> dict[str, Any]:
    """Return a copy without `source.file`, here and in every child workflow definition."""
    result = copy.deepcopy(definition)
    stack = [result]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            source = current.get("source")
            if isinstance(source, dict) and "lines" in source:
                source.pop("file", None)
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return result


def compile_case(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    # Relative paths keep child workflow paths in the definition machine independent.
    monkeypatch.chdir(CASES_DIR)
    return compile_file(name, tools=make_registry())


@pytest.fixture
def full(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The compiled full.yaml, which uses most language features at once."""
    return compile_case("full.yaml", monkeypatch)


def test_valid_cases_exist() -> None:
    assert [path.name for path in CASE_FILES] == ["full.yaml", "minimal.json", "parent.yaml"]


@pytest.mark.parametrize("case", CASE_FILES, ids=lambda path: path.name)
def test_case_compiles_to_expected_definition(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    actual = without_source_file(compile_case(case.name, monkeypatch))
    sidecar = case.with_name(case.stem + ".expected.json")
    if os.environ.get(UPDATE_ENV):
        sidecar.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    expected = json.loads(sidecar.read_text(encoding="utf-8"))

    assert actual == expected


# ---------------------------------------------------------------- hash


def test_hash_same_across_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    first = compile_case("full.yaml", monkeypatch)
    second = compile_case("full.yaml", monkeypatch)

    assert first["hash"] == second["hash"]
    assert first["hash"].startswith("sha256:")


def test_hash_ignores_comments_and_layout(full: dict[str, Any], tmp_path: Path) -> None:
    text = (CASES_DIR / "full.yaml").read_text(encoding="utf-8")
    reformatted = "# another comment at the top\n\n" + text.replace(
        "  quote:\n", "  # the first node\n\n  quote:   # trailing comment\n"
    ).replace("    type: python\n    function: fetch_quote\n", "    function: fetch_quote\n    type: python\n")
    assert reformatted != text
    path = tmp_path / "full.yaml"
    path.write_text(reformatted, encoding="utf-8")

    again = compile_file(path, tools=make_registry())

    assert again["hash"] == full["hash"]
    assert again["source"]["lines"]["quote"] != full["source"]["lines"]["quote"]


def test_hash_same_for_json_rendering(full: dict[str, Any], tmp_path: Path) -> None:
    data = load_file(CASES_DIR / "full.yaml").data
    # YAML reads `version: 1.10` as a float that the compiler turns back into its source
    # text; JSON has no source text for it, so write the string the compiler produces.
    data["version"] = "1.10"
    path = tmp_path / "full.json"
    path.write_text(json.dumps(data, indent=4), encoding="utf-8")

    as_json = compile_file(path, tools=make_registry())

    assert as_json["hash"] == full["hash"]


def test_parent_hash_ignores_child_path_and_comments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    relative = compile_case("parent.yaml", monkeypatch)
    absolute = compile_file(CASES_DIR / "parent.yaml", tools=make_registry())
    (tmp_path / "children").mkdir()
    child_text = (CASES_DIR / "children" / "greeter.yaml").read_text(encoding="utf-8")
    (tmp_path / "children" / "greeter.yaml").write_text("# a comment\n\n" + child_text, encoding="utf-8")
    (tmp_path / "parent.yaml").write_text((CASES_DIR / "parent.yaml").read_text(encoding="utf-8"))
    moved = compile_file(tmp_path / "parent.yaml", tools=make_registry())

    assert absolute["hash"] == relative["hash"]
    assert moved["hash"] == relative["hash"]


def test_hash_changes_when_node_changes(full: dict[str, Any], tmp_path: Path) -> None:
    text = (CASES_DIR / "full.yaml").read_text(encoding="utf-8")
    path = tmp_path / "full.yaml"
    path.write_text(text.replace("url: https://api.example/publish", "url: https://api.example/publish2"))

    changed = compile_file(path, tools=make_registry())

    assert changed["hash"] != full["hash"]


def test_hash_changes_when_defaults_change(full: dict[str, Any], tmp_path: Path) -> None:
    text = (CASES_DIR / "full.yaml").read_text(encoding="utf-8")
    path = tmp_path / "full.yaml"
    path.write_text(text.replace("  timeout: 45s\n", "  timeout: 46s\n"))

    changed = compile_file(path, tools=make_registry())

    assert changed["hash"] != full["hash"]


# ---------------------------------------------------------------- individual rules
# The whole-structure comparison above covers these too; these tests name the rule that broke.


def test_yaml_12_scalars_stay_strings(full: dict[str, Any]) -> None:
    assert full["version"] == "1.10"
    assert full["description"] == "yes"


def test_defaults_timeout_applies_to_activities_only(full: dict[str, Any]) -> None:
    nodes = full["nodes"]
    assert nodes["quote"]["variants"][0]["timeout"] == 45.0
    assert nodes["listing"]["variants"][0]["timeout"] == 10.0
    assert nodes["per_item"]["variants"][0]["timeout"] is None


def test_retry_layers_node_over_defaults(full: dict[str, Any]) -> None:
    listing = full["nodes"]["listing"]["variants"][0]["retry"]
    quote = full["nodes"]["quote"]["variants"][0]["retry"]

    assert listing == {
        "max_attempts": 2,
        "initial_interval": 2.0,
        "backoff": 3.0,
        "max_interval": 60.0,
        "non_retryable": [],
    }
    assert quote["max_attempts"] == 5
    assert quote["backoff"] == 2.0


def test_llm_defaults_and_fallback_variants(full: dict[str, Any]) -> None:
    variants = full["nodes"]["summary"]["variants"]
    picked = [
        (v["params"]["provider"], v["params"]["model"], v["params"]["temperature"]) for v in variants
    ]

    assert picked == [
        ("openai", "gpt-small", 0.2),
        ("openai", "gpt-large", 0.2),
        ("mistral", "mistral-small-latest", 0.0),
    ]


def test_durations_normalised_to_seconds(full: dict[str, Any]) -> None:
    assert full["limits"]["timeout"] == 86400.0
    assert full["nodes"]["pause"]["variants"][0]["params"]["duration"] == 5400.0
    review = full["nodes"]["review"]["variants"][0]
    assert review["params"]["remind_after"] == 43200.0
    assert review["timeout"] == 172800.0


def test_deps_from_references_needs_and_status(full: dict[str, Any]) -> None:
    report = full["nodes"]["report"]

    assert report["deps"] == ["listing", "pause", "review"]
    assert report["when_uses_status"] is True
    assert full["nodes"]["publish"]["deps"] == ["quote"]
    assert full["nodes"]["pause"]["deps"] == ["publish"]


def test_order_is_topological_with_file_order_ties(full: dict[str, Any]) -> None:
    order = full["order"]

    assert order == ["quote", "listing", "publish", "per_item", "summary", "pause", "review", "report", "prices"]
    for node_id, node in full["nodes"].items():
        for dep in node["deps"]:
            assert order.index(dep) < order.index(node_id), (dep, node_id)


def test_for_each_node_keeps_expression(full: dict[str, Any]) -> None:
    per_item = full["nodes"]["per_item"]

    assert per_item["for_each"] == "nodes.listing.output.json.items"
    assert per_item["max_parallel"] == 2
    assert per_item["deps"] == ["listing"]


def test_idempotency_key_default_by_method(full: dict[str, Any]) -> None:
    listing = full["nodes"]["listing"]["variants"][0]["params"]
    publish = full["nodes"]["publish"]["variants"][0]["params"]

    assert (listing["method"], listing["idempotency_key"]) == ("GET", False)
    assert (publish["method"], publish["idempotency_key"]) == ("POST", True)
    assert publish["expect_status"] == [201]


def test_child_workflow_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = compile_case("parent.yaml", monkeypatch)
    child = parent["nodes"]["greet"]["variants"][0]["params"]["definition"]

    assert child["name"] == "greeter"
    assert list(child["outputs"]) == ["greeting"]
    assert parent["nodes"]["shout"]["deps"] == ["greet"]
