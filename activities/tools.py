"""The registry of Python tools that ``python`` nodes may call.

A workflow names a tool by its registered name, never by an import path, so a workflow file can
only run code that the worker's operator chose to load. Tools are registered with the ``@tool``
decorator when their module is imported. A worker imports tool modules from entry points
(``load_entry_points``) or from module names and file paths (``load_module``).

Each tool's arguments are validated against its signature by a pydantic model built from the
type annotations, so ``args`` in a workflow get the same checks as any pydantic input.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

ENTRY_POINT_GROUP = "dagwright.tools"

# Dots allow namespaced names such as "finance.fetch_quote"; a leading letter keeps private
# helpers ("_x") and odd names out of workflow files.
_TOOL_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")

# The attribute that @tool sets on a function, so any registry can find tools in a module.
_TOOL_ATTRIBUTE = "__dagwright_tool__"


class ToolDefinitionError(ValueError):
    """Raised when a function cannot be a tool or clashes with a registered tool."""


class ToolNotFoundError(KeyError):
    """Raised when no tool with the requested name is registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        message = f"No tool named {self.name!r} is registered on this worker."
        matches = difflib.get_close_matches(self.name, self.known, n=1, cutoff=0.6)
        if matches:
            message += f" Did you mean {matches[0]!r}?"
        elif self.known:
            message += f" Registered tools: {', '.join(self.known)}."
        else:
            message += " No tools are registered; load a tool module on the worker."
        return message


class ToolArgumentsError(ValueError):
    """Raised when arguments do not match a tool's signature; ``errors`` lists each field."""

    def __init__(self, tool_name: str, errors: list[str]) -> None:
        self.tool_name = tool_name
        self.errors = errors
        super().__init__(f"Invalid arguments for tool {tool_name!r}: {'; '.join(errors)}.")


class ToolLoadError(ImportError):
    """Raised when a tool module or entry point cannot be imported."""


@dataclass(frozen=True)
class Tool:
    """A registered function with its name, version and argument model.

    ``description`` defaults to the first paragraph of the function's docstring.
    """

    name: str
    function: Callable[..., Any]
    version: str = "1"
    description: str | None = None
    is_async: bool = field(init=False)
    _arguments_model: type[BaseModel] = field(init=False, repr=False)
    # Model field name -> parameter name. Model fields get neutral names ("arg_0") with the
    # parameter name as alias, so parameters such as "json" or "schema" cannot clash with
    # BaseModel attributes.
    _parameter_names: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not _TOOL_NAME_PATTERN.fullmatch(self.name):
            raise ToolDefinitionError(
                f"Invalid tool name {self.name!r} for {qualified_name(self.function)}: a tool name "
                "starts with a letter and contains only letters, digits, '_', '.' and '-'."
            )
        model, parameter_names = _build_arguments_model(self.name, self.function)
        if self.description is None:
            object.__setattr__(self, "description", _first_paragraph(self.function.__doc__))
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.function))
        object.__setattr__(self, "_arguments_model", model)
        object.__setattr__(self, "_parameter_names", parameter_names)

    def arguments_schema(self) -> dict[str, Any]:
        """Return the JSON Schema of the tool's arguments (an object with one property each)."""
        schema = self._arguments_model.model_json_schema()
        schema["title"] = self.name
        if self.description:
            schema["description"] = self.description
        return schema

    def validate_arguments(self, args: dict[str, Any]) -> dict[str, Any]:
        """Return ``args`` validated and converted to the parameter types.

        Raises:
            ToolArgumentsError: listing every missing, unknown or invalid argument.
        """
        if not isinstance(args, dict):
            raise ToolArgumentsError(
                self.name, [f"arguments must be a mapping, got {type(args).__name__}"]
            )
        try:
            model = self._arguments_model.model_validate(args)
        except pydantic.ValidationError as exc:
            errors = [self._describe_error(error) for error in exc.errors()]
            raise ToolArgumentsError(self.name, errors) from None

        validated = {name: getattr(model, key) for key, name in self._parameter_names.items()}
        validated.update(model.model_extra or {})
        return validated

    def _describe_error(self, error: Any) -> str:
        location = ".".join(str(part) for part in error["loc"]) or "(arguments)"
        if error["type"] == "extra_forbidden":
            expected = ", ".join(self._parameter_names.values()) or "no arguments"
            return f"{location!r}: unknown argument (expected one of: {expected})"
        if error["type"] == "missing":
            return f"{location!r}: missing required argument"
        received = repr(error.get("input"))
        if len(received) > 80:
            received = received[:77] + "..."
        return f"{location!r}: {error['msg']} (got {received})"


class ToolRegistry:
    """Tools by name; the only place a ``python`` node can find code to run."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, tool: Tool) -> None:
        """Add ``tool``; registering the same function again replaces the entry.

        Raises:
            ToolDefinitionError: another function is registered under the same name.
        """
        existing = self._tools.get(tool.name)
        if existing is not None and not _same_function(existing.function, tool.function):
            raise ToolDefinitionError(
                f"Tool name {tool.name!r} is already registered by "
                f"{qualified_name(existing.function)}, so {qualified_name(tool.function)} cannot "
                "use it. Give one of them another name with @tool(name=...)."
            )
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool:
        """Return the tool registered as ``name``; raise ToolNotFoundError if there is none."""
        try:
            return self._tools[name]
        except KeyError:
            raise ToolNotFoundError(name, self.names()) from None

    def names(self) -> list[str]:
        """Return the registered tool names, sorted."""
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Import every entry point in ``group`` and register the tools it provides.

        An entry point may name a module (all its ``@tool`` functions are registered), a
        ``@tool`` function or a ``Tool`` instance.

        Raises:
            ToolLoadError: an entry point cannot be imported or provides no tool.
        """
        for entry_point in importlib.metadata.entry_points(group=group):
            try:
                loaded = entry_point.load()
            except Exception as exc:
                raise ToolLoadError(
                    f"Cannot load tool entry point {entry_point.name!r} = {entry_point.value!r} "
                    f"(group {group!r}): {type(exc).__name__}: {exc}"
                ) from exc
            count = self._register_object(loaded, source=f"entry point {entry_point.value!r}")
            logger.info(
                "loaded %d tool(s) from entry point %s = %s",
                count,
                entry_point.name,
                entry_point.value,
            )

    def load_module(self, spec: str, *, base_dir: Path | None = None) -> None:
        """Import a tool module and register its ``@tool`` functions.

        ``spec`` is a dotted module name (``myproject.tools``) or a path to a ``.py`` file,
        relative to ``base_dir`` (default: the current directory). A file is imported under a
        private module name derived from its absolute path, so loading it twice runs it once.

        Raises:
            ToolLoadError: the module or file cannot be found or raises while being imported.
        """
        if _looks_like_path(spec):
            module = _import_file(spec, base_dir)
        else:
            module = _import_dotted(spec)
        count = self._register_object(module, source=f"module {spec!r}")
        logger.info("loaded %d tool(s) from %s", count, spec)

    def _register_object(self, loaded: Any, *, source: str) -> int:
        if isinstance(loaded, Tool):
            self.register(loaded)
            return 1
        if isinstance(loaded, types.ModuleType):
            return self._register_module(loaded)
        if isinstance(getattr(loaded, _TOOL_ATTRIBUTE, None), Tool):
            self.register(getattr(loaded, _TOOL_ATTRIBUTE))
            return 1
        raise ToolLoadError(
            f"The {source} is of type {type(loaded).__name__}, but it must be a module, a Tool "
            "or a function decorated with @tool."
        )

    def _register_module(self, module: types.ModuleType) -> int:
        count = 0
        for value in list(vars(module).values()):
            tool_object = getattr(value, _TOOL_ATTRIBUTE, None)
            # A module may import another module's tools; those register from their own module.
            if isinstance(tool_object, Tool) and value.__module__ == module.__name__:
                self.register(tool_object)
                count += 1
        return count


default_registry = ToolRegistry()


def tool(
    name: str | None = None, *, version: str = "1", description: str | None = None
) -> Callable[[F], F]:
    """Register the decorated function as a tool in ``default_registry``.

    Works for plain and ``async`` functions and returns the function unchanged. The name
    defaults to the function's name and the description to the first paragraph of its docstring.

    Raises:
        ToolDefinitionError: the name is invalid or taken, or the signature cannot be validated.
    """

    def decorate(function: F) -> F:
        definition = Tool(
            name=name or function.__name__,
            function=function,
            version=version,
            description=description,
        )
        default_registry.register(definition)
        setattr(function, _TOOL_ATTRIBUTE, definition)
        return function

    return decorate


def qualified_name(function: Callable[..., Any]) -> str:
    """Return ``module.qualname`` of a function, for messages."""
    module = getattr(function, "__module__", None) or "<unknown module>"
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"


def _build_arguments_model(
    tool_name: str, function: Callable[..., Any]
) -> tuple[type[BaseModel], dict[str, str]]:
    try:
        signature = inspect.signature(function)
        hints = _parameter_hints(function)
    except (TypeError, ValueError, NameError) as exc:
        raise ToolDefinitionError(
            f"Cannot read the signature of {qualified_name(function)} for tool {tool_name!r}: {exc}"
        ) from exc

    fields: dict[str, Any] = {}
    parameter_names: dict[str, str] = {}
    accepts_extra = False
    for index, parameter in enumerate(signature.parameters.values()):
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_extra = True
            continue
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise ToolDefinitionError(
                f"Tool {tool_name!r} ({qualified_name(function)}) has the positional-only "
                f"parameter {parameter.name!r}, but tools are called with keyword arguments only."
            )
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        annotation = hints.get(parameter.name, Any)
        key = f"arg_{index}"
        fields[key] = (annotation, Field(default, alias=parameter.name))
        parameter_names[key] = parameter.name

    config = ConfigDict(extra="allow" if accepts_extra else "forbid", validate_default=False)
    try:
        model = pydantic.create_model(f"{tool_name}_arguments", __config__=config, **fields)
        model.model_json_schema()
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError) as exc:
        raise ToolDefinitionError(
            f"Cannot build an argument model for tool {tool_name!r} ({qualified_name(function)}): "
            f"{exc}. Annotate every parameter with a JSON-compatible type or a pydantic model."
        ) from exc
    return model, parameter_names


def _parameter_hints(function: Callable[..., Any]) -> dict[str, Any]:
    # The return annotation is left out: it is not validated, and it may name a type that the
    # module imports only for type checkers.
    unwrapped = inspect.unwrap(function)
    annotations = dict(getattr(unwrapped, "__annotations__", {}))
    annotations.pop("return", None)
    holder = types.SimpleNamespace(__annotations__=annotations)
    return typing.get_type_hints(
        holder, globalns=getattr(unwrapped, "__globals__", {}), include_extras=True
    )


def _same_function(first: Callable[..., Any], second: Callable[..., Any]) -> bool:
    # Importing a module again, or the same file under another module name, creates new function
    # objects for the same code, which is still the same tool.
    if first is second or qualified_name(first) == qualified_name(second):
        return True
    source = _source_file(first)
    return (
        source is not None
        and source == _source_file(second)
        and getattr(first, "__qualname__", None) == getattr(second, "__qualname__", None)
    )


def _source_file(function: Callable[..., Any]) -> str | None:
    code = getattr(function, "__code__", None)
    return None if code is None else str(Path(code.co_filename).resolve())


def _first_paragraph(docstring: str | None) -> str | None:
    if not docstring:
        return None
    paragraph = inspect.cleandoc(docstring).split("\n\n", 1)[0]
    return " ".join(paragraph.split()) or None


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _import_dotted(spec: str) -> types.ModuleType:
    try:
        return importlib.import_module(spec)
    except Exception as exc:
        raise ToolLoadError(
            f"Cannot import tool module {spec!r}: {type(exc).__name__}: {exc}. Check that the "
            "module is installed in the worker's environment and imports without errors."
        ) from exc


def _import_file(spec: str, base_dir: Path | None) -> types.ModuleType:
    path = Path(spec)
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    path = path.resolve()
    if not path.is_file():
        raise ToolLoadError(f"Tool module file {spec!r} not found (looked for {path}).")

    digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:12]
    module_name = f"_dagwright_tools_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]

    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ToolLoadError(f"Cannot import tool module file {path}: not a Python source file.")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before running so pydantic and dataclasses can find the module by name.
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ToolLoadError(
            f"Cannot import tool module file {path}: {type(exc).__name__}: {exc}"
        ) from exc
    return module
