"""Read a YAML or JSON workflow file into plain Python values plus the source position of each.

The compiler reports errors as `file:line:column`, so this module builds the data itself from
PyYAML's event stream (libyaml's C parser when installed) instead of calling `yaml.load`. Building
from events also puts every rule below under this module's control:

- Plain (unquoted) scalars follow the YAML 1.2 core schema. Only `true`/`false` (three
  spellings each) are booleans, and `no`, `yes`, `on`, `off`, `y` and `n` stay strings.
  `null`, `Null`, `NULL`, `~` and an empty value are null. Integers are `[-+]?[0-9]+`
  (decimal, so `010` and `0755` are 10 and 755, because the core schema has no implicit
  octal), `0o17` and `0x1F`. Floats include `1e3`, `.5`, `.inf` and `.nan`. Everything else,
  including `1_000`, `12:30` and `2024-01-01`, is a string. Quoted scalars are always strings.
  `SourceMap.scalar_text` returns the source text of plain scalars that were read as non-strings,
  so a caller that expects a string can turn `1e3` back into "1e3". A `%YAML 1.1` directive does
  not change these rules.
- Only the tags `!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!map`, `!!seq` and the
  non-specific `!` are accepted. Any other tag, including `!!python/...`, is an error.
- Anchors and aliases work. Each alias becomes an independent copy of the anchored value, and
  positions inside that copy point at the anchored text. The total number of values, copies
  included, is capped by `MAX_NODES`, which stops "billion laughs" documents.
- Merge keys (`<<`) are rejected. They belong to YAML 1.1, not to the 1.2 core schema.
- Duplicate keys and non-string keys are errors, and every one in the file is reported.
- A `.json` file goes through the same parser because JSON is YAML 1.2 flow syntax. Before
  parsing, `\\uD83D\\uDE00` surrogate-pair escapes become `\\U0001F600`, because libyaml
  rejects them, and columns are mapped back to the original text. Tabs outside strings become
  spaces as a precaution, since libyaml 0.2.6 accepted every JSON tab position tested but
  limits tabs in block context. A `.json` file that still fails is reported with the stdlib
  `json` module's message when that module rejects it too.

Every problem in the input raises `LoadError`. Each of its diagnostics carries file, line and
column, and its message names the problem and the fix.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from dagwright.interpreter.diagnostics import CompileError, Diagnostic

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Largest accepted file, in bytes. A synthetic 1,000-node workflow (6,000 lines) is 154 KB,
so 4 MiB leaves room for long prompts and inline schemas but rejects data files."""

MAX_DEPTH = 64
"""Deepest accepted nesting of mappings and lists. The top-level mapping is depth 1."""

MAX_NODES = 250_000
"""Maximum number of values (scalars, mappings and lists, alias copies included) in one
document. The synthetic 1,000-node workflow has 9,000, so the cap stops alias bombs and data
dumps, not workflows."""

# libyaml when it is installed, else PyYAML's pure-Python parser. Both emit the same event types,
# but their syntax error messages differ.
_PARSER_CLASS: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG_PREFIX = "tag:yaml.org,2002:"
_STR_TAG = _TAG_PREFIX + "str"
_INT_TAG = _TAG_PREFIX + "int"
_FLOAT_TAG = _TAG_PREFIX + "float"
_BOOL_TAG = _TAG_PREFIX + "bool"
_NULL_TAG = _TAG_PREFIX + "null"
_MAP_TAG = _TAG_PREFIX + "map"
_SEQ_TAG = _TAG_PREFIX + "seq"
_NON_SPECIFIC_TAG = "!"

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_DECIMAL_INT = re.compile(r"[-+]?[0-9]+")
_OCTAL_INT = re.compile(r"0o[0-7]+")
_HEX_INT = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INFINITIES = {
    f"{sign}{dot_inf}": float(f"{sign or '+'}inf")
    for sign in ("", "+", "-")
    for dot_inf in (".inf", ".Inf", ".INF")
}
_NANS = frozenset({".nan", ".NaN", ".NAN"})
# A plain scalar that starts with none of these characters can only be a string.
_NON_STRING_STARTS = frozenset("0123456789+-.~nNtTfF")

_STYLE_NAMES = {
    None: "plain",
    "": "plain",
    "'": "single-quoted",
    '"': "double-quoted",
    "|": "literal",
    ">": "folded",
}

# Characters outside YAML 1.2's printable set, which allows tab, line breaks, printable ASCII,
# NEL and Unicode from U+00A0 except surrogates, U+FFFE and U+FFFF.
_DISALLOWED_CHARACTER = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_OR_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")

# A JSON string literal, or a tab outside one.
_JSON_STRING_OR_TAB = re.compile(r'"(?:[^"\\\n]|\\.)*"|\t')
# A \u escape pair that encodes one character outside the Basic Multilingual Plane, or any other
# escape (matched so that `\\ud83d`, an escaped backslash, is never read as the start of a pair).
_JSON_ESCAPE = re.compile(r"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|\\.", re.S)

_EMPTY_FILE_MESSAGE = "the file is empty; a workflow starts with `dagwright: 1`"


@dataclass(frozen=True)
class Position:
    """A place in a source file, with 1-based line and column (columns count characters)."""

    line: int
    column: int


DataPath = tuple[str | int, ...]
"""Location of a value: mapping keys (str) and list indexes (int) from the top level."""
_Pair = tuple[int, int]


class SourceMap:
    """Source positions of the keys and values of one loaded document, looked up by data path.

    A path is a tuple of mapping keys (str) and list indexes (int), and `()` is the top level.
    """

    def __init__(
        self,
        values: dict[DataPath, _Pair],
        keys: dict[DataPath, _Pair],
        children: dict[DataPath, list[str]],
        styles: dict[DataPath, str],
        texts: dict[DataPath, str],
    ) -> None:
        self._values = values
        self._keys = keys
        self._children = children
        self._styles = styles
        self._texts = texts

    def key(self, path: DataPath) -> Position | None:
        """Return where the mapping key of the value at `path` starts, or None for list items and `()`."""
        pair = self._keys.get(tuple(path))
        return None if pair is None else Position(*pair)

    def value(self, path: DataPath) -> Position | None:
        """Return where the value at `path` starts, or None when there is no such value."""
        pair = self._values.get(tuple(path))
        return None if pair is None else Position(*pair)

    def nearest(self, path: DataPath) -> Position:
        """Return the value position of `path`, else of its longest existing prefix, else 1:1."""
        path = tuple(path)
        for length in range(len(path), -1, -1):
            pair = self._values.get(path[:length])
            if pair is not None:
                return Position(*pair)
        return Position(1, 1)

    def child_keys(self, path: DataPath) -> list[str]:
        """Return the keys of the mapping at `path` in file order, or [] when it is not a mapping."""
        return list(self._children.get(tuple(path), ()))

    def scalar_style(self, path: DataPath) -> str | None:
        """Return how the scalar at `path` was written.

        The result is "plain", "single-quoted", "double-quoted", "literal" or "folded",
        and None when the value is a mapping or list or does not exist.
        """
        return self._styles.get(tuple(path))

    def scalar_text(self, path: DataPath) -> str | None:
        """Return the source text of a plain scalar that was read as null, bool, int or float.

        Returns None for strings, quoted or block scalars, collections and unknown paths.
        """
        return self._texts.get(tuple(path))


@dataclass
class LoadedDocument:
    """One workflow file read into plain Python values and their source positions."""

    path: str
    data: Any
    source_map: SourceMap


class LoadError(CompileError):
    """Raised when a file is not one readable YAML or JSON mapping, with every problem found.

    Diagnostic codes: yaml-syntax, json-syntax, duplicate-key, non-string-key, merge-key,
    unsupported-tag, invalid-value, alias, encoding, invalid-character, empty-file,
    multiple-documents, not-a-mapping, too-large, too-deep, io-error.
    """


def load_file(path: str | os.PathLike) -> LoadedDocument:
    """Read and load one workflow file; messages name the path as the caller gave it.

    Raises:
        LoadError: when the file cannot be read, is too large or is not a valid workflow
            document (see `load_text`).
    """
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
            size = os.fstat(stream.fileno()).st_size
    except OSError as exc:
        message = f"cannot read the file: {exc.strerror or exc}; check the path and its permissions"
        raise LoadError([Diagnostic(name, 1, 1, message, "io-error")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise LoadError([_too_large(name, max(size, len(data)))])
    return load_text(data, name)


def load_text(text: str | bytes, path: str) -> LoadedDocument:
    """Load one workflow document from `text`; `path` names the source in messages.

    A `path` ending in `.json` (any case) turns on the JSON adjustments described in the
    module docstring.

    Raises:
        LoadError: with every problem found, each located by line and column.
    """
    started = time.perf_counter()
    source = _decode(text, path)
    is_json = path.lower().endswith(".json")
    shifts: _ColumnShifts | None = None
    parse_text = source
    if is_json:
        parse_text, shifts = _adapt_json(source)

    builder = _DocumentBuilder(path, shifts)
    data = builder.build(parse_text, source, is_json)
    logger.debug(
        "loaded %s: %d values in %.1f ms", path, builder.node_count, (time.perf_counter() - started) * 1000
    )
    return LoadedDocument(path=path, data=data, source_map=builder.source_map())


# --- Text checks before parsing -----------------------------------------------------------


def _decode(text: str | bytes, path: str) -> str:
    """Return the text without a BOM, after checking size, encoding and allowed characters."""
    if isinstance(text, bytes):
        source = _decode_bytes(text, path)
    else:
        source = _check_str(text, path)
    if source.startswith("\ufeff"):
        source = source[1:]
    _check_characters(source, path)
    return source


def _decode_bytes(data: bytes, path: str) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise LoadError([_too_large(path, len(data))])
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    elif data.startswith(_UTF16_OR_32_BOMS):
        message = (
            "the file is UTF-16 or UTF-32 encoded (it starts with that byte order mark); "
            "save it as UTF-8"
        )
        raise LoadError([Diagnostic(path, 1, 1, message, "encoding")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _locate_byte(data, exc.start)
        message = (
            f"invalid UTF-8 byte 0x{data[exc.start]:02x} at line {line}, column {column}; "
            "the file must be UTF-8 encoded, so re-save it as UTF-8"
        )
        raise LoadError([Diagnostic(path, line, column, message, "encoding")]) from None


def _check_str(text: str, path: str) -> str:
    # Each character takes 1 to 4 bytes in UTF-8, so most texts need no encoding to check size.
    if len(text) * 4 > MAX_FILE_BYTES:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_FILE_BYTES:
            raise LoadError([_too_large(path, size)])
    return text


def _check_characters(text: str, path: str) -> None:
    match = _DISALLOWED_CHARACTER.search(text)
    if match is None:
        return
    line, column = _locate_index(text, match.start())
    character = match.group()
    if character == "\x00":
        message = (
            "the file contains a NUL byte, so it looks like a binary file; "
            "a workflow file must be UTF-8 text"
        )
        code = "encoding"
    elif "\ud800" <= character <= "\udfff":
        message = (
            f"the text contains the unpaired surrogate U+{ord(character):04X}; "
            "the file must be valid UTF-8"
        )
        code = "encoding"
    else:
        message = (
            f"the control character U+{ord(character):04X} is not allowed in YAML; "
            f'remove it, or write it as the escape "\\x{ord(character):02x}" inside a double-quoted string'
        )
        code = "invalid-character"
    raise LoadError([Diagnostic(path, line, column, message, code)])


def _too_large(path: str, size: int) -> Diagnostic:
    message = (
        f"the file is {size:,} bytes, more than the {MAX_FILE_BYTES:,}-byte limit; "
        "split it into smaller workflows (a `workflow` node runs another file)"
    )
    return Diagnostic(path, 1, 1, message, "too-large")


def _locate_byte(data: bytes, offset: int) -> _Pair:
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", "replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


def _locate_index(text: str, index: int) -> _Pair:
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


# --- JSON adjustments ---------------------------------------------------------------------


class _ColumnShifts:
    """Column offsets from the adapted JSON text back to the original text.

    Each 0-based line maps to sorted pairs (adapted column where a shift starts, total shift).
    """

    def __init__(self) -> None:
        self._lines: dict[int, list[_Pair]] = {}

    def add(self, line: int, column: int, shift: int) -> None:
        """Record that original columns from adapted `column` on are `shift` further right."""
        total = self.total(line) + shift
        self._lines.setdefault(line, []).append((column, total))

    def total(self, line: int) -> int:
        """Return how many columns the 0-based line has lost so far."""
        entries = self._lines.get(line)
        return entries[-1][1] if entries else 0

    def original(self, line: int, column: int) -> _Pair:
        """Return the 1-based position in the original text of 0-based (line, column)."""
        entries = self._lines.get(line)
        if entries:
            index = bisect.bisect_right(entries, (column, float("inf"))) - 1
            if index >= 0:
                column += entries[index][1]
        return line + 1, column + 1


def _adapt_json(text: str) -> tuple[str, _ColumnShifts | None]:
    """Rewrite the JSON constructs libyaml rejects and return the text with its column map."""
    text = _JSON_STRING_OR_TAB.sub(_replace_tab_or_string, text)
    shifts = _ColumnShifts()
    pieces: list[str] = []
    last = 0
    for match in _JSON_ESCAPE.finditer(text):
        if match.group(1) is None:
            continue
        high, low = int(match.group(1), 16), int(match.group(2), 16)
        character = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
        pieces.append(text[last : match.start()])
        pieces.append(f"\\U{character:08X}")
        last = match.end()

        # The 12-character pair becomes a 10-character escape, so later columns on this
        # line sit 2 further left in the adapted text than in the original.
        line, column = _locate_index(text, match.end())
        adapted_column = column - 1 - shifts.total(line - 1) - 2
        shifts.add(line - 1, adapted_column, 2)
    if not pieces:
        return text, None
    pieces.append(text[last:])
    return "".join(pieces), shifts


def _replace_tab_or_string(match: re.Match[str]) -> str:
    # JSON allows tabs between tokens but libyaml rejects some of them. One space keeps columns.
    return " " if match.group() == "\t" else match.group()


# --- Building values from events ----------------------------------------------------------


class _Fatal(Exception):
    """Raised to stop building. Its diagnostic is reported with those collected so far."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


class _ScalarError(Exception):
    """Raised for a scalar that cannot be read under its tag. The message is shown to the user."""

    def __init__(self, message: str, code: str = "invalid-value") -> None:
        super().__init__(message)
        self.code = code


_NO_KEY = object()


@dataclass
class _Frame:
    """A mapping or list that is still open, and where its next child goes."""

    container: dict[str, Any] | list[Any]
    path: DataPath
    is_map: bool
    anchor: str | None
    order_start: int
    count_start: int
    height: int = 1
    key: Any = _NO_KEY
    key_position: _Pair = (1, 1)
    first_lines: dict[str, int] = field(default_factory=dict)


@dataclass
class _Anchor:
    """A value with an `&anchor`, and where its positions sit in the builder's path order."""

    value: Any
    path: DataPath | None
    order_start: int
    order_end: int = -1
    size: int = 1
    height: int = 0
    complete: bool = False
    style: str | None = None
    text: str | None = None


class _DocumentBuilder:
    """Consumer of parser events that builds one document's Python value and its positions."""

    def __init__(self, path: str, shifts: _ColumnShifts | None) -> None:
        self._file = path
        self._shifts = shifts
        self._diagnostics: list[Diagnostic] = []
        self._stack: list[_Frame] = []
        self._anchors: dict[str, _Anchor] = {}
        self._values: dict[DataPath, _Pair] = {}
        self._keys: dict[DataPath, _Pair] = {}
        self._children: dict[DataPath, list[str]] = {}
        self._styles: dict[DataPath, str] = {}
        self._texts: dict[DataPath, str] = {}
        # Value paths in the order they started, so an anchored value's paths are one slice.
        self._order: list[DataPath] = []
        self._root: dict[str, Any] | None = None
        self.node_count = 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            ScalarEvent: self._on_scalar,
            AliasEvent: self._on_alias,
            MappingStartEvent: self._on_mapping_start,
            SequenceStartEvent: self._on_sequence_start,
            MappingEndEvent: self._on_collection_end,
            SequenceEndEvent: self._on_collection_end,
        }

    def source_map(self) -> SourceMap:
        return SourceMap(self._values, self._keys, self._children, self._styles, self._texts)

    def build(self, parse_text: str, source: str, is_json: bool) -> dict[str, Any]:
        """Parse `parse_text` and return the top-level mapping, or raise LoadError."""
        parser = None
        try:
            parser = _PARSER_CLASS(parse_text)
            self._read_stream(parser)
        except _Fatal as exc:
            self._diagnostics.append(exc.diagnostic)
        except yaml.MarkedYAMLError as exc:
            self._diagnostics.append(_syntax_diagnostic(exc, self._file, source, self._shifts, is_json))
        except yaml.YAMLError as exc:
            # NOTE: after the checks in `_decode` no unmarked parser error is known to occur.
            # This branch still turns one into a LoadError located at 1:1.
            self._diagnostics.append(Diagnostic(self._file, 1, 1, f"invalid YAML: {exc}", "yaml-syntax"))
        finally:
            if parser is not None:
                parser.dispose()
        if self._diagnostics:
            raise LoadError(self._diagnostics)
        assert self._root is not None
        return self._root

    def _position(self, mark: Any) -> _Pair:
        if self._shifts is None:
            return mark.line + 1, mark.column + 1
        return self._shifts.original(mark.line, mark.column)

    def _fatal(self, mark: Any, message: str, code: str) -> _Fatal:
        line, column = self._position(mark)
        return _Fatal(Diagnostic(self._file, line, column, message, code))

    def _report(self, mark_or_pair: Any, message: str, code: str) -> None:
        line, column = mark_or_pair if isinstance(mark_or_pair, tuple) else self._position(mark_or_pair)
        self._diagnostics.append(Diagnostic(self._file, line, column, message, code))

    # Document structure

    def _read_stream(self, parser: Any) -> None:
        parser.get_event()  # StreamStartEvent
        event = parser.get_event()
        if isinstance(event, StreamEndEvent):
            raise _Fatal(Diagnostic(self._file, 1, 1, _EMPTY_FILE_MESSAGE, "empty-file"))
        self._read_root(parser)
        parser.get_event()  # DocumentEndEvent
        event = parser.get_event()
        if isinstance(event, DocumentStartEvent):
            message = (
                "the file contains a second YAML document here; "
                "keep one workflow per file and remove the `---`"
            )
            raise self._fatal(event.start_mark, message, "multiple-documents")

    def _read_root(self, parser: Any) -> None:
        event = parser.get_event()
        if not isinstance(event, MappingStartEvent):
            raise self._not_a_mapping(event)
        self._on_mapping_start(event)
        self._root = self._stack[0].container  # type: ignore[assignment]

        handlers = self._handlers
        stack = self._stack
        get_event = parser.get_event
        while stack:
            event = get_event()
            handlers[type(event)](event)

    def _not_a_mapping(self, event: Any) -> _Fatal:
        if isinstance(event, ScalarEvent) and event.implicit[0] and event.value == "":
            return _Fatal(Diagnostic(self._file, 1, 1, _EMPTY_FILE_MESSAGE, "empty-file"))
        if isinstance(event, SequenceStartEvent):
            found = "a list"
        elif isinstance(event, ScalarEvent):
            found = f"the scalar {event.value[:40]!r}"
        else:
            found = "an alias"
        message = (
            f"the top level must be a mapping, but the file contains {found}; "
            "a workflow starts with `dagwright: 1`"
        )
        return self._fatal(event.start_mark, message, "not-a-mapping")

    # Placing values

    def _place(self, frame: _Frame, value: Any, position: _Pair) -> DataPath:
        """Attach `value` as the next child of `frame`, record its position and return its path."""
        if frame.is_map:
            path = frame.path + (frame.key,)
            frame.container[frame.key] = value  # type: ignore[index]
            self._keys[path] = frame.key_position
            frame.key = _NO_KEY
        else:
            path = frame.path + (len(frame.container),)
            frame.container.append(value)  # type: ignore[union-attr]
        self._values[path] = position
        self._order.append(path)
        return path

    def _count(self, added: int, mark: Any, via_alias: bool) -> None:
        self.node_count += added
        if self.node_count <= MAX_NODES:
            return
        if via_alias:
            message = (
                f"aliases expand this document to more than {MAX_NODES:,} values; "
                "reduce the use of aliases (this looks like an alias bomb)"
            )
        else:
            message = f"the document has more than {MAX_NODES:,} values; split it into smaller workflows"
        raise self._fatal(mark, message, "too-large")

    # Scalars

    def _on_scalar(self, event: ScalarEvent) -> None:
        frame = self._stack[-1]
        if frame.is_map and frame.key is _NO_KEY:
            self._accept_scalar_key(frame, event)
            return

        self._count(1, event.start_mark, via_alias=False)
        value, text = self._scalar_value(event)
        path = self._place(frame, value, self._position(event.start_mark))
        style = _STYLE_NAMES.get(event.style, "plain")
        self._styles[path] = style
        if text is not None:
            self._texts[path] = text
        if event.anchor is not None:
            self._anchors[event.anchor] = _Anchor(
                value, path, len(self._order) - 1, len(self._order), complete=True, style=style, text=text
            )

    def _scalar_value(self, event: ScalarEvent) -> tuple[Any, str | None]:
        """Return the scalar's value and, for a plain scalar read as a non-string, its text."""
        text = event.value
        try:
            # Both parsers flag `! 42` as plain-implicit, but the `!` tag means "a string".
            if event.tag == _NON_SPECIFIC_TAG:
                return text, None
            if event.implicit[0]:
                value = _resolve_plain(text)
                return value, (None if isinstance(value, str) else text)
            if event.tag is None:
                return text, None
            return _resolve_tagged(event.tag, text), None
        except _ScalarError as exc:
            self._report(event.start_mark, str(exc), exc.code)
            return text, None

    def _accept_scalar_key(self, frame: _Frame, event: ScalarEvent) -> None:
        position = self._position(event.start_mark)
        key, _ = self._scalar_value(event)
        valid = isinstance(key, str)
        if not valid:
            self._report(position, _non_string_key_message(event.value, key), "non-string-key")
            key = event.value
        elif event.implicit[0] and event.tag is None and key == "<<":
            message = (
                "merge keys ('<<') are not supported; write the keys out, "
                "or alias a whole value (`retry: *standard_retry`)"
            )
            self._report(position, message, "merge-key")
        if event.anchor is not None:
            style = _STYLE_NAMES.get(event.style)
            self._anchors[event.anchor] = _Anchor(key, None, -1, -1, complete=True, style=style)
        self._accept_key(frame, key, position, check_duplicate=valid)

    def _accept_key(self, frame: _Frame, key: str, position: _Pair, check_duplicate: bool) -> None:
        first_line = frame.first_lines.get(key)
        if first_line is None:
            frame.first_lines[key] = position[0]
            self._children[frame.path].append(key)
        elif check_duplicate:
            message = f"duplicate key {key!r} (first defined at line {first_line}); remove one of them"
            self._report(position, message, "duplicate-key")
        frame.key = key
        frame.key_position = position

    # Mappings and lists

    def _on_mapping_start(self, event: MappingStartEvent) -> None:
        self._start_collection(event, {}, is_map=True)

    def _on_sequence_start(self, event: SequenceStartEvent) -> None:
        self._start_collection(event, [], is_map=False)

    def _start_collection(self, event: Any, container: dict[str, Any] | list[Any], is_map: bool) -> None:
        kind = "mapping" if is_map else "list"
        if self._stack and self._stack[-1].is_map and self._stack[-1].key is _NO_KEY:
            message = f"mapping keys must be strings, but this key is a {kind}; use a plain string key"
            raise self._fatal(event.start_mark, message, "non-string-key")
        if len(self._stack) + 1 > MAX_DEPTH:
            raise self._too_deep(event.start_mark)
        self._check_collection_tag(event, is_map)
        self._count(1, event.start_mark, via_alias=False)

        position = self._position(event.start_mark)
        if self._stack:
            path = self._place(self._stack[-1], container, position)
        else:
            path = ()
            self._values[path] = position
            self._order.append(path)
        if is_map:
            self._children[path] = []
        frame = _Frame(container, path, is_map, event.anchor, len(self._order) - 1, self.node_count - 1)
        if event.anchor is not None:
            # Registered before its children so that an alias inside it is seen as recursive.
            self._anchors[event.anchor] = _Anchor(container, path, frame.order_start)
        self._stack.append(frame)

    def _check_collection_tag(self, event: Any, is_map: bool) -> None:
        tag = event.tag
        if tag is None or tag == _NON_SPECIFIC_TAG or tag == (_MAP_TAG if is_map else _SEQ_TAG):
            return
        kind = "mapping" if is_map else "list"
        if tag in (_MAP_TAG, _SEQ_TAG, _STR_TAG, _INT_TAG, _FLOAT_TAG, _BOOL_TAG, _NULL_TAG):
            message = f"the tag {_tag_name(tag)} cannot be used on a {kind}; remove it"
        else:
            message = _unsupported_tag_message(tag)
        self._report(event.start_mark, message, "unsupported-tag")

    def _on_collection_end(self, event: Any) -> None:
        frame = self._stack.pop()
        if self._stack:
            parent = self._stack[-1]
            parent.height = max(parent.height, frame.height + 1)
        if frame.anchor is not None:
            anchor = self._anchors.get(frame.anchor)
            # A nested node may have redefined the same anchor name; keep the newest definition.
            if anchor is not None and anchor.value is frame.container and not anchor.complete:
                anchor.order_end = len(self._order)
                anchor.size = self.node_count - frame.count_start
                anchor.height = frame.height
                anchor.complete = True

    def _too_deep(self, mark: Any) -> _Fatal:
        message = f"mappings and lists are nested deeper than {MAX_DEPTH} levels; flatten the structure"
        return self._fatal(mark, message, "too-deep")

    # Aliases

    def _on_alias(self, event: AliasEvent) -> None:
        frame = self._stack[-1]
        is_key = frame.is_map and frame.key is _NO_KEY
        position = self._position(event.start_mark)
        anchor = self._resolve_alias(event, position)

        if is_key:
            if anchor is not None and isinstance(anchor.value, str):
                self._accept_key(frame, anchor.value, position, check_duplicate=True)
                return
            if anchor is not None:
                message = (
                    f"mapping keys must be strings, but the alias *{event.anchor} refers to "
                    "a value that is not a string; use a plain string key"
                )
                self._report(position, message, "non-string-key")
            self._accept_key(frame, f"*{event.anchor}", position, check_duplicate=False)
            return

        if anchor is None:
            self._count(1, event.start_mark, via_alias=True)
            self._place(frame, None, position)
            return
        self._insert_alias_copy(frame, anchor, event.start_mark, position)

    def _resolve_alias(self, event: AliasEvent, position: _Pair) -> _Anchor | None:
        anchor = self._anchors.get(event.anchor)
        if anchor is None:
            message = (
                f"the alias *{event.anchor} refers to no anchor; "
                f"define &{event.anchor} before this line"
            )
            self._report(position, message, "alias")
            return None
        if not anchor.complete:
            message = (
                f"the alias *{event.anchor} is inside the value it refers to; "
                "a value cannot contain itself"
            )
            self._report(position, message, "alias")
            return None
        return anchor

    def _insert_alias_copy(self, frame: _Frame, anchor: _Anchor, mark: Any, position: _Pair) -> None:
        if len(self._stack) + anchor.height > MAX_DEPTH:
            raise self._too_deep(mark)
        self._count(anchor.size, mark, via_alias=True)

        path = self._place(frame, _copy_tree(anchor.value), position)
        frame.height = max(frame.height, anchor.height + 1)
        if anchor.path is None or not isinstance(anchor.value, (dict, list)):
            if anchor.style is not None:
                self._styles[path] = anchor.style
            if anchor.text is not None:
                self._texts[path] = anchor.text
            return
        self._copy_positions(anchor, path)

    def _copy_positions(self, anchor: _Anchor, new_root: DataPath) -> None:
        """Give the paths inside an alias copy the positions of the anchored text."""
        assert anchor.path is not None
        cut = len(anchor.path)
        if anchor.path in self._children:
            self._children[new_root] = list(self._children[anchor.path])
        for old in self._order[anchor.order_start + 1 : anchor.order_end]:
            new = new_root + old[cut:]
            self._order.append(new)
            self._values[new] = self._values[old]
            if old in self._keys:
                self._keys[new] = self._keys[old]
            if old in self._children:
                self._children[new] = list(self._children[old])
            if old in self._styles:
                self._styles[new] = self._styles[old]
            if old in self._texts:
                self._texts[new] = self._texts[old]


def _copy_tree(value: Any) -> Any:
    # Depth is bounded by MAX_DEPTH, so recursion is safe here.
    if isinstance(value, dict):
        return {key: _copy_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_tree(item) for item in value]
    return value


# --- Scalar resolution (YAML 1.2 core schema) ---------------------------------------------


def _resolve_plain(text: str) -> Any:
    if not text:
        return None
    if text[0] not in _NON_STRING_STARTS:
        return text
    if text in _NULLS:
        return None
    boolean = _BOOLS.get(text)
    if boolean is not None:
        return boolean
    number = _parse_int(text)
    if number is not None:
        return number
    real = _parse_float(text)
    return text if real is None else real


def _parse_int(text: str) -> int | None:
    try:
        if _DECIMAL_INT.fullmatch(text):
            return int(text, 10)
    except ValueError:
        # Python refuses to convert more than sys.get_int_max_str_digits() digits (4300 by default).
        raise _ScalarError(
            f"the integer {text[:20]}... has {len(text)} digits, too many to read; "
            "quote it to keep it as text"
        ) from None
    if _OCTAL_INT.fullmatch(text):
        return int(text[2:], 8)
    if _HEX_INT.fullmatch(text):
        return int(text[2:], 16)
    return None


def _parse_float(text: str) -> float | None:
    if _FLOAT.fullmatch(text):
        return float(text)
    infinity = _INFINITIES.get(text)
    if infinity is not None:
        return infinity
    if text in _NANS:
        return float("nan")
    return None


def _resolve_tagged(tag: str, text: str) -> Any:
    if tag == _STR_TAG:
        return text
    if tag == _NULL_TAG and text in _NULLS:
        return None
    if tag == _BOOL_TAG and text in _BOOLS:
        return _BOOLS[text]
    if tag == _INT_TAG:
        number = _parse_int(text)
        if number is not None:
            return number
    if tag == _FLOAT_TAG:
        real = _parse_float(text)
        if real is None:
            whole = _parse_int(text)
            real = None if whole is None else float(whole)
        if real is not None:
            return real
    if tag in (_NULL_TAG, _BOOL_TAG, _INT_TAG, _FLOAT_TAG):
        raise _ScalarError(
            f"{text[:40]!r} is not a valid {_tag_name(tag)} value; fix the value or remove the tag"
        )
    if tag in (_MAP_TAG, _SEQ_TAG):
        message = f"the tag {_tag_name(tag)} cannot be used on a scalar; remove it"
        raise _ScalarError(message, "unsupported-tag")
    raise _ScalarError(_unsupported_tag_message(tag), "unsupported-tag")


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_TAG_PREFIX) :] if tag.startswith(_TAG_PREFIX) else tag


def _unsupported_tag_message(tag: str) -> str:
    return (
        f"the tag {_tag_name(tag)} is not supported; remove it "
        "(only !!str, !!int, !!float, !!bool, !!null, !!map and !!seq are allowed)"
    )


def _non_string_key_message(text: str, key: Any) -> str:
    if key is None:
        kind = "null"
    elif isinstance(key, bool):
        kind = "a boolean"
    elif isinstance(key, int):
        kind = "an integer"
    else:
        kind = "a number"
    return f"mapping keys must be strings, but the key {text!r} is read as {kind}; quote it: \"{text}\""


# --- Syntax errors -----------------------------------------------------------------------


def _syntax_diagnostic(
    exc: yaml.MarkedYAMLError, path: str, source: str, shifts: _ColumnShifts | None, is_json: bool
) -> Diagnostic:
    """Turn a PyYAML parser error into a located diagnostic with a cleaned-up message."""
    mark = exc.problem_mark or exc.context_mark
    problem = (exc.problem or "invalid YAML").strip()
    if mark is None:
        return Diagnostic(path, 1, 1, f"invalid YAML: {problem}", "yaml-syntax")
    line, column = shifts.original(mark.line, mark.column) if shifts else (mark.line + 1, mark.column + 1)

    if "nesting depth" in problem:
        message = f"mappings and lists are nested too deeply ({problem}); flatten the structure"
        return Diagnostic(path, line, column, message, "too-deep")
    if is_json:
        json_error = _json_error(path, source)
        if json_error is not None:
            return json_error
    else:
        tab_column = _indentation_tab(source, mark.line)
        if tab_column is not None:
            message = "tabs are not allowed for indentation in YAML; use spaces"
            return Diagnostic(path, line, tab_column, message, "yaml-syntax")

    message = f"invalid YAML: {problem}"
    context = exc.context_mark
    if exc.context and context is not None and (context.line, context.column) != (mark.line, mark.column):
        message += f" ({exc.context} that starts at line {context.line + 1}, column {context.column + 1})"
    return Diagnostic(path, line, column, f"{message}; {_syntax_fix(problem)}", "yaml-syntax")


def _syntax_fix(problem: str) -> str:
    if "mapping values are not allowed" in problem:
        return "quote the value if it contains ': ', or fix the indentation of this line"
    if "cannot start any token" in problem:
        return "quote the value if it starts with a character such as '@', '`' or '%'"
    if "could not find expected ':'" in problem:
        return "add the missing ':' after the key, or quote the text"
    return "check the indentation and quoting at this position"


def _indentation_tab(source: str, line_index: int) -> int | None:
    """Return the 1-based column of a tab in the leading whitespace of the 0-based line."""
    start = 0
    for _ in range(line_index):
        start = source.find("\n", start) + 1
        if start == 0:
            return None
    end = source.find("\n", start)
    line = source[start : end if end >= 0 else len(source)]
    indentation = line[: len(line) - len(line.lstrip(" \t"))]
    tab = indentation.find("\t")
    return None if tab < 0 else tab + 1


def _json_error(path: str, source: str) -> Diagnostic | None:
    """Return the stdlib json module's error for `source`, or None when it parses."""
    try:
        json.loads(source)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON: {exc.msg}; fix the JSON syntax at this position"
        return Diagnostic(path, exc.lineno, exc.colno, message, "json-syntax")
    except RecursionError:
        return None
    return None
