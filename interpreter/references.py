"""Static checks of the expressions in a workflow: names, node references, scopes.

Every template is parsed once here, so a typo in a name or a node id is reported
before the run starts, with the node, the field and the expression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from dagwright.interpreter.diagnostics import did_you_mean
from dagwright.interpreter.expressions import (
    Analysis,
    ExpressionSyntaxError,
    analyze_expression,
    analyze_template,
    is_template,
)

NODE_FIELDS = ("output", "status", "error")
RUN_FIELDS = ("id", "workflow", "version", "started_at", "definition_hash")
SECRET_NAME = re.compile(r"[A-Z0-9_]+")
ROOTS = ("inputs", "nodes", "run", "item", "index", "result", "secrets")


@dataclass(frozen=True)
class ScopeRules:
    """The names an expression may use, given the field it sits in."""

    owner: str | None
    items: bool = False
    result: bool = False
    secrets: bool = False


@dataclass
class Found:
    nodes: list[str] = field(default_factory=list)
    status_nodes: list[str] = field(default_factory=list)
    overdue_nodes: list[str] = field(default_factory=list)
    uses_status: bool = False


class ExpressionChecker:
    """Analyze every template in a structure and report what it may not use."""

    def __init__(
        self,
        *,
        report: Callable[..., None],
        node_ids: list[str],
        input_names: list[str],
        output_fields: dict[str, list[str] | None],
        reminded_approvals: list[str] = (),
    ):
        self._reminded_approvals = list(reminded_approvals)
        self._report = report
        self._node_ids = node_ids
        self._node_set = set(node_ids)
        self._input_names = input_names
        self._output_fields = output_fields

    def check_structure(
        self, path: tuple, value: Any, rules: ScopeRules, *, node: str | None, bare: bool = False
    ) -> Found:
        found = Found()
        stack = [(path, value)]
        while stack:
            current_path, current = stack.pop()
            if isinstance(current, dict):
                stack.extend((current_path + (key,), item) for key, item in reversed(current.items()))
            elif isinstance(current, list):
                stack.extend((current_path + (index,), item) for index, item in reversed(list(enumerate(current))))
            elif isinstance(current, str) and (bare or is_template(current)):
                self._check_string(current_path, current, rules, node, bare, found)
        return found

    def _check_string(self, path, source: str, rules, node, bare, found: Found) -> None:
        try:
            analysis = analyze_expression(source) if bare else analyze_template(source)
        except RecursionError:
            # NOTE: Jinja's lexer and parser recurse once per nesting level, and the
            # expressions module lets the RecursionError through. Catching it here turns
            # a pathological expression into a diagnostic instead of a crash.
            self._report(path, f"expression in {self._where(path, node)} is nested too deeply to parse",
                         "expression-syntax", node=node,
                         hint="Split it into several transform nodes.")
            return
        except ExpressionSyntaxError as exc:
            offset = (exc.line - 1) if "\n" in source and exc.line else 0
            shown = source if len(source) <= 80 else source[:77] + "..."
            message = exc.message.rstrip(".")
            hint = exc.hint
            if hint is None and "unexpected end of template" in message.lower():
                hint = "Close every '{{' with '}}' and every '{%' block with its end tag."
            self._report(path, f"{message} in {self._where(path, node)}: {shown!r}",
                         "expression-syntax", node=node, hint=hint, line_offset=offset)
            return
        self._check_analysis(path, source, analysis, rules, node, found)

    def _where(self, path, node) -> str:
        field_name = ".".join(str(part) for part in path[2:]) if node else ".".join(str(p) for p in path)
        return f"'{field_name}' of node '{node}'" if node else f"'{field_name}'"

    def _check_analysis(self, path, source, analysis: Analysis, rules: ScopeRules, node, found: Found) -> None:
        where = self._where(path, node)
        shown = source if len(source) <= 80 else source[:77] + "..."

        def error(message: str, code: str, hint: str | None = None) -> None:
            self._report(path, f"{message} in {where}: {shown!r}", code, node=node, hint=hint)

        for reference in analysis.references:
            root = reference.root
            if root == "nodes":
                self._check_node_reference(reference.path, rules, error, found)
            elif root == "inputs":
                if reference.path and reference.path[0] not in self._input_names:
                    error(f"unknown input '{reference.path[0]}'", "unknown-reference",
                          did_you_mean(str(reference.path[0]), self._input_names)
                          or "Declare it under 'inputs'.")
            elif root == "run":
                if reference.path and reference.path[0] not in RUN_FIELDS:
                    error(f"unknown run field '{reference.path[0]}'", "unknown-reference",
                          did_you_mean(str(reference.path[0]), RUN_FIELDS)
                          or f"Available: {', '.join(RUN_FIELDS)}.")
            elif root in ("item", "index"):
                if not rules.items:
                    error(f"'{root}' is not defined", "invalid-scope",
                          f"'{root}' exists only in a node with 'for_each', and not in that node's"
                          " 'for_each' and 'when' themselves.")
            elif root == "result":
                if not rules.result:
                    error("'result' is not defined", "invalid-scope",
                          "'result' exists only in a node's 'output' expression; elsewhere use"
                          " nodes.<id>.output.")
            elif root == "secrets":
                if not rules.secrets:
                    error("secrets are not allowed", "secret-not-allowed",
                          "Secrets may appear only in the url, headers, query, json, body and form of http nodes,"
                          " where the worker resolves them at call time.")
                elif not reference.path or not SECRET_NAME.fullmatch(str(reference.path[0])):
                    name = reference.path[0] if reference.path else ""
                    error(f"invalid secret name '{name}'", "invalid-secret-name",
                          "Secret names use upper-case letters, digits and '_', as in secrets.API_TOKEN;"
                          " the worker reads them from DAGWRIGHT_SECRET_<NAME>.")
            else:
                error(f"unknown name '{root}'", "unknown-reference",
                      did_you_mean(root, ROOTS) or f"Names in scope: {', '.join(ROOTS)}.")

        for function, target in analysis.status_calls:
            if target is None:
                continue
            if target not in self._node_set:
                error(f"unknown node '{target}' in {function}()", "unknown-reference",
                      did_you_mean(target, self._node_ids))
            elif target == rules.owner:
                error(f"node '{target}' cannot test its own status", "self-reference")
            elif function == "overdue" and target not in self._reminded_approvals:
                error(f"overdue('{target}') needs an approval node with 'remind_after'", "invalid-reference",
                      "Add remind_after to the approval, or test another status.")
            else:
                found.status_nodes.append(target)
                if function == "overdue":
                    found.overdue_nodes.append(target)
        found.uses_status = found.uses_status or analysis.uses_status_functions

    def _check_node_reference(self, path, rules: ScopeRules, error, found: Found) -> None:
        if not path or not isinstance(path[0], str):
            error("computed node id (write the id out, as nodes.<id>)", "dynamic-reference",
                  "Dependencies are derived before the run, so the node id cannot be computed.")
            return
        target = path[0]
        if target not in self._node_set:
            error(f"unknown node '{target}'", "unknown-reference", did_you_mean(target, self._node_ids))
            return
        if target == rules.owner:
            hint = "Use 'result' inside 'output'." if rules.result else None
            error(f"node '{target}' refers to itself", "self-reference", hint)
            return
        found.nodes.append(target)
        if len(path) < 2:
            return
        if path[1] not in NODE_FIELDS:
            error(f"unknown field '{path[1]}' of node '{target}'", "unknown-reference",
                  did_you_mean(str(path[1]), NODE_FIELDS) or f"Use one of: {', '.join(NODE_FIELDS)}.")
            return
        known = self._output_fields.get(target)
        if path[1] == "output" and len(path) >= 3 and known is not None and path[2] not in known:
            error(f"the output of node '{target}' has no field '{path[2]}'", "unknown-reference",
                  did_you_mean(str(path[2]), known) or f"Its fields: {', '.join(known)}.")
