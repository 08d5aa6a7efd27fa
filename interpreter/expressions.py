"""Evaluate the workflow language's Jinja2 templates and expressions deterministically.

The same code runs in the CLI and compiler (parsing and static analysis) and inside the Temporal
workflow sandbox (evaluation). It performs no I/O, reads no clock and uses no randomness. The only
module-level mutable state is the compiled-template cache, which maps a source string to its
compiled form and so returns the same output for the same input.

Semantics (written to be copied into docs/dsl.md):

- Templates run in jinja2's ``ImmutableSandboxedEnvironment``. Text outside ``{{ }}`` is kept
  byte for byte, including a trailing newline.
- Native values: a string that is exactly one ``{{ expr }}``, with only whitespace around it,
  evaluates to the expression's value (mapping, list, number, bool, null or string). Any other
  template renders to a string. Inside text, mappings, lists, booleans and null are written as
  JSON (``{"a": 1}``, ``[1, 2]``, ``true``, ``null``), and strings and numbers as they are.
  Lazy sequences such as the output of ``map`` or ``range`` become lists.
- ``when:`` and ``for_each:`` take a bare expression; ``{{ expr }}`` is accepted too.
- Strict names: an unknown name, node, input, field or list index raises ExpressionError naming
  the missing piece and the expression. ``| default(x)`` and ``is defined`` still work, also at
  the end of a longer chain: ``nodes.a.output.x.y | default(0)`` gives 0 when ``x`` is missing.
- Field access: on a mapping, ``a.b`` reads the key ``b`` first and only then an attribute,
  so data keys such as ``items``, ``keys`` or ``_id`` mean the data and not a dict method.
- Skipped nodes: ``nodes.<id>.output`` of a skipped node is null, and every field or index taken
  from it is null as well, so ``nodes.a.output.text or nodes.b.output.text`` works as a join.
  That null is falsy, equal to ``none``, passes ``is none``, renders as ``null`` and is None in
  native results. Field access on an ordinary null (a node that succeeded with a null output)
  raises ExpressionError.
- Status functions: ``succeeded('id')``, ``failed('id')``, ``skipped('id')`` and
  ``cancelled('id')`` compare ``nodes.<id>.status``. ``overdue('id')`` is true for an approval
  that is still waiting after its ``remind_after``, and ``always()`` is true. Their argument
  must be a string literal, so the compiler can see the dependency.
- Determinism and safety: the ``random`` filter and the ``lipsum``, ``cycler``, ``joiner`` and
  ``namespace`` globals are removed, and there is no ``now``. Attributes starting with ``_``,
  methods that modify data, and attributes of types (``dict.update``) raise a "not allowed"
  ExpressionError. ``**`` and ``*`` refuse results that would exhaust memory.
- Added filters: ``tojson(indent=None)`` (keys in insertion order, non-ASCII kept, no HTML
  escaping), ``fromjson``, ``b64encode`` and ``b64decode`` (UTF-8 text).
- Data is never re-parsed: only definition strings are compiled, so braces inside inputs,
  HTTP bodies or LLM output are inserted literally.
- ``~`` joins with Python ``str()``, so ``'x' ~ none`` gives ``xNone``; use ``{{ }}`` text or
  ``tojson`` for JSON spelling.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import json
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from typing import Any, NoReturn

from jinja2 import nodes as jnodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.parser import Parser
from jinja2.runtime import Context, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing, pass_context
from markupsafe import Markup

from .diagnostics import did_you_mean

__all__ = [
    "Analysis",
    "ExpressionError",
    "ExpressionSyntaxError",
    "NodeView",
    "Reference",
    "SKIPPED",
    "SkippedOutput",
    "analyze_expression",
    "analyze_template",
    "build_context",
    "evaluate_expression",
    "is_template",
    "render_template",
    "render_value",
]

_CACHE_SIZE = 4096
_MAX_QUOTED_EXPRESSION = 200
_MAX_QUOTED_KEY = 80

# Bounds for `*` and `**`. They stop one expression from allocating gigabytes or spinning the
# CPU past the workflow's deadlock detector; real workflows stay far below them.
_MAX_REPEATED_LENGTH = 1_000_000
_MAX_POWER_BITS = 100_000

_STATUS_FUNCTION_ARITY = {
    "succeeded": 1,
    "failed": 1,
    "skipped": 1,
    "cancelled": 1,
    "overdue": 1,
    "always": 0,
}
_REMOVED_GLOBALS = ("lipsum", "cycler", "joiner", "namespace")
_REMOVED_FILTERS = ("random",)
# Names a user might reach for that are unavailable because they are stateful or read the
# clock or a random source. Using one is reported at analysis time with the reason.
_UNAVAILABLE_NAMES = frozenset({*_REMOVED_GLOBALS, "now", "random", "shuffle", "uuid"})

# Filters whose result is one of their inputs or a scalar. An expression using only these needs
# no deep scan of its result, because values taken from the context hold no Undefined objects.
_SELECTING_FILTERS = frozenset({
    "abs", "b64decode", "b64encode", "capitalize", "center", "count", "d", "default", "e",
    "escape", "first", "float", "format", "fromjson", "indent", "int", "join", "last", "length",
    "lower", "replace", "round", "string", "striptags", "title", "tojson", "trim", "truncate",
    "upper", "urlencode", "wordcount",
})


# --- errors -------------------------------------------------------------------------------


class ExpressionError(Exception):
    """Evaluation of a template or expression failed.

    ``str(exc)`` is a full sentence naming the expression. The messages built here name keys,
    fields and types rather than values. The one exception is an error raised by Python
    itself inside a filter or operator ("evaluation failed with ..."), which keeps Python's
    own message.
    """

    def __init__(self, message: str, expression: str, hint: str | None = None):
        self.message = message
        self.expression = expression
        self.hint = hint
        super().__init__(self._sentence())

    def _sentence(self) -> str:
        text = f"{self.message} in {_quote(self.expression)}."
        if self.hint:
            text += f" {self.hint}"
        return text


class ExpressionSyntaxError(ExpressionError):
    """A template or expression cannot be parsed or uses something that is not available.

    ``line`` is 1-based within the template source; ``column`` is set when known.
    """

    def __init__(
        self,
        message: str,
        expression: str,
        line: int,
        column: int | None = None,
        hint: str | None = None,
    ):
        self.line = line
        self.column = column
        super().__init__(message, expression, hint)

    def _sentence(self) -> str:
        where = f"line {self.line}"
        if self.column is not None:
            where += f", column {self.column}"
        text = f"{self.message} in {_quote(self.expression)} ({where})."
        if self.hint:
            text += f" {self.hint}"
        return text


def _quote(expression: str) -> str:
    if len(expression) > _MAX_QUOTED_EXPRESSION:
        expression = expression[:_MAX_QUOTED_EXPRESSION] + "..."
    return f"'{expression}'"


class _EvaluationFailure(Exception):
    """Raised by our own filters and functions; turned into ExpressionError at the boundary."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class _SandboxViolation(SecurityError):
    """Raised as soon as a template touches something the sandbox blocks."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class _MissingValue(UndefinedError):
    """Raised when a strict undefined value is used; keeps what was looked up and on what."""

    def __init__(self, undefined: Undefined):
        super().__init__(undefined._undefined_message)
        self.obj = undefined._undefined_obj
        self.name = undefined._undefined_name
        self.hint = undefined._undefined_hint


# --- public data model --------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A name read from the context, with the static part of the path taken from it.

    ``nodes.fetch.output.json.x`` gives root ``nodes`` and path
    ``("fetch", "output", "json", "x")``. The path stops at the first dynamic key:
    ``nodes[name].output`` gives root ``nodes`` and an empty path.
    """

    root: str
    path: tuple[str | int, ...] = ()


@dataclass(frozen=True)
class Analysis:
    """The names a template or expression reads, found without evaluating it.

    ``references`` are deduplicated and in source order. Names bound inside the template
    (``{% set %}``, loop variables, macro arguments) and globals such as ``range`` are not
    references. ``status_calls`` lists each status function call as ``(function, node_id)``,
    with ``None`` for ``always()``; those calls are not repeated as references.
    """

    references: tuple[Reference, ...]
    status_calls: tuple[tuple[str, str | None], ...]
    uses_status_functions: bool
    is_single_expression: bool


@dataclass(frozen=True)
class NodeView:
    """The state of one finished node as expressions see it."""

    status: str
    output: Any = None
    error: str | None = None


class SkippedOutput:
    """The output of a skipped node: a null that stays null under field and index access."""

    __slots__ = ()
    _instance: SkippedOutput | None = None

    def __new__(cls) -> SkippedOutput:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self) -> tuple[type[SkippedOutput], tuple[()]]:
        return (SkippedOutput, ())

    def __bool__(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, SkippedOutput)

    def __hash__(self) -> int:
        return hash(None)

    def __iter__(self) -> Iterator[Any]:
        raise TypeError("the output of a skipped node is null and cannot be iterated; use 'or []'")

    def __str__(self) -> str:
        return "null"

    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED = SkippedOutput()


# --- the jinja2 environment ---------------------------------------------------------------


class _StrictUndefined(StrictUndefined):
    """Strict undefined that chains: ``missing.x.y`` stays the same undefined value.

    Chaining lets ``| default(x)`` and ``is defined`` work at the end of a long path, while
    every other use (printing, comparing, iterating, truth testing) raises _MissingValue,
    which keeps the looked-up name and the object it was looked up on.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name[:2] == "__" and name[-2:] == "__":
            raise AttributeError(name)
        return self

    def __getitem__(self, key: Any) -> Any:
        return self

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        if self._undefined_exception is not UndefinedError:
            raise self._undefined_exception(self._undefined_message)
        raise _MissingValue(self)


# jinja2 binds its failing dunder methods to the base class function when the class body runs,
# so an override of _fail_with_undefined_error alone is not enough. Rebind each of them here.
for _name, _member in {**vars(Undefined), **vars(StrictUndefined)}.items():
    _keep = _name in ("__getitem__", "_fail_with_undefined_error")
    if _member is Undefined._fail_with_undefined_error and not _keep:
        setattr(_StrictUndefined, _name, _StrictUndefined._fail_with_undefined_error)
del _name, _member, _keep


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox with data-first field access, a skipped-output null and size limits."""

    intercepted_binops = frozenset({"*", "**"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # The immutable sandbox only checks instances, so `dict.update(inputs, {...})` on the
        # `dict` type would mutate the caller's data.
        if isinstance(obj, type):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if obj is SKIPPED or isinstance(obj, Undefined):
            return obj
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if obj is SKIPPED or isinstance(obj, Undefined):
            return obj
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # Fail at the access instead of returning an undefined value, so `| default` or
        # `is defined` cannot hide an escape attempt.
        raise _SandboxViolation(
            f"access to attribute {attribute!r} of a {_type_name(obj)} value is not allowed",
            _SANDBOX_HINT,
        )

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_repetition(left, right)
            _check_repetition(right, left)
        return super().call_binop(context, operator, left, right)


def _check_power(base: Any, exponent: Any) -> None:
    if not (isinstance(base, int) and isinstance(exponent, int)) or abs(base) < 2 or exponent < 1:
        return
    if base.bit_length() * exponent > _MAX_POWER_BITS:
        raise _SandboxViolation(
            f"'**' with an exponent of {exponent} is not allowed because the result would "
            f"exceed {_MAX_POWER_BITS} bits"
        )


def _check_repetition(sequence: Any, count: Any) -> None:
    if not isinstance(sequence, (str, list, tuple)) or not isinstance(count, int):
        return
    if len(sequence) * count > _MAX_REPEATED_LENGTH:
        raise _SandboxViolation(
            f"'*' repeating a {_type_name(sequence)} {count} times is not allowed because the "
            f"result would exceed {_MAX_REPEATED_LENGTH} items"
        )


def _finalize(value: Any) -> Any:
    """Spell a value printed inside text: JSON for structures and null, text for the rest."""
    if isinstance(value, str):
        return value
    if value is None or value is SKIPPED:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return _dump_json(value)


def _dump_json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=_json_default)


def _json_default(value: Any) -> Any:
    if value is SKIPPED:
        return None
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, (range, KeysView, ValuesView, ItemsView, Iterator)):
        return list(value)
    raise _EvaluationFailure(f"a {_type_name(value)} value cannot be written as JSON")


def _filter_tojson(value: Any, indent: int | None = None) -> str:
    return _dump_json(value, indent=indent)


def _filter_fromjson(value: Any) -> Any:
    if not isinstance(value, str):
        raise _EvaluationFailure(f"fromjson expects a string, got a {_type_name(value)}")
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        # exc.msg and the position only; the text itself may be sensitive.
        raise _EvaluationFailure(
            f"fromjson could not parse its input: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc


def _filter_b64encode(value: Any) -> str:
    if not isinstance(value, str):
        raise _EvaluationFailure(f"b64encode expects a string, got a {_type_name(value)}")
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


def _filter_b64decode(value: Any) -> str:
    if not isinstance(value, str):
        raise _EvaluationFailure(f"b64decode expects a string, got a {_type_name(value)}")
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _EvaluationFailure("b64decode input is not base64-encoded UTF-8 text") from exc


def _filter_items(value: Any) -> Any:
    # jinja2's `items` returns nothing for an undefined value; stay strict like every filter.
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if not isinstance(value, Mapping):
        raise _EvaluationFailure(f"items expects a mapping, got a {_type_name(value)}")
    return list(value.items())


def _test_null(value: Any) -> bool:
    return value is None or value is SKIPPED


def _node_status(context: Context, function: str, node_id: str) -> Any:
    nodes = context.get("nodes")
    if not isinstance(nodes, Mapping) or node_id not in nodes:
        hint = did_you_mean(node_id, nodes) if isinstance(nodes, Mapping) else None
        message = f"{function}({node_id!r}) refers to unknown node {node_id!r}"
        raise _EvaluationFailure(message, hint)

    view = nodes[node_id]
    status = view.get("status") if isinstance(view, Mapping) else getattr(view, "status", None)
    return status.value if isinstance(status, enum.Enum) else status


@pass_context
def _succeeded(context: Context, node_id: str) -> bool:
    return _node_status(context, "succeeded", node_id) == "succeeded"


@pass_context
def _failed(context: Context, node_id: str) -> bool:
    return _node_status(context, "failed", node_id) == "failed"


@pass_context
def _skipped(context: Context, node_id: str) -> bool:
    return _node_status(context, "skipped", node_id) == "skipped"


@pass_context
def _cancelled(context: Context, node_id: str) -> bool:
    return _node_status(context, "cancelled", node_id) == "cancelled"


@pass_context
def _overdue(context: Context, node_id: str) -> bool:
    # An approval past its `remind_after` that is still waiting for a decision.
    _node_status(context, "overdue", node_id)
    view = context["nodes"][node_id]
    return bool(view.get("overdue")) if isinstance(view, Mapping) else bool(getattr(view, "overdue", False))


def _always() -> bool:
    return True


def _create_environment() -> _Environment:
    # cache_size=0: jinja2's own template cache would create a threading.Lock, which the
    # workflow sandbox forbids; compiled templates are cached by source string below instead.
    env = _Environment(
        undefined=_StrictUndefined,
        finalize=_finalize,
        autoescape=False,
        keep_trailing_newline=True,
        cache_size=0,
        auto_reload=False,
    )
    for name in _REMOVED_GLOBALS:
        env.globals.pop(name, None)
    for name in _REMOVED_FILTERS:
        env.filters.pop(name, None)

    env.filters.update(
        tojson=_filter_tojson,
        fromjson=_filter_fromjson,
        b64encode=_filter_b64encode,
        b64decode=_filter_b64decode,
        items=_filter_items,
    )
    env.tests["none"] = _test_null
    env.globals.update(
        succeeded=_succeeded,
        failed=_failed,
        skipped=_skipped,
        cancelled=_cancelled,
        overdue=_overdue,
        always=_always,
    )
    return env


_ENV = _create_environment()


# --- static analysis ----------------------------------------------------------------------

_DYNAMIC = object()


def _static_key(node: jnodes.Expr) -> Any:
    """Return the constant key of a subscript (``x['a']``, ``x[0]``, ``x[-1]``) or _DYNAMIC."""
    if isinstance(node, jnodes.Const) and type(node.value) in (str, int):
        return node.value
    if isinstance(node, jnodes.Neg) and isinstance(node.node, jnodes.Const):
        value = node.node.value
        if isinstance(value, int) and not isinstance(value, bool):
            return -value
    return _DYNAMIC


def _split_static_chain(node: jnodes.Node) -> tuple[jnodes.Node, tuple[str | int, ...]]:
    """Split ``base.a['b'][0]`` into ``base`` and ``("a", "b", 0)``, stopping at a dynamic key."""
    path: list[str | int] = []
    while True:
        if isinstance(node, jnodes.Getattr):
            path.append(node.attr)
            node = node.node
        elif isinstance(node, jnodes.Getitem) and _static_key(node.arg) is not _DYNAMIC:
            path.append(_static_key(node.arg))
            node = node.node
        else:
            break
    path.reverse()
    return node, tuple(path)


def _stored_names(target: jnodes.Node) -> frozenset[str]:
    # find_all skips the node it is called on, and a target is often a bare Name.
    if isinstance(target, jnodes.Name):
        return frozenset({target.name})
    return frozenset(name.name for name in target.find_all(jnodes.Name))


class _Analyzer:
    """Walk a parsed template, tracking names bound by set/for/with/macro as it goes."""

    def __init__(self, source: str):
        self.source = source
        self.references: dict[Reference, None] = {}
        self.status_calls: dict[tuple[str, str | None], None] = {}

    def statements(self, body: list[jnodes.Node], bound: frozenset[str]) -> frozenset[str]:
        """Visit statements in order and return the names bound after them."""
        for statement in body:
            bound = self.statement(statement, bound)
        return bound

    def statement(self, node: jnodes.Node, bound: frozenset[str]) -> frozenset[str]:
        if isinstance(node, (jnodes.Extends, jnodes.Include, jnodes.Import, jnodes.FromImport)):
            self.fail(
                node,
                "extends, include and import are not available",
                "Templates cannot load other templates.",
            )

        if isinstance(node, jnodes.Output):
            for child in node.nodes:
                if not isinstance(child, jnodes.TemplateData):
                    self.expression(child, bound)
            return bound

        if isinstance(node, jnodes.Assign):
            self.expression(node.node, bound)
            return bound | _stored_names(node.target)

        if isinstance(node, jnodes.AssignBlock):
            self.statements(node.body, bound)
            if node.filter is not None:
                self.expression(node.filter, bound)
            return bound | _stored_names(node.target)

        if isinstance(node, jnodes.For):
            self.visit_for(node, bound)
            return bound

        if isinstance(node, jnodes.If):
            return self.visit_if(node, bound)

        if isinstance(node, jnodes.With):
            for value in node.values:
                self.expression(value, bound)
            inner = bound.union(*(_stored_names(target) for target in node.targets))
            self.statements(node.body, inner)
            return bound

        if isinstance(node, jnodes.Macro):
            self.visit_callable_body(node, bound | {node.name})
            return bound | {node.name}

        if isinstance(node, jnodes.CallBlock):
            self.expression(node.call, bound)
            self.visit_callable_body(node, bound)
            return bound

        if isinstance(node, jnodes.FilterBlock):
            self.statements(node.body, bound)
            self.expression(node.filter, bound)
            return bound

        # Blocks, scopes and eval-context modifiers only wrap other statements.
        for child in node.iter_child_nodes():
            if isinstance(child, jnodes.Stmt):
                bound = self.statement(child, bound)
            else:
                self.expression(child, bound)
        return bound

    def visit_for(self, node: jnodes.For, bound: frozenset[str]) -> None:
        self.expression(node.iter, bound)
        inner = bound | _stored_names(node.target) | {"loop"}
        if node.test is not None:
            self.expression(node.test, inner)
        self.statements(node.body, inner)
        self.statements(node.else_, bound)

    def visit_if(self, node: jnodes.If, bound: frozenset[str]) -> frozenset[str]:
        # A name set in any branch counts as local afterwards. Strictly it is read from the
        # context when that branch did not run, but treating it as a reference would report
        # a name the author clearly meant as a local.
        self.expression(node.test, bound)
        after = self.statements(node.body, bound)
        for branch in node.elif_:
            after |= self.visit_if(branch, bound)
        after |= self.statements(node.else_, bound)
        return after

    def visit_callable_body(
        self, node: jnodes.Macro | jnodes.CallBlock, bound: frozenset[str]
    ) -> None:
        for default in node.defaults:
            self.expression(default, bound)
        inner = bound | {arg.name for arg in node.args} | {"caller", "varargs", "kwargs"}
        self.statements(node.body, inner)

    def expression(self, node: jnodes.Node, bound: frozenset[str]) -> None:
        if isinstance(node, (jnodes.Name, jnodes.Getattr, jnodes.Getitem)):
            self.visit_path(node, bound)
            return

        if isinstance(node, jnodes.Call) and self.is_status_function(node.node, bound):
            self.visit_status_call(node)
            return

        if isinstance(node, jnodes.CondExpr):
            # Visit in source order: `a if test else b`.
            self.expression(node.expr1, bound)
            self.expression(node.test, bound)
            if node.expr2 is not None:
                self.expression(node.expr2, bound)
            return

        if isinstance(node, jnodes.Filter):
            self.check_known(node, "filter", _ENV.filters)
        elif isinstance(node, jnodes.Test):
            self.check_known(node, "test", _ENV.tests)

        for child in node.iter_child_nodes():
            self.expression(child, bound)

    def visit_path(self, node: jnodes.Node, bound: frozenset[str]) -> None:
        base, path = _split_static_chain(node)
        if isinstance(base, jnodes.Getitem):
            self.expression(base.node, bound)
            self.expression(base.arg, bound)
        elif isinstance(base, jnodes.Name):
            self.visit_name(base, path, bound)
        else:
            self.expression(base, bound)

    def visit_name(
        self, node: jnodes.Name, path: tuple[str | int, ...], bound: frozenset[str]
    ) -> None:
        name = node.name
        if name in bound or node.ctx != "load":
            return
        if name in _STATUS_FUNCTION_ARITY:
            self.fail(node, f"status function {name!r} must be called directly", _status_hint(name))
        if name in _UNAVAILABLE_NAMES:
            self.fail(node, f"{name!r} is not available because evaluation must be deterministic")
        if name in _ENV.globals or name == "self":
            return
        self.references.setdefault(Reference(name, path))

    def is_status_function(self, node: jnodes.Node, bound: frozenset[str]) -> bool:
        if not isinstance(node, jnodes.Name):
            return False
        return node.name in _STATUS_FUNCTION_ARITY and node.name not in bound

    def visit_status_call(self, node: jnodes.Call) -> None:
        name = node.node.name  # type: ignore[attr-defined]
        arity = _STATUS_FUNCTION_ARITY[name]
        literal = all(isinstance(arg, jnodes.Const) and isinstance(arg.value, str) for arg in node.args)
        plain = not (node.kwargs or node.dyn_args or node.dyn_kwargs)
        if len(node.args) != arity or not literal or not plain:
            message = "status functions take a node id as a string literal"
            self.fail(node, message, _status_hint(name))

        node_id = node.args[0].value if arity else None  # type: ignore[attr-defined]
        self.status_calls.setdefault((name, node_id))

    def check_known(
        self, node: jnodes.Filter | jnodes.Test, kind: str, known: Mapping[str, Any]
    ) -> None:
        if node.name in known:
            return
        if node.name in _REMOVED_FILTERS or node.name == "shuffle":
            message = f"{kind} {node.name!r} is not available because evaluation must be deterministic"
            self.fail(node, message)
        self.fail(node, f"unknown {kind} {node.name!r}", did_you_mean(node.name, known))

    def fail(self, node: jnodes.Node, message: str, hint: str | None = None) -> NoReturn:
        raise ExpressionSyntaxError(message, self.source, line=node.lineno, hint=hint)

    def result(self, is_single_expression: bool) -> Analysis:
        status_calls = tuple(self.status_calls)
        return Analysis(
            references=tuple(self.references),
            status_calls=status_calls,
            uses_status_functions=bool(status_calls),
            is_single_expression=is_single_expression,
        )


def _status_hint(name: str) -> str:
    if _STATUS_FUNCTION_ARITY[name] == 0:
        return f"Write {name}() with no arguments."
    return f"Write {name}('node_id') with the id in quotes."


# --- compilation --------------------------------------------------------------------------

# The variable a native-value template assigns its result to. The leading underscore keeps it
# out of jinja2's exported names.
_VALUE_NAME = "_dagwright_value"


@dataclass(frozen=True)
class _Compiled:
    source: str
    analysis: Analysis
    template: Template
    tree: jnodes.Node  # the parsed template or expression, for error messages
    returns_value: bool  # True: evaluates to a native value; False: renders text
    deep_native: bool  # the native result may contain values built by the expression


def _single_expression(tree: jnodes.Template) -> jnodes.Expr | None:
    """Return the expression of a template that is exactly one ``{{ expr }}``, else None."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], jnodes.Output):
        return None

    parts = tree.body[0].nodes
    expressions = [part for part in parts if not isinstance(part, jnodes.TemplateData)]
    text = "".join(part.data for part in parts if isinstance(part, jnodes.TemplateData))
    if len(expressions) != 1 or text.strip():
        return None
    return expressions[0]


def _builds_new_values(node: jnodes.Node) -> bool:
    """Tell whether an expression's result may hold values it built, not taken from the context.

    Only such results need the deep scan for undefined and skipped values. A result that is
    context data, a constant or a boolean is returned without walking it.
    """
    if isinstance(node, (jnodes.Test, jnodes.Compare, jnodes.Not)):
        return False
    if isinstance(node, (jnodes.List, jnodes.Tuple)):
        return not all(isinstance(item, jnodes.Const) for item in node.items)
    if isinstance(node, jnodes.Dict):
        return not all(
            isinstance(pair.key, jnodes.Const) and isinstance(pair.value, jnodes.Const)
            for pair in node.items
        )
    if isinstance(node, jnodes.Call):
        return True
    if isinstance(node, jnodes.Filter) and node.name not in _SELECTING_FILTERS:
        return True
    return any(_builds_new_values(child) for child in node.iter_child_nodes())


def _compile_value_template(expression: jnodes.Expr) -> Template:
    """Compile an expression into a template that stores its value instead of printing it.

    This is what jinja2's compile_expression does, but it starts from a parsed node so the
    braced form and the bare form share one path.
    """
    target = jnodes.Name(_VALUE_NAME, "store", lineno=expression.lineno)
    assign = jnodes.Assign(target, expression, lineno=expression.lineno)
    tree = jnodes.Template([assign], lineno=1)
    tree.set_environment(_ENV)
    return _ENV.from_string(tree)


def _syntax_error(exc: TemplateSyntaxError, source: str, kind: str) -> ExpressionSyntaxError:
    return ExpressionSyntaxError(f"invalid {kind}: {exc.message}", source, line=exc.lineno or 1)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile_template(source: str) -> _Compiled:
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise _syntax_error(exc, source, "template") from exc

    expression = _single_expression(tree)
    analyzer = _Analyzer(source)
    analyzer.statements(tree.body, frozenset())
    analysis = analyzer.result(is_single_expression=expression is not None)
    deep = expression is not None and _builds_new_values(expression)

    # Compile last: the compiler's optimizer folds constants in the tree in place.
    try:
        if expression is not None:
            template = _compile_value_template(expression)
        else:
            template = _ENV.from_string(tree)
    except TemplateSyntaxError as exc:
        raise _syntax_error(exc, source, "template") from exc
    return _Compiled(source, analysis, template, tree, expression is not None, deep)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile_expression(source: str) -> _Compiled:
    if source.lstrip().startswith("{{"):
        compiled = _compile_template(source)
        if not compiled.returns_value:
            raise ExpressionSyntaxError(
                "expected one expression, bare or as a single {{ }}, but got a text template",
                source,
                line=1,
                hint="Remove the text around the braces or combine the parts with 'and'/'or'.",
            )
        return compiled

    try:
        parser = Parser(_ENV, source, state="variable")
        expression = parser.parse_expression()
        if not parser.stream.eos:
            line = parser.stream.current.lineno
            raise TemplateSyntaxError("unexpected text after the expression", line)
        expression.set_environment(_ENV)
    except TemplateSyntaxError as exc:
        raise _syntax_error(exc, source, "expression") from exc

    # Analyze before compiling: the compiler's optimizer folds constants in place, which would
    # turn `failed('a' ~ 'b')` into an accepted literal.
    analyzer = _Analyzer(source)
    analyzer.expression(expression, frozenset())
    analysis = analyzer.result(is_single_expression=True)
    deep = _builds_new_values(expression)

    try:
        template = _compile_value_template(expression)
    except TemplateSyntaxError as exc:
        raise _syntax_error(exc, source, "expression") from exc
    return _Compiled(source, analysis, template, expression, True, deep)


# --- evaluation ---------------------------------------------------------------------------


# NOTE: there is no step budget. `*`, `**` and `range` are capped, but nested loops or wide
# `center`/`format` widths can still run past the workflow's 2 s deadlock detector.
def _run(compiled: _Compiled, context: Mapping[str, Any]) -> Any:
    """Evaluate a compiled template: the single boundary where evaluation errors are translated."""
    try:
        jinja_context = compiled.template.new_context(dict(context))
        output = compiled.template.root_render_func(jinja_context)
        if not compiled.returns_value:
            return "".join(output)

        for _ in output:
            pass
        return _to_native(jinja_context.vars[_VALUE_NAME], deep=compiled.deep_native)
    except ExpressionError:
        raise
    except Exception as exc:
        # Errors from the Temporal sandbox (restricted access, non-determinism) must fail the
        # workflow task so it is retried, not fail the node as if the expression were wrong.
        if type(exc).__module__.startswith("temporalio"):
            raise
        raise _evaluation_error(exc, compiled, context) from exc


_LAZY_SEQUENCES = (tuple, range, KeysView, ValuesView, ItemsView, Iterator)


def _to_native(value: Any, deep: bool) -> Any:
    """Turn an expression result into plain JSON-like data.

    Values taken from the context are already plain, so containers are walked only when the
    expression may have built them (``deep``); this keeps ``{{ nodes.big.output }}`` O(1).
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if value is SKIPPED:
        return None
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, Markup):
        return str(value)
    if isinstance(value, dict):
        return {key: _to_native(item, True) for key, item in value.items()} if deep else value
    if isinstance(value, list):
        return [_to_native(item, True) for item in value] if deep else value
    if isinstance(value, _LAZY_SEQUENCES):
        return [_to_native(item, True) for item in value]
    if isinstance(value, Mapping):
        return {key: _to_native(item, True) for key, item in value.items()}
    if isinstance(value, (str, int, float)):
        return value

    hint = "Call it with () to use its result." if callable(value) else None
    message = f"the result is a {_type_name(value)}, which is not a JSON value"
    raise _EvaluationFailure(message, hint)


def _evaluation_error(
    exc: Exception, compiled: _Compiled, context: Mapping[str, Any]
) -> ExpressionError:
    source = compiled.source
    if isinstance(exc, _MissingValue):
        return _missing_value_error(exc, compiled, context)
    if isinstance(exc, _SandboxViolation):
        return ExpressionError(exc.message or str(exc), source, exc.hint)
    if isinstance(exc, SecurityError):
        message = f"not allowed in the expression sandbox: {exc.message}"
        return ExpressionError(message, source, _SANDBOX_HINT)
    if isinstance(exc, _EvaluationFailure):
        return ExpressionError(exc.message, source, exc.hint)
    if isinstance(exc, TemplateSyntaxError):
        return _syntax_error(exc, source, "template")
    if isinstance(exc, UndefinedError):
        # jinja2's own undefined values, such as an inline if-expression without an else part.
        return ExpressionError((exc.message or "a value is undefined").rstrip("."), source)
    if isinstance(exc, ZeroDivisionError):
        return ExpressionError("division by zero", source)
    return ExpressionError(f"evaluation failed with {type(exc).__name__}: {exc}", source)


_DEFAULT_HINT = "Use '| default(value)' if it may be absent."
_SANDBOX_HINT = (
    "Expressions run in a sandbox that blocks attributes starting with '_', "
    "methods that modify data, and attributes of types."
)


def _missing_value_error(
    exc: _MissingValue, compiled: _Compiled, context: Mapping[str, Any]
) -> ExpressionError:
    source, obj, name = compiled.source, exc.obj, exc.name
    if exc.hint:
        return ExpressionError(exc.hint.rstrip("."), source)
    if obj is missing:
        hint = did_you_mean(str(name), [*context, *_ENV.globals]) or _DEFAULT_HINT
        return ExpressionError(f"unknown name {name!r}", source, hint)

    parent = _find_parent_path(compiled.tree, obj, name, context)
    key = _format_key(name)
    if parent == "nodes":
        return ExpressionError(f"unknown node {key}", source, _close_key(name, obj))
    if parent == "inputs":
        return ExpressionError(f"unknown input {key}", source, _close_key(name, obj))
    if parent == "secrets":
        return ExpressionError(f"unknown secret {key}", source)
    if parent is not None and parent.startswith("nodes.") and parent.count(".") == 1:
        hint = "Node fields are status, output and error."
        return ExpressionError(f"node {parent[6:]!r} has no field {key}", source, hint)

    if parent is None:
        return ExpressionError(f"a {_type_name(obj)} value has no field {key}", source)

    described = parent
    if obj is None:
        return ExpressionError(f"{described} is null, so it has no field {key}", source)
    if isinstance(obj, (list, tuple)) and isinstance(name, int):
        return ExpressionError(f"{described} has no index {name} (it has {len(obj)} items)", source)
    if isinstance(obj, Mapping):
        hint = _close_key(name, obj) or _DEFAULT_HINT
        return ExpressionError(f"{described} has no field {key}", source, hint)
    return ExpressionError(f"{described} (a {_type_name(obj)}) has no field {key}", source)


def _find_parent_path(
    tree: jnodes.Node, obj: Any, name: Any, context: Mapping[str, Any]
) -> str | None:
    """Spell the static path of the value a missing key was looked up on, if it can be found.

    A lookup whose parent path resolves in the context to the object the key was missing
    from wins. Without one, the first lookup of that key in the source is used.
    """
    candidates: list[tuple[str, tuple[str | int, ...], bool]] = []
    for node in tree.find_all((jnodes.Getattr, jnodes.Getitem)):
        key = node.attr if isinstance(node, jnodes.Getattr) else _static_key(node.arg)
        if key is not _DYNAMIC and (key != name or type(key) is not type(name)):
            continue
        base, path = _split_static_chain(node.node)
        if isinstance(base, jnodes.Name):
            candidates.append((base.name, path, key is _DYNAMIC))

    for root, path, _ in candidates:
        if _resolve(context, root, path) is obj:
            return _format_path(root, path)
    for root, path, dynamic in candidates:
        if not dynamic:
            return _format_path(root, path)
    return None


def _resolve(context: Mapping[str, Any], root: str, path: tuple[str | int, ...]) -> Any:
    value = context.get(root, missing)
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return missing
    return value


def _format_path(root: str, path: tuple[str | int, ...]) -> str:
    text = root
    for key in path:
        if isinstance(key, str) and key.isidentifier():
            text += f".{key}"
        else:
            text += f"[{key!r}]"
    return text


# NOTE: a key computed at run time (`mapping[item.name]`) comes from data and is quoted in the
# message, shortened to _MAX_QUOTED_KEY characters.
def _format_key(name: Any) -> str:
    text = repr(name)
    return text if len(text) <= _MAX_QUOTED_KEY else text[:_MAX_QUOTED_KEY] + "..."


def _close_key(name: Any, obj: Any) -> str | None:
    if not isinstance(name, str) or not isinstance(obj, Mapping):
        return None
    return did_you_mean(name, [key for key in obj if isinstance(key, str)])


def _type_name(value: Any) -> str:
    if value is None or value is SKIPPED:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, Mapping):
        return "mapping"
    simple = {str: "string", int: "integer", float: "number", list: "list", tuple: "list"}
    return simple.get(type(value), type(value).__name__)


# --- public API ---------------------------------------------------------------------------


def is_template(value: str) -> bool:
    """Tell whether a string contains template syntax (``{{``, ``{%`` or ``{#``)."""
    return "{{" in value or "{%" in value or "{#" in value


_NO_ANALYSIS = Analysis(
    references=(), status_calls=(), uses_status_functions=False, is_single_expression=False
)


def analyze_template(source: str) -> Analysis:
    """Parse and compile a template and report what it reads.

    Raises:
        ExpressionSyntaxError: the template does not parse, or it uses an unknown filter or
            test, an unavailable name, or a status function without a literal node id.
    """
    if not is_template(source):
        return _NO_ANALYSIS
    return _compile_template(source).analysis


def analyze_expression(source: str) -> Analysis:
    """Parse a bare expression (as in ``when:``), or one ``{{ expr }}``, and report what it reads.

    Raises:
        ExpressionSyntaxError: as for analyze_template, or the source is text with a template.
    """
    return _compile_expression(source).analysis


def render_template(source: str, context: Mapping[str, Any]) -> Any:
    """Render a template: a native value for exactly one ``{{ expr }}``, text otherwise.

    A string without template syntax is returned unchanged.

    Raises:
        ExpressionError: evaluation failed; ExpressionSyntaxError when it does not compile.
    """
    if not is_template(source):
        return source
    return _run(_compile_template(source), context)


def evaluate_expression(source: str, context: Mapping[str, Any]) -> Any:
    """Evaluate a bare or braced expression to a native value.

    Raises:
        ExpressionError: evaluation failed; ExpressionSyntaxError when it does not compile.
    """
    return _run(_compile_expression(source), context)


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every string in a structure of mappings and lists.

    Mapping keys and values other than strings are returned unchanged.

    Give it definition values only. Data passed in here would be evaluated as a template.
    """
    if isinstance(value, str):
        return render_template(value, context)
    if isinstance(value, Mapping):
        return {key: render_value(item, context) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [render_value(item, context) for item in value]
    return value


class _Unset:
    """Marks a build_context argument that was not given, since None is a valid value."""

    def __repr__(self) -> str:
        return "UNSET"


_UNSET: Any = _Unset()


def build_context(
    *,
    inputs: Mapping[str, Any],
    nodes: Mapping[str, NodeView | Mapping[str, Any]],
    run: Mapping[str, Any],
    item: Any = _UNSET,
    index: Any = _UNSET,
    result: Any = _UNSET,
    secrets: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Shape the names expressions can read.

    Each node becomes ``{"status", "output", "error"}``; a skipped node's output becomes
    SKIPPED whatever was stored. Values are not copied, so evaluation results may share
    structure with the context and must be treated as read-only. ``item``, ``index``,
    ``result`` and ``secrets`` are in scope only when given.
    """
    context: dict[str, Any] = {
        "inputs": inputs,
        "nodes": nodes if isinstance(nodes, NodeViews) else {node_id: _node_view(view) for node_id, view in nodes.items()},
        "run": run,
    }
    for name, value in (("item", item), ("index", index), ("result", result)):
        if value is not _UNSET:
            context[name] = value
    if secrets is not None:
        context["secrets"] = secrets
    return context


class NodeViews(Mapping):
    """The `nodes` name, building each node's view only when an expression reads it.

    A run with thousands of nodes evaluates thousands of expressions, and building every
    view for each of them would cost time quadratic in the number of nodes.
    """

    def __init__(self, source: Mapping[str, Any], view: Callable[[Any], Any] | None = None) -> None:
        self._source = source
        self._view = view
        self._built: dict[str, dict[str, Any]] = {}

    def __getitem__(self, node_id: str) -> dict[str, Any]:
        built = self._built.get(node_id)
        if built is None:
            raw = self._source[node_id]
            built = _node_view(self._view(raw) if self._view else raw)
            self._built[node_id] = built
        return built

    def __iter__(self) -> Iterator[str]:
        return iter(self._source)

    def __len__(self) -> int:
        return len(self._source)


def _node_view(view: NodeView | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(view, NodeView):
        status, output, error = view.status, view.output, view.error
    else:
        status, output, error = view.get("status"), view.get("output"), view.get("error")

    if isinstance(status, enum.Enum):
        status = status.value
    if status == "skipped":
        output = SKIPPED
    view_dict = {"status": status, "output": output, "error": error}
    overdue = view.get("overdue") if isinstance(view, Mapping) else getattr(view, "overdue", None)
    if overdue:
        view_dict["overdue"] = True
    return view_dict
