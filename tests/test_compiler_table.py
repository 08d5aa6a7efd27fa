"""Table of invalid workflow files and the exact diagnostics the compiler reports for each.

Each case under compiler_cases/invalid/ states what it expects. A YAML file does it in header
comments, one line per diagnostic in report order:

    # expect: 7:5: unknown field 'retires' in node 'fetch'. Did you mean 'retry'?

A JSON file, an empty file or a binary file has a sidecar `<name>.expect` with the same lines
without `# expect: `. The text after `line:column: ` is the diagnostic's message plus its hint,
as `Diagnostic.format` prints them. It must match exactly, unless it ends in `...`, which makes
it a prefix. A diagnostic located in another file starts with that file's path relative to the
case folder (`children/x.yaml:6:11: ...`).

Cases that need large or generated input (a 5 MB file, 10,000 nodes, deep nesting) are built
in tmp_path by the tests at the end of this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from dagwright.activities.tools import Tool, ToolRegistry
from dagwright.interpreter.compiler import compile_file
from dagwright.interpreter.diagnostics import CompileError, Diagnostic
from dagwright.interpreter.loader import MAX_DEPTH, MAX_FILE_BYTES

CASES_DIR = Path(__file__).parent / "compiler_cases" / "invalid"
CASE_FILES = sorted(
    path for path in CASES_DIR.iterdir() if path.is_file() and path.suffix in (".yaml", ".json")
)
MIN_CASES = 45

_EXPECT_LINE = re.compile(r"^(?:(?P<file>[^\s:]+):)?(?P<line>\d+):(?P<column>\d+): (?P<text>.+)$")
_HEADER_PREFIX = "# expect: "


def fetch_quote(ticker: str, days: int = 5) -> dict:
    """Return a price quote (a stand-in: these tests only compile workflows)."""
    return {"ticker": ticker, "days": days, "price": 1.0}


def summarize(text: str) -> str:
    """Return the text unchanged (a stand-in)."""
    return text


def make_registry() -> ToolRegistry:
    """Build a fresh registry with two tools, so the default registry stays untouched."""
    registry = ToolRegistry()
    registry.register(Tool("fetch_quote", fetch_quote))
    registry.register(Tool("summarize", summarize))
    return registry


@dataclass(frozen=True)
class Expected:
    """One expected diagnostic: where it is and the text it prints."""

    file: str
    line: int
    column: int
    text: str

    def matches(self, actual: "Expected") -> bool:
        if (self.file, self.line, self.column) != (actual.file, actual.line, actual.column):
            return False
        if self.text.endswith("..."):
            return actual.text.startswith(self.text[:-3])
        return self.text == actual.text


def expectation_lines(case: Path) -> list[str]:
    """Return the expectation lines of a case, from its sidecar or its header comments."""
    sidecar = case.with_name(case.name + ".expect")
    if sidecar.exists():
        return [line for line in sidecar.read_text(encoding="utf-8").splitlines() if line.strip()]
    # latin-1 decodes any byte, so cases with invalid UTF-8 after the header still parse.
    text = case.read_bytes().decode("latin-1")
    return [line[len(_HEADER_PREFIX) :] for line in text.splitlines() if line.startswith(_HEADER_PREFIX)]


def parse_expectations(case: Path) -> list[Expected]:
    expectations = []
    for line in expectation_lines(case):
        match = _EXPECT_LINE.match(line)
        assert match is not None, f"{case.name}: malformed expectation line {line!r}"
        expectations.append(
            Expected(
                file=match["file"] or case.name,
                line=int(match["line"]),
                column=int(match["column"]),
                text=match["text"],
            )
        )
    return expectations


def as_expected(diagnostic: Diagnostic) -> Expected:
    """Return the diagnostic in the shape of an expectation, as the CLI would print it."""
    location = f"{diagnostic.file}:{diagnostic.line}:{diagnostic.column}: "
    formatted = diagnostic.format()
    assert formatted.startswith(location)
    return Expected(diagnostic.file, diagnostic.line, diagnostic.column, formatted[len(location) :])


def compile_case(case: Path, monkeypatch: pytest.MonkeyPatch) -> list[Diagnostic]:
    """Compile a case by its name relative to the case folder, so messages do not contain
    machine-specific absolute paths; return its diagnostics."""
    monkeypatch.chdir(CASES_DIR)
    with pytest.raises(CompileError) as raised:
        compile_file(case.name, tools=make_registry())
    return raised.value.diagnostics


def test_table_has_enough_cases() -> None:
    assert len(CASE_FILES) >= MIN_CASES


@pytest.mark.parametrize("case", CASE_FILES, ids=lambda path: path.name)
def test_case_states_expectations(case: Path) -> None:
    assert parse_expectations(case), f"{case.name} has no expectations"


@pytest.mark.parametrize("case", CASE_FILES, ids=lambda path: path.name)
def test_case_reports_exact_diagnostics(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = parse_expectations(case)
    actual = [as_expected(diagnostic) for diagnostic in compile_case(case, monkeypatch)]

    mismatches = [
        (want, got) for want, got in zip(expected, actual) if not want.matches(got)
    ]
    assert not mismatches, "\n".join(f"expected {want}\n     got {got}" for want, got in mismatches)
    assert len(actual) == len(expected), "\n".join(
        ["diagnostic count differs; actual:"] + [f"{d.line}:{d.column}: {d.text}" for d in actual]
    )


@pytest.mark.parametrize("case", CASE_FILES, ids=lambda path: path.name)
def test_case_diagnostics_name_their_node(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for diagnostic in compile_case(case, monkeypatch):
        if diagnostic.node is not None:
            # Quoted ('fetch') or as a step of a cycle (a -> b -> a).
            pattern = rf"(?<![\w-]){re.escape(diagnostic.node)}(?![\w-])"
            assert re.search(pattern, diagnostic.message), diagnostic.format()


@pytest.mark.parametrize("case", CASE_FILES, ids=lambda path: path.name)
def test_case_diagnostics_have_codes(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for diagnostic in compile_case(case, monkeypatch):
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", diagnostic.code), diagnostic
        assert diagnostic.line >= 1, diagnostic
        assert diagnostic.column >= 1, diagnostic


# ---------------------------------------------------------------- generated inputs


def _compile_generated(path: Path) -> dict | list[Diagnostic]:
    """Compile a generated file; return the definition or the diagnostics, never raise others."""
    try:
        return compile_file(path, tools=make_registry())
    except CompileError as exc:
        return exc.diagnostics


def test_five_megabyte_file_rejected_by_size(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    filler = "x" * (5 * 1024 * 1024)
    path.write_text(f"dagwright: 1\nname: huge\ndescription: {filler}\nnodes:\n  a: {{type: transform, value: 1}}\n")

    result = _compile_generated(path)

    assert isinstance(result, list)
    assert len(result) == 1
    assert result[0].code == "too-large"
    assert (result[0].line, result[0].column) == (1, 1)
    assert f"{MAX_FILE_BYTES:,}-byte limit" in result[0].message


def _chain_workflow(count: int) -> str:
    lines = ["dagwright: 1", "name: many-nodes", "nodes:"]
    for index in range(count):
        lines.append(f"  n{index}:")
        lines.append("    type: transform")
        # Every tenth node refers to the one before it, so the graph has real edges.
        if index and index % 10 == 0:
            lines.append(f'    value: "{{{{ nodes.n{index - 1}.output }}}}"')
        else:
            lines.append(f"    value: {index}")
    return "\n".join(lines) + "\n"


def test_ten_thousand_nodes_compile(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(_chain_workflow(10_000))

    result = _compile_generated(path)

    assert isinstance(result, dict), result[:3]
    assert len(result["nodes"]) == 10_000
    assert len(result["order"]) == 10_000
    assert result["nodes"]["n10"]["deps"] == ["n9"]
    assert result["order"].index("n9") < result["order"].index("n10")


def test_ten_thousand_nodes_report_every_error(tmp_path: Path) -> None:
    path = tmp_path / "many_errors.yaml"
    text = _chain_workflow(10_000).replace("    type: transform\n    value: 5\n", "    type: transform\n    vlaue: 5\n")
    path.write_text(text)

    result = _compile_generated(path)

    assert isinstance(result, list)
    assert {d.code for d in result} == {"unknown-field", "missing-field"}
    assert [d.node for d in result if d.code == "unknown-field"] == ["n5"]


def _deep_list(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def test_nesting_at_limit_compiles(tmp_path: Path) -> None:
    # The top-level mapping, `nodes`, the node and `value` take four levels.
    path = tmp_path / "deep_ok.yaml"
    path.write_text(f"dagwright: 1\nname: deep\nnodes:\n  a:\n    type: transform\n    value: {_deep_list(MAX_DEPTH - 3)}\n")

    result = _compile_generated(path)

    assert isinstance(result, dict), result


def test_nesting_past_limit_rejected(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(f"dagwright: 1\nname: deep\nnodes:\n  a:\n    type: transform\n    value: {_deep_list(500)}\n")

    result = _compile_generated(path)

    assert isinstance(result, list)
    assert [d.code for d in result] == ["too-deep"]
    assert result[0].line == 6
    assert f"deeper than {MAX_DEPTH} levels" in result[0].message


def test_deep_flow_mappings_rejected(tmp_path: Path) -> None:
    path = tmp_path / "deep_map.yaml"
    value = "{a: " * 200 + "1" + "}" * 200
    path.write_text(f"dagwright: 1\nname: deep\nnodes:\n  a:\n    type: transform\n    value: {value}\n")

    result = _compile_generated(path)

    assert isinstance(result, list)
    assert [d.code for d in result] == ["too-deep"]


def test_deeply_nested_expression_reported(tmp_path: Path) -> None:
    path = tmp_path / "deep_expression.yaml"
    expression = "(" * 5000 + "1" + ")" * 5000
    path.write_text(
        f'dagwright: 1\nname: deep\nnodes:\n  a:\n    type: transform\n    value: "{{{{ {expression} }}}}"\n'
    )

    result = _compile_generated(path)

    assert isinstance(result, list)
    assert len(result) == 1
    assert (result[0].line, result[0].column, result[0].node) == (6, 12, "a")
    assert result[0].message == "expression in 'value' of node 'a' is nested too deeply to parse"


def test_long_dependency_chain_has_no_recursion_limit(tmp_path: Path) -> None:
    lines = ["dagwright: 1", "name: chain", "nodes:", "  n0: {type: transform, value: 0}"]
    for index in range(1, 3000):
        lines.append(f"  n{index}: {{type: transform, value: 1, needs: [n{index - 1}]}}")
    path = tmp_path / "chain.yaml"
    path.write_text("\n".join(lines) + "\n")

    result = _compile_generated(path)

    assert isinstance(result, dict), result[:3]
    assert result["order"] == [f"n{index}" for index in range(3000)]


def test_long_cycle_spelled_out(tmp_path: Path) -> None:
    lines = ["dagwright: 1", "name: ring", "nodes:"]
    for index in range(500):
        lines.append(f"  n{index}: {{type: transform, value: 1, needs: [n{(index + 1) % 500}]}}")
    path = tmp_path / "ring.yaml"
    path.write_text("\n".join(lines) + "\n")

    result = _compile_generated(path)

    assert isinstance(result, list)
    assert [d.code for d in result] == ["cycle"]
    ring = " -> ".join(f"n{index}" for index in range(500)) + " -> n0"
    assert result[0].message == f"dependency cycle: {ring}"
