"""The real `dagwright` command on valid and invalid files: exit codes, output forms, schema.

Every test starts the installed console script in a subprocess, the way a user or CI runs it.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from dagwright.interpreter.loader import load_file

REPO = Path(__file__).resolve().parents[1]
CASES = Path(__file__).parent / "compiler_cases"
VALID = CASES / "valid" / "minimal.json"
INVALID = CASES / "invalid" / "many_errors.yaml"
SAMPLES = sorted(glob.glob(str(REPO / "samples" / "*.yaml")))
DIAGNOSTIC_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<column>\d+): (?P<message>.+)$")
BAD_INPUTS = [
    "empty.yaml",
    "only_comments.yaml",
    "binary_garbage.yaml",
    "non_utf8.yaml",
    "tabs.yaml",
    "top_level_list.yaml",
    "top_level_scalar.yaml",
    "version_unknown.yaml",
    "yaml_syntax.yaml",
    "json_syntax.json",
    "unsupported_tag.yaml",
]


def dagwright_command() -> list[str]:
    """Return the console script next to this Python, or `python -m dagwright` without one."""
    script = shutil.which("dagwright", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "dagwright"]


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dagwright_command(), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=120,
    )


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- validate


def test_validate_valid_file_exits_zero() -> None:
    result = run_cli("validate", VALID)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"{VALID}: ok (2 nodes, sha256:")
    assert result.stderr == ""


def test_validate_invalid_file_exits_one() -> None:
    result = run_cli("validate", INVALID)

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 8
    for line in lines:
        match = DIAGNOSTIC_LINE.match(line)
        assert match is not None, line
        assert match["file"] == str(INVALID)
    assert lines[3] == f"{INVALID}:19:5: unknown field 'retires' in node 'fetch'. Did you mean 'retry'?"
    assert result.stderr.strip() == "8 errors in 1 file"
    assert_no_traceback(result)


def test_validate_without_files_is_usage_error() -> None:
    result = run_cli("validate")

    assert result.returncode == 2
    assert "Missing argument" in result.stderr


def test_validate_unknown_option_is_usage_error() -> None:
    result = run_cli("validate", "--no-such-option", VALID)

    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_validate_missing_file_reports_path() -> None:
    missing = CASES / "does_not_exist.yaml"

    result = run_cli("validate", missing)

    assert result.returncode == 1
    assert result.stdout.startswith(f"{missing}:1:1: cannot read the file: No such file or directory")
    assert_no_traceback(result)


def test_validate_several_files() -> None:
    empty = CASES / "invalid" / "empty.yaml"

    result = run_cli("validate", VALID, INVALID, empty)

    assert result.returncode == 1
    files = [DIAGNOSTIC_LINE.match(line)["file"] for line in result.stdout.splitlines() if " ok (" not in line]
    assert files == [str(INVALID)] * 8 + [str(empty)]
    assert f"{VALID}: ok (2 nodes" in result.stdout
    assert result.stderr.strip() == "9 errors in 2 files"


def test_validate_json_output_structure() -> None:
    cycle = CASES / "invalid" / "cycle_two.yaml"

    result = run_cli("validate", "--json", VALID, cycle)

    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert [entry["file"] for entry in report] == [str(VALID), str(cycle)]
    valid, invalid = report
    assert valid["valid"] is True
    assert valid["nodes"] == 2
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", valid["hash"])
    assert valid["diagnostics"] == []
    assert invalid["valid"] is False
    assert invalid["diagnostics"] == [
        {
            "file": str(cycle),
            "line": 5,
            "column": 3,
            "message": "dependency cycle: a -> b -> a",
            "code": "cycle",
            "node": "a",
            "field": None,
            "hint": "A node cannot depend on itself through other nodes; remove one of these references.",
        }
    ]


def test_validate_json_output_when_all_valid() -> None:
    result = run_cli("validate", "--json", VALID)

    assert result.returncode == 0
    assert [entry["valid"] for entry in json.loads(result.stdout)] == [True]


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_validate_bad_input_without_traceback(name: str) -> None:
    path = CASES / "invalid" / name

    result = run_cli("validate", path)

    assert result.returncode == 1
    assert_no_traceback(result)
    assert DIAGNOSTIC_LINE.match(result.stdout.splitlines()[0]), result.stdout


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_validate_bad_input_json_without_traceback(name: str) -> None:
    result = run_cli("validate", "--json", CASES / "invalid" / name)

    assert result.returncode == 1
    assert_no_traceback(result)
    assert json.loads(result.stdout)[0]["valid"] is False


def test_validate_generated_bad_inputs_without_traceback(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_text("dagwright: 1\nname: huge\ndescription: " + "x" * (5 * 1024 * 1024) + "\n")
    deep = tmp_path / "deep.yaml"
    deep.write_text("dagwright: 1\nname: deep\nnodes:\n  a: {type: transform, value: " + "[" * 300 + "]" * 300 + "}\n")
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"dagwright: 1\x00\nname: x\n")
    directory = tmp_path / "folder.yaml"
    directory.mkdir()

    result = run_cli("validate", huge, deep, nul, directory)

    assert result.returncode == 1
    assert_no_traceback(result)
    reported = {DIAGNOSTIC_LINE.match(line)["file"] for line in result.stdout.splitlines()}
    assert reported == {str(huge), str(deep), str(nul), str(directory)}


# ---------------------------------------------------------------- samples and schema


def test_samples_exist() -> None:
    assert SAMPLES, "no samples/*.yaml found"


def test_validate_all_samples_exits_zero() -> None:
    result = run_cli("validate", *SAMPLES)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok (") == len(SAMPLES)


def test_schema_command_prints_json_schema() -> None:
    result = run_cli("schema")

    assert result.returncode == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["dagwright", "name", "nodes"]


@pytest.fixture(scope="module")
def language_schema() -> dict:
    result = run_cli("schema")
    assert result.returncode == 0
    return json.loads(result.stdout)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda path: Path(path).name)
def test_sample_matches_schema(sample: str, language_schema: dict) -> None:
    validator = jsonschema.Draft202012Validator(language_schema)
    # The project's loader, so the sample is read with the YAML 1.2 rules that `validate` uses.
    data = load_file(sample).data

    errors = [f"{list(error.path)}: {error.message}" for error in validator.iter_errors(data)]

    assert errors == []


def test_schema_rejects_unknown_field(language_schema: dict) -> None:
    validator = jsonschema.Draft202012Validator(language_schema)
    data = load_file(CASES / "invalid" / "unknown_field_top.yaml").data

    assert not validator.is_valid(data)


# ---------------------------------------------------------------- graph


def test_graph_mermaid() -> None:
    result = run_cli("graph", VALID, "--format", "mermaid")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "flowchart TD",
        '    first("first<br/>transform")',
        '    second("second<br/>transform")',
        "    first --> second",
    ]


def test_graph_defaults_to_mermaid() -> None:
    result = run_cli("graph", VALID)

    assert result.returncode == 0
    assert result.stdout.startswith("flowchart TD\n")


def test_graph_dot() -> None:
    result = run_cli("graph", VALID, "--format", "dot")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        'digraph "minimal-json" {',
        "    rankdir=TB;",
        "    node [fontname=Helvetica];",
        '    first [label="first\\ntransform", shape=box];',
        '    second [label="second\\ntransform", shape=box];',
        "    first -> second;",
        "}",
    ]


def test_graph_unknown_format_is_usage_error() -> None:
    result = run_cli("graph", VALID, "--format", "png")

    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown format 'png'; use mermaid or dot"


def test_graph_invalid_file_prints_diagnostics() -> None:
    cycle = CASES / "invalid" / "cycle_two.yaml"

    result = run_cli("graph", cycle)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{cycle}:5:3: dependency cycle: a -> b -> a. A node cannot depend on itself through other"
        " nodes; remove one of these references.",
        f"{cycle}: 1 error; nothing was started",
    ]
    assert_no_traceback(result)


def test_graph_of_sample_lists_every_node() -> None:
    sample = REPO / "samples" / "hello.yaml"

    result = run_cli("graph", sample, "--format", "dot")

    assert result.returncode == 0, result.stderr
    for node_id in load_file(sample).data["nodes"]:
        assert f"    {node_id} [label=" in result.stdout
