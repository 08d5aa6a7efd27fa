"""Tests for the position-keeping YAML/JSON loader."""

from __future__ import annotations

import math
import pathlib
import random

import pytest
import yaml

from dagwright.interpreter import loader
from dagwright.interpreter.diagnostics import CompileError
from dagwright.interpreter.loader import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    LoadedDocument,
    LoadError,
    Position,
    load_file,
    load_text,
)

FILES = pathlib.Path(__file__).parent / "loader_files"

PARSERS = [pytest.param(yaml.SafeLoader, id="python-parser")]
if hasattr(yaml, "CSafeLoader"):
    PARSERS.insert(0, pytest.param(yaml.CSafeLoader, id="libyaml-parser"))


@pytest.fixture(params=PARSERS)
def parser_class(request, monkeypatch):
    """Run the test once with libyaml (when installed) and once with PyYAML's Python parser."""
    monkeypatch.setattr(loader, "_PARSER_CLASS", request.param)
    return request.param


def load_error(text: str | bytes, path: str = "flow.yaml") -> LoadError:
    with pytest.raises(LoadError) as info:
        load_text(text, path)
    return info.value


def only_diagnostic(text: str | bytes, path: str = "flow.yaml"):
    diagnostics = load_error(text, path).diagnostics
    assert len(diagnostics) == 1, [d.format() for d in diagnostics]
    return diagnostics[0]


# --- Scalar resolution -------------------------------------------------------------------

RESOLUTION_CASES = [
    # (source text of the value, expected Python value)
    ("no", "no"),
    ("yes", "yes"),
    ("on", "on"),
    ("off", "off"),
    ("y", "y"),
    ("n", "n"),
    ("No", "No"),
    ("true", True),
    ("True", True),
    ("TRUE", True),
    ("false", False),
    ("False", False),
    ("FALSE", False),
    ("tRUE", "tRUE"),
    ("null", None),
    ("Null", None),
    ("NULL", None),
    ("~", None),
    ("", None),
    ("nULL", "nULL"),
    ("010", 10),
    ("0755", 755),
    ("42", 42),
    ("-7", -7),
    ("+7", 7),
    ("0o10", 8),
    ("0o8", "0o8"),
    ("0x1f", 31),
    ("0x1F", 31),
    ("0X1F", "0X1F"),
    ("1e3", 1000.0),
    ("1E3", 1000.0),
    ("1.5", 1.5),
    ("-.5", -0.5),
    ("1.", 1.0),
    ("2.5e-3", 0.0025),
    (".inf", math.inf),
    ("-.Inf", -math.inf),
    ("+.INF", math.inf),
    ("1_000", "1_000"),
    ("12:30", "12:30"),
    ("12:30:00", "12:30:00"),
    ("2024-01-01", "2024-01-01"),
    ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z"),
    ("0b101", "0b101"),
    ("1.2.3", "1.2.3"),
    ("'no'", "no"),
    ("'true'", "true"),
    ('"010"', "010"),
    ("'1e3'", "1e3"),
    ("''", ""),
    ('"~"', "~"),
    ("!!str 42", "42"),
    ("!!str true", "true"),
    ("! 42", "42"),
    ("!!int 0x10", 16),
    ("!!float 3", 3.0),
    ("!!float 1e3", 1000.0),
    ("!!bool false", False),
    ("!!null ''", None),
    ("!!null ~", None),
]


@pytest.mark.parametrize(
    ("source", "expected"), RESOLUTION_CASES, ids=[case[0] or "empty" for case in RESOLUTION_CASES]
)
def test_scalar_resolution_yaml_1_2(parser_class, source, expected):
    value = load_text(f"value: {source}\n", "flow.yaml").data["value"]

    assert value == expected
    assert type(value) is type(expected)


def test_scalar_nan():
    document = load_text("a: .nan\nb: .NaN\nc: .NAN\nd: .Nan\n", "flow.yaml")

    assert math.isnan(document.data["a"])
    assert math.isnan(document.data["b"])
    assert math.isnan(document.data["c"])
    assert document.data["d"] == ".Nan"


def test_scalar_text_for_plain_non_strings():
    document = load_text("a: 1e3\nb: '1e3'\nc: 010\nd: hello\ne: no\nf: ~\ng: true\n", "flow.yaml")
    source_map = document.source_map

    assert source_map.scalar_text(("a",)) == "1e3"
    assert source_map.scalar_text(("b",)) is None
    assert source_map.scalar_text(("c",)) == "010"
    assert source_map.scalar_text(("d",)) is None
    assert source_map.scalar_text(("e",)) is None
    assert source_map.scalar_text(("f",)) == "~"
    assert source_map.scalar_text(("g",)) == "true"
    assert source_map.scalar_text(("missing",)) is None


def test_scalar_style_recorded():
    text = "a: plain\nb: 'single'\nc: \"double\"\nd: |\n  literal\ne: >\n  folded\nf: [1]\n"
    source_map = load_text(text, "flow.yaml").source_map

    assert source_map.scalar_style(("a",)) == "plain"
    assert source_map.scalar_style(("b",)) == "single-quoted"
    assert source_map.scalar_style(("c",)) == "double-quoted"
    assert source_map.scalar_style(("d",)) == "literal"
    assert source_map.scalar_style(("e",)) == "folded"
    assert source_map.scalar_style(("f",)) is None
    assert source_map.scalar_style(("f", 0)) == "plain"


def test_keys_no_and_on_are_strings():
    document = load_text("on: push\nno: 1\nyes: 2\n", "flow.yaml")

    assert list(document.data) == ["on", "no", "yes"]


def test_mapping_keeps_file_order():
    document = load_text("zeta: 1\nalpha: 2\nmid: 3\n", "flow.yaml")

    assert list(document.data) == ["zeta", "alpha", "mid"]
    assert document.source_map.child_keys(()) == ["zeta", "alpha", "mid"]
    assert document.source_map.child_keys(("zeta",)) == []


# --- Positions ---------------------------------------------------------------------------

POSITIONS_TEXT = """\
# comment line
dagwright: 1
nodes:
  fetch:
    type: http
    headers: {Accept: text/plain, X-Id: "7"}
  summarize:
    needs:
      - fetch
      - other
    messages:
      - role: user
        content: hi
"""


def test_positions_of_nested_keys_and_values(parser_class):
    source_map = load_text(POSITIONS_TEXT, "flow.yaml").source_map

    assert source_map.value(()) == Position(2, 1)
    assert source_map.key(()) is None
    assert source_map.key(("dagwright",)) == Position(2, 1)
    assert source_map.value(("dagwright",)) == Position(2, 12)
    assert source_map.key(("nodes", "fetch")) == Position(4, 3)
    assert source_map.value(("nodes", "fetch")) == Position(5, 5)
    assert source_map.key(("nodes", "fetch", "type")) == Position(5, 5)
    assert source_map.value(("nodes", "fetch", "type")) == Position(5, 11)
    assert source_map.value(("nodes", "fetch", "headers")) == Position(6, 14)
    assert source_map.key(("nodes", "fetch", "headers", "X-Id")) == Position(6, 35)
    assert source_map.value(("nodes", "fetch", "headers", "X-Id")) == Position(6, 41)


def test_positions_of_list_items(parser_class):
    source_map = load_text(POSITIONS_TEXT, "flow.yaml").source_map

    assert source_map.key(("nodes", "summarize", "needs", 0)) is None
    assert source_map.value(("nodes", "summarize", "needs", 0)) == Position(9, 9)
    assert source_map.value(("nodes", "summarize", "needs", 1)) == Position(10, 9)
    assert source_map.value(("nodes", "summarize", "messages", 0)) == Position(12, 9)
    assert source_map.key(("nodes", "summarize", "messages", 0, "content")) == Position(13, 9)
    assert source_map.value(("nodes", "summarize", "messages", 0, "content")) == Position(13, 18)


def test_nearest_falls_back_to_prefix():
    source_map = load_text(POSITIONS_TEXT, "flow.yaml").source_map

    assert source_map.nearest(("nodes", "fetch", "type")) == Position(5, 11)
    assert source_map.nearest(("nodes", "fetch", "timeout")) == Position(5, 5)
    assert source_map.nearest(("nodes", "summarize", "needs", 7)) == Position(9, 7)
    assert source_map.nearest(("unknown", "deeper")) == Position(2, 1)
    assert source_map.value(("nodes", "missing")) is None


def test_nearest_without_any_position():
    source_map = loader.SourceMap({}, {}, {}, {}, {})

    assert source_map.nearest(("a",)) == Position(1, 1)


def test_positions_count_characters_not_bytes():
    source_map = load_text("é: ü\nxé: [1, 2]\n", "flow.yaml").source_map

    assert source_map.value(("é",)) == Position(1, 4)
    assert source_map.value(("xé", 1)) == Position(2, 9)


def test_positions_after_utf8_bom():
    document = load_text(b"\xef\xbb\xbfa: 1\nb: 2\n", "flow.yaml")

    assert document.data == {"a": 1, "b": 2}
    assert document.source_map.key(("a",)) == Position(1, 1)
    assert document.source_map.key(("b",)) == Position(2, 1)


def test_load_file_keeps_path_as_given():
    path = FILES / "workflow.yaml"

    document = load_file(path)

    assert isinstance(document, LoadedDocument)
    assert document.path == str(path)
    assert document.data["nodes"]["summarize"]["prompt"] == "Summarize this.\n"
    assert document.data["defaults"] == {"timeout": "30s"}
    assert document.source_map.key(("nodes", "summarize", "needs")) == Position(12, 5)


# --- Anchors and aliases -----------------------------------------------------------------


def test_alias_copies_value_and_positions(parser_class):
    text = "base: &retry\n  max_attempts: 3\n  backoff: 2.0\nnode:\n  retry: *retry\n"

    document = load_text(text, "flow.yaml")

    assert document.data["node"]["retry"] == {"max_attempts": 3, "backoff": 2.0}
    assert document.data["node"]["retry"] is not document.data["base"]
    assert document.source_map.value(("node", "retry")) == Position(5, 10)
    assert document.source_map.key(("node", "retry", "backoff")) == Position(3, 3)
    assert document.source_map.value(("node", "retry", "backoff")) == Position(3, 12)
    assert document.source_map.child_keys(("node", "retry")) == ["max_attempts", "backoff"]


def test_alias_of_scalar_keeps_text():
    document = load_text("a: &n 1e3\nb: *n\n", "flow.yaml")

    assert document.data["b"] == 1000.0
    assert document.source_map.scalar_text(("b",)) == "1e3"
    assert document.source_map.value(("b",)) == Position(2, 4)


def test_alias_used_as_key():
    document = load_text("a: &k name\n*k : value\n", "flow.yaml")

    assert document.data == {"a": "name", "name": "value"}


def test_alias_bomb_rejected(parser_class):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        previous, current = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{current}: &{current} [" + ", ".join([f"*{previous}"] * 10) + "]")

    diagnostic = only_diagnostic("\n".join(lines) + "\n")

    assert diagnostic.code == "too-large"
    assert f"more than {MAX_NODES:,} values" in diagnostic.message
    assert "alias" in diagnostic.message
    assert diagnostic.line == 6


def test_undefined_alias():
    diagnostic = only_diagnostic("a: 1\nb: *missing\n")

    assert diagnostic.code == "alias"
    assert (diagnostic.line, diagnostic.column) == (2, 4)
    assert "*missing refers to no anchor" in diagnostic.message


def test_recursive_alias():
    diagnostic = only_diagnostic("a: &loop\n  - *loop\n")

    assert diagnostic.code == "alias"
    assert (diagnostic.line, diagnostic.column) == (2, 5)
    assert "inside the value it refers to" in diagnostic.message


def test_merge_key_rejected():
    diagnostic = only_diagnostic("base: &b {x: 1}\nnode:\n  <<: *b\n  y: 2\n")

    assert diagnostic.code == "merge-key"
    assert (diagnostic.line, diagnostic.column) == (3, 3)
    assert "merge keys ('<<') are not supported" in diagnostic.message


def test_quoted_merge_key_is_plain_key():
    document = load_text("'<<': 1\n", "flow.yaml")

    assert document.data == {"<<": 1}


# --- Duplicate and non-string keys -------------------------------------------------------


def test_duplicate_keys_all_reported(parser_class):
    text = "name: a\nnodes:\n  x:\n    timeout: 1s\n    type: http\n    timeout: 2s\n  x: {}\nname: b\n"

    diagnostics = load_error(text).diagnostics

    assert [(d.line, d.column, d.code) for d in diagnostics] == [
        (6, 5, "duplicate-key"),
        (7, 3, "duplicate-key"),
        (8, 1, "duplicate-key"),
    ]
    assert diagnostics[0].message == "duplicate key 'timeout' (first defined at line 4); remove one of them"
    assert diagnostics[1].message == "duplicate key 'x' (first defined at line 3); remove one of them"
    assert diagnostics[2].message == "duplicate key 'name' (first defined at line 1); remove one of them"
    assert all(d.file == "flow.yaml" for d in diagnostics)


def test_duplicate_key_quoted_and_plain():
    diagnostic = only_diagnostic("a: 1\n'a': 2\n")

    assert diagnostic.code == "duplicate-key"
    assert (diagnostic.line, diagnostic.column) == (2, 1)


def test_duplicate_key_in_flow_mapping():
    diagnostic = only_diagnostic("a: {b: 1, c: 2, b: 3}\n")

    assert (diagnostic.line, diagnostic.column) == (1, 17)


def test_load_error_is_compile_error():
    error = load_error("a: 1\na: 2\n")

    assert isinstance(error, CompileError)
    assert str(error) == "flow.yaml:2:1: duplicate key 'a' (first defined at line 1); remove one of them"


NON_STRING_KEYS = [
    ("1: x\n", 1, 1, "'1' is read as an integer"),
    ("a:\n  true: x\n", 2, 3, "'true' is read as a boolean"),
    ("a:\n  - 1.5: x\n", 2, 5, "'1.5' is read as a number"),
    ("~: x\n", 1, 1, "'~' is read as null"),
    ("!!int 7: x\n", 1, 1, "'7' is read as an integer"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragment"), NON_STRING_KEYS)
def test_non_string_key_rejected(text, line, column, fragment):
    diagnostic = only_diagnostic(text)

    assert diagnostic.code == "non-string-key"
    assert (diagnostic.line, diagnostic.column) == (line, column)
    assert "mapping keys must be strings" in diagnostic.message
    assert fragment in diagnostic.message
    assert "quote it" in diagnostic.message


def test_collection_key_rejected():
    diagnostic = only_diagnostic("a: 1\n? [x, y]\n: 2\n")

    assert diagnostic.code == "non-string-key"
    assert (diagnostic.line, diagnostic.column) == (2, 3)
    assert "this key is a list" in diagnostic.message


def test_quoted_number_key_accepted():
    document = load_text("'1': x\n\"true\": y\n", "flow.yaml")

    assert document.data == {"1": "x", "true": "y"}


# --- Tags --------------------------------------------------------------------------------

TAG_ERRORS = [
    ("a: !!python/object/apply:os.system ['ls']\n", 1, 4, "unsupported-tag", "!!python/object/apply"),
    ("a: !!python/name:os.system ''\n", 1, 4, "unsupported-tag", "!!python/name:os.system"),
    ("a: !custom x\n", 1, 4, "unsupported-tag", "!custom is not supported"),
    ("a: !!binary aGk=\n", 1, 4, "unsupported-tag", "!!binary is not supported"),
    ("a: !!timestamp 2024-01-01\n", 1, 4, "unsupported-tag", "!!timestamp is not supported"),
    ("a: !!set {x}\n", 1, 4, "unsupported-tag", "!!set is not supported"),
    ("a: !!map [1]\n", 1, 4, "unsupported-tag", "!!map cannot be used on a list"),
    ("a: !!seq x\n", 1, 4, "unsupported-tag", "!!seq cannot be used on a scalar"),
    ("a: !!int abc\n", 1, 4, "invalid-value", "'abc' is not a valid !!int value"),
    ("a: !!bool yes\n", 1, 4, "invalid-value", "'yes' is not a valid !!bool value"),
    ("a: !!null x\n", 1, 4, "invalid-value", "'x' is not a valid !!null value"),
    ("a: !!float 1_0\n", 1, 4, "invalid-value", "'1_0' is not a valid !!float value"),
]


@pytest.mark.parametrize(("text", "line", "column", "code", "fragment"), TAG_ERRORS)
def test_tag_errors(text, line, column, code, fragment):
    diagnostic = only_diagnostic(text)

    assert diagnostic.code == code
    assert (diagnostic.line, diagnostic.column) == (line, column)
    assert fragment in diagnostic.message


def test_tags_on_collections_accepted():
    document = load_text("a: !!map {b: !!seq [1]}\n", "flow.yaml")

    assert document.data == {"a": {"b": [1]}}


def test_integer_with_too_many_digits():
    diagnostic = only_diagnostic("a: " + "9" * 5000 + "\n")

    assert diagnostic.code == "invalid-value"
    assert (diagnostic.line, diagnostic.column) == (1, 4)
    assert "5000 digits" in diagnostic.message


# --- Bad input -----------------------------------------------------------------------------

BAD_INPUTS = [
    # (id, text, line, column, code, message fragment)
    ("empty", "", 1, 1, "empty-file", "the file is empty; a workflow starts with `dagwright: 1`"),
    ("whitespace", "  \n\n", 1, 1, "empty-file", "the file is empty"),
    ("comments only", "# one\n# two\n", 1, 1, "empty-file", "the file is empty"),
    ("bare document marker", "---\n", 1, 1, "empty-file", "the file is empty"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1, 1, "encoding", "invalid UTF-8 byte 0x89"),
    ("nul byte", "a: 1\nb: x\x00y\n", 2, 5, "encoding", "contains a NUL byte"),
    ("latin-1", b"a: 1\nb: caf\xe9\n", 2, 7, "encoding", "at line 2, column 7; the file must be UTF-8"),
    ("bad byte after multibyte", b"x: \xc3\xa9\xff\n", 1, 5, "encoding", "invalid UTF-8 byte 0xff"),
    ("utf-16", "a: 1\n".encode("utf-16"), 1, 1, "encoding", "UTF-16 or UTF-32"),
    ("control character", "a: x\x07\n", 1, 5, "invalid-character", "U+0007 is not allowed"),
    (
        "tab indentation",
        "nodes:\n  a:\n\ttype: http\n",
        3,
        1,
        "yaml-syntax",
        "tabs are not allowed for indentation in YAML; use spaces",
    ),
    ("tab after spaces", "nodes:\n  a:\n    type: http\n  \t  url: x\n", 4, 3, "yaml-syntax", "tabs are not"),
    ("top-level list", "- a\n- b\n", 1, 1, "not-a-mapping", "the top level must be a mapping"),
    ("top-level list after comment", "# c\n- a\n", 2, 1, "not-a-mapping", "contains a list"),
    ("top-level scalar", "hello\n", 1, 1, "not-a-mapping", "contains the scalar 'hello'"),
    ("top-level null", "~\n", 1, 1, "not-a-mapping", "the top level must be a mapping"),
    ("two documents", "a: 1\n---\nb: 2\n", 2, 1, "multiple-documents", "second YAML document"),
    ("two documents, markers", "---\na: 1\n---\nb: 2\n", 3, 1, "multiple-documents", "one workflow per file"),
    ("mapping value in value", "a: b: c\n", 1, 5, "yaml-syntax", "mapping values are not allowed"),
    ("unclosed quote", "a: 'abc\n", 2, 1, "yaml-syntax", "found unexpected end of stream"),
    ("bad indentation", "a:\n  b: 1\n c: 2\n", 3, 2, "yaml-syntax", "invalid YAML"),
    ("reserved character", "a: @x\n", 1, 4, "yaml-syntax", "quote the value"),
]


@pytest.mark.parametrize(
    ("text", "line", "column", "code", "fragment"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_located(parser_class, text, line, column, code, fragment):
    diagnostic = only_diagnostic(text)

    assert diagnostic.code == code
    assert diagnostic.file == "flow.yaml"
    assert (diagnostic.line, diagnostic.column) == (line, column)
    assert fragment in diagnostic.message


def test_syntax_error_keeps_earlier_duplicates():
    diagnostics = load_error("a: 1\na: 2\nb: [1, 2\n").diagnostics

    assert [d.code for d in diagnostics] == ["duplicate-key", "yaml-syntax"]


def test_deep_nesting_limit(parser_class):
    text = "a: " + "[" * 100 + "]" * 100 + "\n"

    diagnostic = only_diagnostic(text)

    assert diagnostic.code == "too-deep"
    # The top-level mapping is level 1, so the list that opens level MAX_DEPTH + 1 is rejected.
    assert (diagnostic.line, diagnostic.column) == (1, 4 + MAX_DEPTH - 1)
    assert f"deeper than {MAX_DEPTH} levels" in diagnostic.message


def test_nesting_at_limit_accepted():
    depth = MAX_DEPTH - 1
    document = load_text("a: " + "[" * depth + "]" * depth + "\n", "flow.yaml")

    value = document.data["a"]
    for _ in range(depth - 1):
        value = value[0]
    assert value == []


def test_block_nesting_limit():
    lines = [" " * (2 * level) + f"k{level}:" for level in range(MAX_DEPTH + 5)]

    diagnostic = only_diagnostic("\n".join(lines) + " x\n")

    assert diagnostic.code == "too-deep"
    assert (diagnostic.line, diagnostic.column) == (MAX_DEPTH + 1, 2 * MAX_DEPTH + 1)


def test_hundred_thousand_brackets(parser_class):
    diagnostic = only_diagnostic("a: " + "[" * 100_000)

    assert diagnostic.code == "too-deep"
    assert diagnostic.line == 1


def test_alias_copy_counts_toward_depth():
    depth = MAX_DEPTH - 2
    text = "a: &deep " + "[" * depth + "]" * depth + "\nb:\n  c:\n    d: *deep\n"

    diagnostic = only_diagnostic(text)

    assert diagnostic.code == "too-deep"
    assert (diagnostic.line, diagnostic.column) == (4, 8)


def test_five_megabyte_file_rejected(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"a: " + b"x" * 5_000_000 + b"\n")

    with pytest.raises(LoadError) as info:
        load_file(path)

    diagnostic = info.value.diagnostics[0]
    assert diagnostic.code == "too-large"
    assert diagnostic.file == str(path)
    assert (diagnostic.line, diagnostic.column) == (1, 1)
    assert "5,000,004 bytes" in diagnostic.message
    assert f"{MAX_FILE_BYTES:,}-byte limit" in diagnostic.message


def test_five_megabyte_text_rejected():
    diagnostic = only_diagnostic("a: " + "é" * 2_500_000)

    assert diagnostic.code == "too-large"
    assert "5,000,003 bytes" in diagnostic.message


def test_too_many_values_rejected():
    text = "a: [" + ",".join(["1"] * (MAX_NODES + 1)) + "]\n"

    diagnostic = only_diagnostic(text)

    assert diagnostic.code == "too-large"
    assert f"more than {MAX_NODES:,} values" in diagnostic.message


def test_missing_file_is_load_error(tmp_path):
    path = tmp_path / "absent.yaml"

    with pytest.raises(LoadError) as info:
        load_file(path)

    diagnostic = info.value.diagnostics[0]
    assert diagnostic.code == "io-error"
    assert diagnostic.file == str(path)
    assert "cannot read the file" in diagnostic.message


def test_random_input_raises_only_load_error():
    generator = random.Random(20240601)
    seed_text = POSITIONS_TEXT + "retry: &r {max_attempts: 3}\nother: *r\nlist: [a, 'b', \"c\", {d: e}]\n"
    alphabet = ":-[]{}&*!|>'\"#,?\t\n %@`\\x"
    for _ in range(400):
        characters = list(seed_text)
        for _ in range(generator.randint(1, 6)):
            position = generator.randrange(len(characters))
            if generator.random() < 0.5:
                characters[position] = generator.choice(alphabet)
            else:
                characters.insert(position, generator.choice(alphabet))
        text = "".join(characters)
        try:
            result = load_text(text, "fuzz.yaml")
        except LoadError as exc:
            assert exc.diagnostics, text
            assert all(d.line >= 1 and d.column >= 1 for d in exc.diagnostics), text
        else:
            assert isinstance(result.data, dict), text


def test_random_bytes_raise_only_load_error():
    generator = random.Random(7)
    for size in range(1, 300, 3):
        data = bytes(generator.randrange(256) for _ in range(size))
        for name in ("noise.yaml", "noise.json"):
            try:
                load_text(data, name)
            except LoadError as exc:
                assert exc.diagnostics


# --- JSON ----------------------------------------------------------------------------------


def test_json_file_with_tab_indentation(parser_class):
    document = load_file(FILES / "tabs.json")

    assert document.data == {
        "dagwright": 1,
        "name": "tabbed",
        "nodes": {
            "fetch": {"type": "http", "url": "https://example.test/a\tb", "retry": {"max_attempts": 3}},
        },
    }
    assert document.source_map.key(("nodes", "fetch")) == Position(5, 3)
    assert document.source_map.value(("nodes", "fetch", "retry")) == Position(8, 13)
    assert document.source_map.value(("nodes", "fetch", "retry", "max_attempts")) == Position(8, 30)


def test_json_duplicate_key(parser_class):
    text = '{\n\t"name": "a",\n\t"nodes": {"x": {"type": "http", "type": "llm"}},\n\t"name": "b"\n}\n'

    diagnostics = load_error(text, "flow.json").diagnostics

    assert [(d.line, d.column, d.code) for d in diagnostics] == [
        (3, 34, "duplicate-key"),
        (4, 2, "duplicate-key"),
    ]
    assert "duplicate key 'type' (first defined at line 3)" in diagnostics[0].message
    assert "duplicate key 'name' (first defined at line 2)" in diagnostics[1].message


def test_json_compact_and_escapes():
    text = '{"a":1,"b":"x\\/y\\u00e9","c":[true,false,null,-0.5e2,10]}'

    document = load_text(text, "flow.json")

    assert document.data == {"a": 1, "b": "x/yé", "c": [True, False, None, -50.0, 10]}
    assert document.source_map.value(("c", 3)) == Position(1, 46)


def test_json_surrogate_pair_escapes_keep_columns():
    text = '{\n\t"emoji": "\\ud83d\\ude00 and \\uD83D\\uDE80", "after": [1,\t2]\n}\n'

    document = load_text(text, "flow.JSON")

    assert document.data["emoji"] == "\U0001f600 and \U0001f680"
    assert document.source_map.key(("after",)) == Position(2, 44)
    assert document.source_map.value(("after", 1)) == Position(2, 57)


def test_json_escaped_backslash_before_u():
    document = load_text('{"path": "C:\\\\ud83d\\\\ude00"}', "flow.json")

    assert document.data == {"path": "C:\\ud83d\\ude00"}


def test_json_missing_comma_uses_json_message():
    diagnostic = only_diagnostic('{\n\t"a": 1\n\t"b": 2\n}\n', "flow.json")

    assert diagnostic.code == "json-syntax"
    assert (diagnostic.line, diagnostic.column) == (3, 2)
    assert diagnostic.message == "invalid JSON: Expecting ',' delimiter; fix the JSON syntax at this position"


def test_json_trailing_comma_accepted_as_yaml():
    # The file is read as YAML flow syntax, which allows a trailing comma.
    document = load_text('{"a": 1,}', "flow.json")

    assert document.data == {"a": 1}


def test_json_unclosed_object():
    diagnostic = only_diagnostic('{"a": 1\n', "flow.json")

    assert diagnostic.code == "json-syntax"
    assert (diagnostic.line, diagnostic.column) == (2, 1)
    assert "Expecting ',' delimiter" in diagnostic.message


def test_json_top_level_array_rejected():
    diagnostic = only_diagnostic("[1, 2]", "flow.json")

    assert diagnostic.code == "not-a-mapping"
    assert (diagnostic.line, diagnostic.column) == (1, 1)
