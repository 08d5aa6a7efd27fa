"""Compile a workflow file into a checked, plain-JSON definition.

The compiled definition is what a run executes and what its history pins: defaults
merged, durations in seconds, dependencies derived, a topological order, and a
content hash. Every problem found is reported with its file position; the compiler
keeps going after an error so a user sees all of them at once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

from pydantic import BaseModel, ValidationError

from dagwright.interpreter import models
from dagwright.interpreter.diagnostics import CompileError, Diagnostic, did_you_mean
from dagwright.interpreter.graph import find_cycles, topological_order
from dagwright.interpreter.loader import LoadedDocument, LoadError, load_file
from dagwright.interpreter.references import ExpressionChecker, ScopeRules
from dagwright.interpreter.schemas import check_json_schema
from dagwright.interpreter.shapes import Path as DataPath
from dagwright.interpreter.shapes import report_validation_error, string_coercions

DEFAULT_ACTIVITY_TIMEOUT = 300.0
DEFAULT_LLM_PROVIDER = "mistral"
TOP_LEVEL_FIELDS = [name for name in models.Workflow.model_fields]


class ToolCatalog(Protocol):
    """The part of a tool registry the compiler uses."""

    def names(self) -> list[str]: ...

    def get(self, name: str) -> Any: ...


class _Header(models._Strict):
    """The top level without node bodies, which are checked one by one."""

    dagwright: int
    name: str
    version: str | None = None
    description: str | None = None
    inputs: dict[str, models.JsonSchema] = {}
    defaults: models.Defaults = models.Defaults()
    limits: models.Limits = models.Limits()
    nodes: dict[str, Any]
    outputs: dict[str, Any] = {}


@dataclass
class _Context:
    document: LoadedDocument
    tools: ToolCatalog | None
    stack: tuple[str, ...]
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(
        self,
        path: DataPath,
        message: str,
        code: str,
        *,
        node: str | None = None,
        hint: str | None = None,
        at_key: bool = False,
        line_offset: int = 0,
    ) -> None:
        source_map = self.document.source_map
        position = source_map.key(path) if at_key else None
        if position is None:
            position = source_map.nearest(path)
        field_name = str(path[-1]) if path and isinstance(path[-1], str) else None
        if len(path) == 2 and path[0] == "nodes":
            field_name = None  # the path names the node itself, not one of its fields
        self.diagnostics.append(
            Diagnostic(
                file=self.document.path,
                line=position.line + line_offset,
                column=position.column if not line_offset else 1,
                message=message,
                code=code,
                node=node,
                field=field_name,
                hint=hint,
            )
        )


def compile_file(path: str | os.PathLike, *, tools: ToolCatalog | None = None) -> dict[str, Any]:
    """Load and compile one workflow file.

    Raises:
        CompileError: with every diagnostic found in the file (and in the files of
            its `workflow` nodes).
    """
    return _compile_path(str(path), tools=tools, stack=())


def _compile_path(path: str, *, tools: ToolCatalog | None, stack: tuple[str, ...]) -> dict[str, Any]:
    try:
        document = load_file(path)
    except LoadError as exc:
        raise CompileError(exc.diagnostics) from None
    except OSError as exc:
        raise CompileError(
            [Diagnostic(path, 1, 1, f"cannot read the file: {exc.strerror or exc}", "io-error")]
        ) from None
    return compile_document(document, tools=tools, _stack=stack)


def compile_document(
    document: LoadedDocument, *, tools: ToolCatalog | None = None, _stack: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Compile an already loaded document; see `compile_file`."""
    context = _Context(document=document, tools=tools, stack=_stack + (_identity(document.path),))
    compiled = _compile(context)
    if context.diagnostics:
        raise CompileError(context.diagnostics)
    return compiled


def _identity(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return path


def _compile(context: _Context) -> dict[str, Any]:
    data = context.document.data
    if not _check_version(context, data):
        return {}
    header = _validate_header(context, data)
    raw_nodes = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
    input_names = list(data["inputs"]) if isinstance(data.get("inputs"), dict) else []

    _check_input_schemas(context, data)
    nodes = _compile_nodes(context, raw_nodes, header)
    checker = ExpressionChecker(
        report=context.error,
        node_ids=list(raw_nodes),
        input_names=input_names,
        output_fields=_output_fields(raw_nodes, nodes),
        reminded_approvals=[
            node_id for node_id, raw in raw_nodes.items()
            if isinstance(raw, dict) and raw.get("type") == "approval" and raw.get("remind_after") is not None
        ],
    )
    for node_id, raw in raw_nodes.items():
        if not isinstance(raw, dict) or raw.get("type") not in models.NODE_MODELS:
            continue
        # Nodes that failed validation are still checked, so a user sees every error at once.
        node = nodes.get(node_id) or _shell_node(raw)
        _check_node_expressions(checker, node_id, raw, node)
    outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
    checker.check_structure(("outputs",), outputs, ScopeRules(owner=None), node=None)

    dependencies = {node_id: node["deps"] for node_id, node in nodes.items()}
    _check_cycles(context, dependencies)
    if context.diagnostics or header is None:
        return {}
    return _assemble(context, header, nodes, outputs, dependencies)


def _output_fields(raw_nodes: dict, nodes: dict[str, dict]) -> dict[str, list[str] | None]:
    """Return the known output fields of every node, including nodes that failed validation.

    A node with an error of its own still has a known output shape when its type fixes it,
    so `nodes.fetch.output.jsn` is reported even while `fetch` has a typo elsewhere.
    """
    fields: dict[str, list[str] | None] = {}
    for node_id, raw in raw_nodes.items():
        if node_id in nodes:
            fields[node_id] = nodes[node_id]["_output_fields"]
        elif isinstance(raw, dict) and "output" not in raw and "for_each" not in raw:
            fields[node_id] = _OUTPUT_FIELDS.get(raw.get("type"))
        else:
            fields[node_id] = None
    return fields


def _shell_node(raw: dict) -> dict:
    needs = raw.get("needs") if isinstance(raw.get("needs"), list) else []
    return {
        "type": raw["type"],
        "for_each": raw.get("for_each"),
        "needs": [item for item in needs if isinstance(item, str)],
        "deps": [],
    }


def _check_version(context: _Context, data: dict) -> bool:
    if "dagwright" not in data:
        context.error(
            (),
            "missing required field 'dagwright' (the language version)",
            "missing-field",
            hint="Add `dagwright: 1` as the first line.",
        )
        return "nodes" in data
    version = data["dagwright"]
    if isinstance(version, str) and version.strip() == str(models.LANGUAGE_VERSION):
        context.error(
            ("dagwright",),
            f"the language version must be a number, not the string {version!r}",
            "invalid-value",
            hint=f"Write `dagwright: {models.LANGUAGE_VERSION}` without quotes.",
        )
        return False
    if version != models.LANGUAGE_VERSION or isinstance(version, bool):
        context.error(
            ("dagwright",),
            f"unsupported language version {version!r}; this dagwright reads version"
            f" {models.LANGUAGE_VERSION}",
            "unsupported-version",
            hint="Write `dagwright: 1`, or upgrade dagwright if the file needs a newer version.",
        )
        return False
    return True


def _validate_header(context: _Context, data: dict) -> _Header | None:
    header_data = dict(data)
    # `_check_version` has already reported a missing version; do not report it twice.
    header_data.setdefault("dagwright", models.LANGUAGE_VERSION)
    if isinstance(header_data.get("nodes"), dict):
        header_data["nodes"] = {key: None for key in header_data["nodes"]}
    model = _validate(context, _Header, header_data, (), "the top level", node=None)
    if "nodes" in data and not data.get("nodes"):
        context.error(("nodes",), "the workflow has no nodes", "invalid-value", hint="Add at least one node.")
    if isinstance(data.get("name"), str) and not models.WORKFLOW_NAME.match(data["name"]):
        context.error(
            ("name",),
            f"invalid workflow name '{data['name']}'; use lowercase letters, digits, '_' and '-',"
            " starting with a letter or digit",
            "invalid-value",
        )
        return None
    return model


def _validate(
    context: _Context,
    model: type[BaseModel],
    data: Any,
    base: DataPath,
    where: str,
    *,
    node: str | None,
    report_errors: bool = True,
) -> Any:
    """Validate with pydantic, turning YAML 1.2 plain scalars back into text where a
    string is declared (`version: 1.10`, `stop: 1e3`)."""
    candidate = data
    for _ in range(2):
        try:
            return model.model_validate(candidate)
        except ValidationError as exc:
            coercions = string_coercions(exc, candidate)
            texts = [(path, context.document.source_map.scalar_text(base + path)) for path in coercions]
            texts = [(path, text) for path, text in texts if text is not None]
            if texts and candidate is data:
                candidate = copy.deepcopy(data)
                for path, text in texts:
                    _set_at(candidate, path, text)
                continue
            if report_errors:

                def report(path, message, code, hint, at_key):
                    context.error(path, message, code, node=node, hint=hint, at_key=at_key)

                report_validation_error(exc, model=model, data=candidate, base=base, where=where, report=report)
            return None
    return None


def _set_at(data: Any, path: DataPath, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _check_input_schemas(context: _Context, data: dict) -> None:
    inputs = data.get("inputs")
    if not isinstance(inputs, dict):
        return
    for name, schema in inputs.items():
        path = ("inputs", name)
        if not models.INPUT_NAME.match(name):
            context.error(
                path,
                f"invalid input name '{name}'; use letters, digits and '_', not starting with a digit",
                "invalid-value",
                at_key=True,
            )
        if isinstance(schema, dict):
            check_json_schema(schema, path, context.error, node=None)


# ---------------------------------------------------------------- nodes


def _compile_nodes(context: _Context, raw_nodes: dict, header: _Header | None) -> dict[str, dict]:
    defaults = header.defaults if header else models.Defaults()
    compiled: dict[str, dict] = {}
    for node_id, raw in raw_nodes.items():
        node = _compile_node(context, node_id, raw, defaults, raw_nodes)
        if node is not None:
            compiled[node_id] = node
    return compiled


def _compile_node(
    context: _Context, node_id: str, raw: Any, defaults: models.Defaults, node_ids: dict[str, Any]
) -> dict | None:
    path: DataPath = ("nodes", node_id)
    if not isinstance(node_id, str) or not models.NODE_ID.match(node_id):
        context.error(
            path,
            f"invalid node id '{node_id}'; use lowercase letters, digits and '_'",
            "invalid-node-id",
            node=str(node_id),
            at_key=True,
            hint=f"For example '{_suggest_node_id(str(node_id))}'.",
        )
    if not isinstance(raw, dict):
        context.error(
            path,
            f"node '{node_id}' must be a mapping with a 'type' field, got {_type_name(raw)}",
            "invalid-value",
            node=node_id,
        )
        return None
    node_type = raw.get("type")
    if node_type is None:
        context.error(
            path,
            f"node '{node_id}' has no 'type'",
            "missing-field",
            node=node_id,
            at_key=True,
            hint=f"Add one of: {', '.join(models.NODE_MODELS)}.",
        )
        return None
    if node_type not in models.NODE_MODELS:
        context.error(
            path + ("type",),
            f"unknown node type {node_type!r} in node '{node_id}'",
            "unknown-node-type",
            node=node_id,
            hint=did_you_mean(str(node_type), models.NODE_MODELS)
            or f"Known types: {', '.join(models.NODE_MODELS)}.",
        )
        return None

    model = models.NODE_MODELS[node_type]
    validated = _validate(context, model, raw, path, f"node '{node_id}'", node=node_id)
    _check_needs(context, node_id, raw, node_ids)
    variants_raw = _fallback_variants(context, node_id, raw, model)
    if validated is None:
        return None

    reported_before = len(context.diagnostics)
    variants = [_variant(context, node_id, path, validated, defaults)]
    node_is_clean = variants[0] is not None and len(context.diagnostics) == reported_before
    for index, merged in variants_raw:
        variant_model = _validate(
            context, model, merged, path, f"fallback {index + 1} of node '{node_id}'", node=node_id
        )
        # A fallback inherits the node's fields, so when the node itself failed these checks
        # the fallback would only repeat its errors at another position.
        if variant_model is not None and node_is_clean:
            variants.append(_variant(context, node_id, path + ("fallback", index), variant_model, defaults))
    if any(variant is None for variant in variants):
        return None

    line = context.document.source_map.key(path)
    return {
        "id": node_id,
        "type": node_type,
        "description": validated.description,
        "needs": list(validated.needs),
        "deps": [],
        "when": _expression_text(validated.when),
        "when_uses_status": False,
        "ready_when_overdue": [],
        "for_each": _expression_text(validated.for_each),
        "max_parallel": validated.max_parallel,
        "on_error": validated.on_error or defaults.on_error or "fail",
        "output": validated.output,
        "variants": variants,
        "_line": line.line if line else 1,
        "_output_fields": _known_output_fields(validated, variants[0]),
    }


def _suggest_node_id(node_id: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", node_id.lower()).strip("_") or "node_1"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _expression_text(value: str | bool | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _check_needs(context: _Context, node_id: str, raw: dict, node_ids: dict[str, Any]) -> None:
    # `node_ids` is the mapping of raw nodes, so membership is O(1) in files with many nodes.
    needs = raw.get("needs")
    if not isinstance(needs, list):
        return
    for index, needed in enumerate(needs):
        if not isinstance(needed, str):
            continue
        if needed == node_id:
            context.error(
                ("nodes", node_id, "needs", index),
                f"node '{node_id}' lists itself in 'needs'",
                "self-reference",
                node=node_id,
                hint="Remove it.",
            )
        elif needed not in node_ids:
            context.error(
                ("nodes", node_id, "needs", index),
                f"unknown node '{needed}' in 'needs' of node '{node_id}'",
                "unknown-reference",
                node=node_id,
                hint=did_you_mean(needed, node_ids),
            )


def _fallback_variants(
    context: _Context, node_id: str, raw: dict, model: type[models.NodeBase]
) -> list[tuple[int, dict]]:
    fallback = raw.get("fallback")
    if not isinstance(fallback, list):
        return []
    accepted = models.node_field_names(raw["type"])
    merged_variants = []
    for index, entry in enumerate(fallback):
        path = ("nodes", node_id, "fallback", index)
        if not isinstance(entry, dict):
            continue
        problems = False
        for key in entry:
            if key in ("type", "fallback", "needs", "when", "for_each", "on_error", "output"):
                context.error(
                    path + (key,),
                    f"'{key}' cannot be changed in a fallback of node '{node_id}'",
                    "invalid-fallback",
                    node=node_id,
                    at_key=True,
                    hint="A fallback overrides how the node runs (model, url, parameters,"
                    " timeout, retry), not where it sits in the graph.",
                )
                problems = True
            elif key not in accepted:
                context.error(
                    path + (key,),
                    f"unknown field '{key}' in fallback {index + 1} of node '{node_id}'",
                    "unknown-field",
                    node=node_id,
                    at_key=True,
                    hint=did_you_mean(str(key), accepted),
                )
                problems = True
        if not problems:
            merged = {key: value for key, value in raw.items() if key != "fallback"}
            merged.update(entry)
            merged_variants.append((index, merged))
    return merged_variants


def _variant(
    context: _Context, node_id: str, path: DataPath, node: models.NodeBase, defaults: models.Defaults
) -> dict | None:
    params = _params(context, node_id, path, node, defaults)
    if params is None:
        return None
    is_activity = node.type in models.ACTIVITY_TYPES
    timeout = node.timeout
    if timeout is None and is_activity:
        timeout = defaults.timeout if defaults.timeout is not None else DEFAULT_ACTIVITY_TIMEOUT
    deadline = node.deadline
    if deadline is None and is_activity:
        deadline = defaults.deadline
    return {
        "params": params,
        "timeout": timeout,
        "deadline": deadline,
        "retry": _retry(node.retry, defaults.retry),
    }


def _retry(node: models.RetryDefaults | None, defaults: models.RetryDefaults | None) -> dict:
    policy = models.RetryPolicy().model_dump()
    for layer in (defaults, node):
        if layer is not None:
            policy.update({key: value for key, value in layer.model_dump().items() if value is not None})
    return policy


def _params(
    context: _Context, node_id: str, path: DataPath, node: models.NodeBase, defaults: models.Defaults
) -> dict | None:
    common = set(models.NodeBase.model_fields) | {"type"}
    params = {
        (model_field.alias or name): getattr(node, name)
        for name, model_field in type(node).model_fields.items()
        if name not in common
    }
    params = json.loads(json.dumps(params, default=_json_default))
    node_type = node.type

    if node_type == "http":
        _http_params(params, node)
    elif node_type in ("llm", "embed"):
        return _model_params(context, node_id, path, node, params, defaults)
    elif node_type == "sql":
        return _sql_params(context, node_id, path, params)
    elif node_type == "python":
        return _python_params(context, node_id, path, params)
    elif node_type == "approval":
        params["timeout"] = node.timeout
        if params.get("form") is not None:
            check_json_schema(params["form"], path + ("form",), context.error, node=node_id)
    elif node_type == "wait":
        _wait_params(context, node_id, path, params)
    elif node_type == "workflow":
        return _workflow_params(context, node_id, path, params)
    return params


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    raise TypeError(f"cannot store {type(value).__name__} in a compiled definition")


def _http_params(params: dict, node: models.HttpNode) -> None:
    params["has_json"] = "json" in node._given_body_fields()
    status = params.get("expect_status")
    if isinstance(status, int):
        params["expect_status"] = [status]
    key = params.get("idempotency_key")
    if key is None:
        # Safe methods are not retried with side effects, so they carry no key by default.
        params["idempotency_key"] = params["method"] not in ("GET", "HEAD", "OPTIONS")


def _model_params(context, node_id, path, node, params, defaults) -> dict | None:
    layer = defaults.llm if node.type == "llm" else defaults.embed
    if layer is not None:
        for key, value in layer.model_dump().items():
            if value is not None and params.get(key) is None:
                params[key] = value
    if params.get("provider") is None:
        params["provider"] = DEFAULT_LLM_PROVIDER
    if params.get("model") is None:
        context.error(
            path,
            f"no model for {node.type} node '{node_id}'",
            "missing-field",
            node=node_id,
            at_key=True,
            hint=f"Set 'model' on the node or defaults.{node.type}.model.",
        )
        return None
    if node.type == "llm" and params.get("output_schema") is not None:
        check_json_schema(params["output_schema"], path + ("output_schema",), context.error, node=node_id)
    return params


_PLACEHOLDER = re.compile(r"\$(\d+)")


def _sql_params(context: _Context, node_id: str, path: DataPath, params: dict) -> dict | None:
    query = params["query"]
    if "{{" in query or "{%" in query:
        context.error(
            path + ("query",),
            f"templates are not allowed in the 'query' of sql node '{node_id}'",
            "template-in-query",
            node=node_id,
            hint="Write $1, $2, ... in the query and pass the values in 'params'; the driver binds them.",
        )
        return None
    used = sorted({int(number) for number in _PLACEHOLDER.findall(query)})
    count = len(params["params"])
    if used and used[-1] > count:
        context.error(
            path + ("query",),
            f"the query of sql node '{node_id}' uses ${used[-1]} but 'params' has {count} value(s)",
            "sql-params",
            node=node_id,
            hint="Add the missing values to 'params'.",
        )
    elif count > len(used) and not (used and used[-1] >= count):
        context.error(
            path + ("params",),
            f"sql node '{node_id}' passes {count} params but the query uses {len(used)} placeholder(s)",
            "sql-params",
            node=node_id,
            hint="Use every value as $1..$n in the query, or remove the extra ones.",
        )
    return params


def _python_params(context: _Context, node_id: str, path: DataPath, params: dict) -> dict | None:
    name = params["function"]
    if context.tools is None:
        return params
    names = context.tools.names()
    if name not in names:
        registered = ", ".join(names) if names else "none"
        context.error(
            path + ("function",),
            f"unknown tool '{name}' in python node '{node_id}' (registered tools: {registered})",
            "unknown-tool",
            node=node_id,
            hint=did_you_mean(name, names)
            or "Register it with @dagwright.tool and load its module (see docs/tools.md).",
        )
        return None
    tool = context.tools.get(name)
    schema = tool.arguments_schema()
    accepted = list(schema.get("properties", {}))
    for key in params["args"]:
        if key not in accepted:
            context.error(
                path + ("args", key),
                f"tool '{name}' has no argument '{key}' (node '{node_id}')",
                "unknown-field",
                node=node_id,
                at_key=True,
                hint=did_you_mean(key, accepted) or f"Arguments: {', '.join(accepted) or 'none'}.",
            )
    for key in schema.get("required", []):
        if key not in params["args"]:
            context.error(
                path + ("function",),
                f"tool '{name}' needs argument '{key}' (node '{node_id}')",
                "missing-field",
                node=node_id,
                hint="Add it under 'args'.",
            )
    params["tool_version"] = getattr(tool, "version", None)
    return params


def _wait_params(context: _Context, node_id: str, path: DataPath, params: dict) -> None:
    until = params.get("until")
    if isinstance(until, str) and "{{" not in until:
        from datetime import datetime

        try:
            datetime.fromisoformat(until.replace("Z", "+00:00"))
        except ValueError:
            context.error(
                path + ("until",),
                f"invalid time '{until}' in 'until' of node '{node_id}'",
                "invalid-value",
                node=node_id,
                hint="Use ISO 8601, e.g. 2026-12-31T09:00:00Z.",
            )


def _workflow_params(context: _Context, node_id: str, path: DataPath, params: dict) -> dict | None:
    base_dir = Path(context.document.path).parent
    if params.get("file") is not None:
        child_path = base_dir / params["file"]
        field_path = path + ("file",)
    else:
        child_path = _find_workflow_by_name(base_dir, params["name"])
        field_path = path + ("name",)
        if child_path is None:
            context.error(
                field_path,
                f"no workflow named '{params['name']}' next to {context.document.path}",
                "unknown-workflow",
                node=node_id,
                hint="Put the child workflow file in the same folder, or use 'file:'.",
            )
            return None
    if _identity(str(child_path)) in context.stack:
        chain = " -> ".join(Path(item).name for item in context.stack + (_identity(str(child_path)),))
        context.error(
            field_path,
            f"workflow node '{node_id}' includes a workflow that includes it again: {chain}",
            "cycle",
            node=node_id,
        )
        return None
    if not child_path.is_file():
        context.error(
            field_path,
            f"workflow file '{child_path}' of node '{node_id}' does not exist",
            "unknown-workflow",
            node=node_id,
            hint="Paths are relative to the file that contains the node.",
        )
        return None
    try:
        child = _compile_path(str(child_path), tools=context.tools, stack=context.stack)
    except CompileError as exc:
        context.diagnostics.extend(exc.diagnostics)
        context.error(
            field_path,
            f"workflow '{child_path}' of node '{node_id}' has {len(exc.diagnostics)} error(s),"
            " reported under that file's name",
            "child-workflow",
            node=node_id,
        )
        return None
    _check_child_inputs(context, node_id, path, params["inputs"], child)
    params["definition"] = child
    return params


def _find_workflow_by_name(base_dir: Path, name: str) -> Path | None:
    for candidate in sorted(base_dir.iterdir()):
        if candidate.suffix not in (".yaml", ".yml", ".json") or not candidate.is_file():
            continue
        try:
            head = candidate.read_text(encoding="utf-8", errors="replace")[:4096]
        except OSError:
            continue
        if re.search(rf"^name:\s*[\"']?{re.escape(name)}[\"']?\s*$", head, re.MULTILINE):
            return candidate
    return None


def _check_child_inputs(context: _Context, node_id: str, path: DataPath, given: dict, child: dict) -> None:
    declared = child["inputs"]
    for key in given:
        if key not in declared:
            context.error(
                path + ("inputs", key),
                f"workflow '{child['name']}' has no input '{key}' (node '{node_id}')",
                "unknown-field",
                node=node_id,
                at_key=True,
                hint=did_you_mean(key, declared),
            )
    for key, schema in declared.items():
        if key not in given and "default" not in schema:
            context.error(
                path,
                f"workflow '{child['name']}' needs input '{key}' (node '{node_id}')",
                "missing-field",
                node=node_id,
                at_key=True,
                hint="Pass it under 'inputs'.",
            )


_OUTPUT_FIELDS = {
    "http": ["status", "headers", "json", "text", "variant", "failed_variants"],
    "llm": ["text", "json", "model", "provider", "finish_reason", "usage", "cost_usd", "price", "repairs",
            "variant", "failed_variants"],
    "embed": ["vectors", "model", "provider", "usage", "cost_usd", "price", "variant", "failed_variants"],
    "approval": ["decision", "approved", "data", "comment", "by", "at"],
    "wait": ["waited_until"],
}


def _known_output_fields(node: models.NodeBase, variant: dict | None) -> list[str] | None:
    """Return the fields a node's output is known to have, or None when it depends on data."""
    if node.output is not None or node.for_each is not None or variant is None:
        return None
    if node.type in _OUTPUT_FIELDS:
        return _OUTPUT_FIELDS[node.type]
    if node.type == "workflow":
        return list(variant["params"]["definition"]["outputs"])
    if node.type == "transform" and isinstance(node.value, dict):
        return list(node.value)
    return None


# ---------------------------------------------------------------- expressions


_SECRET_FIELDS = {"http": ("url", "headers", "query", "json", "body", "form")}


def _check_node_expressions(checker: ExpressionChecker, node_id: str, raw: dict, node: dict) -> None:
    path: DataPath = ("nodes", node_id)
    has_items = node["for_each"] is not None
    secret_fields = _SECRET_FIELDS.get(node["type"], ())
    references: list[str] = []
    status_ids: list[str] = []

    def check(key: str, value: Any, base: DataPath, *, bare: bool = False) -> None:
        rules = ScopeRules(
            owner=node_id,
            items=has_items and key not in ("for_each", "when"),
            result=key == "output",
            secrets=key in secret_fields,
        )
        found = checker.check_structure(base + (key,), value, rules, node=node_id, bare=bare)
        references.extend(found.nodes)
        status_ids.extend(found.status_nodes)
        if key == "when":
            node["when_uses_status"] = found.uses_status
            node["ready_when_overdue"] = list(found.overdue_nodes)

    for key, value in raw.items():
        if key in ("type", "needs", "fallback"):
            continue
        check(key, value, path, bare=key in ("when", "for_each"))
    for index, entry in enumerate(raw.get("fallback") or []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                check(key, value, path + ("fallback", index))

    node["deps"] = _unique(references + status_ids + node["needs"], exclude=node_id)


def _unique(items: Iterable[str], *, exclude: str) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item != exclude and item not in seen:
            seen.append(item)
    return seen


def _check_cycles(context: _Context, dependencies: dict[str, list[str]]) -> None:
    for cycle in find_cycles(dependencies):
        context.error(
            ("nodes", cycle[0]),
            f"dependency cycle: {' -> '.join(cycle)}",
            "cycle",
            node=cycle[0],
            at_key=True,
            hint="A node cannot depend on itself through other nodes; remove one of these references.",
        )


# ---------------------------------------------------------------- result


def _assemble(context, header: _Header, nodes: dict, outputs: dict, dependencies) -> dict[str, Any]:
    order = topological_order(dependencies)
    lines = {}
    position = {node_id: index for index, node_id in enumerate(nodes)}
    for node_id, node in nodes.items():
        lines[node_id] = node.pop("_line")
        node.pop("_output_fields")
        node["deps"] = node_order(nodes, node["deps"], position)

    definition = {
        "dagwright": models.LANGUAGE_VERSION,
        "name": header.name,
        "version": header.version,
        "description": header.description,
        "inputs": header.inputs,
        "limits": json.loads(header.limits.model_dump_json()),
        "nodes": nodes,
        "order": order,
        "outputs": outputs,
    }
    definition["hash"] = definition_hash(definition)
    definition["source"] = {"file": context.document.path, "lines": lines}
    return definition


def node_order(nodes: dict, ids: list[str], position: dict[str, int] | None = None) -> list[str]:
    """Sort node ids by their position in the file.

    Pass `position` (node id -> index in `nodes`) when sorting many lists, so it is built once.
    """
    if position is None:
        position = {node_id: index for index, node_id in enumerate(nodes)}
    return sorted(ids, key=lambda node_id: position.get(node_id, len(position)))


def definition_hash(definition: dict[str, Any]) -> str:
    """Return a content hash that ignores file paths, line numbers, comments and formatting."""
    content = _without_source(definition)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _without_source(definition: dict[str, Any]) -> dict[str, Any]:
    """Return the definition without `hash` and `source`, also in embedded child definitions.

    A child's `source` contains its path as the parent was given it and its line numbers,
    so it would make the parent's hash depend on the working directory and on comments.
    """
    content = {key: value for key, value in definition.items() if key not in ("hash", "source")}
    nodes = {}
    for node_id, node in content.get("nodes", {}).items():
        variants = []
        for variant in node.get("variants", []):
            child = variant.get("params", {}).get("definition")
            if isinstance(child, dict):
                params = {**variant["params"], "definition": _without_source(child)}
                variant = {**variant, "params": params}
            variants.append(variant)
        nodes[node_id] = {**node, "variants": variants}
    content["nodes"] = nodes
    return content
