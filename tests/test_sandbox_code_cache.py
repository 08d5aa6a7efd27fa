"""`SandboxCodeCache`: the workflow sandbox compiles the modules it re-imports once per process."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any

import pytest
import temporalio.workflow

import dagwright.interpreter
from dagwright.interpreter.workflow import DagWorkflow
from dagwright.worker import SandboxCodeCache, workflow_runner

WORKFLOW_MODULE = "dagwright.interpreter.workflow"


def _finders() -> list[SandboxCodeCache]:
    return [finder for finder in sys.meta_path if isinstance(finder, SandboxCodeCache)]


def test_runner_installs_one_finder() -> None:
    workflow_runner()
    workflow_runner()

    finders = _finders()
    assert len(finders) == 1
    assert sys.meta_path[0] is finders[0]
    assert {"dagwright", "dagwright.interpreter", WORKFLOW_MODULE} <= finders[0].module_names


def test_loader_returns_one_code_object() -> None:
    workflow_runner()
    finder = _finders()[0]

    first = finder.find_spec(WORKFLOW_MODULE, dagwright.interpreter.__path__)
    second = finder.find_spec(WORKFLOW_MODULE, dagwright.interpreter.__path__)

    assert first is not None
    assert second is not None
    assert first.loader is not None
    assert second.loader is not None
    assert first.loader.get_code(WORKFLOW_MODULE) is second.loader.get_code(WORKFLOW_MODULE)


def test_each_import_gets_own_module() -> None:
    # The sandbox relies on a fresh module per run, so sharing the code object must not share state.
    workflow_runner()
    finder = _finders()[0]
    classes = []
    for _ in range(2):
        spec = finder.find_spec(WORKFLOW_MODULE, dagwright.interpreter.__path__)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        classes.append(module.DagWorkflow)

    assert classes[0] is not classes[1]
    assert DagWorkflow not in classes


async def test_second_sandbox_compiles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = workflow_runner()
    definition = temporalio.workflow._Definition.must_from_class(DagWorkflow)
    runner.prepare_workflow(definition)
    compiled: list[str] = []
    original = SourceFileLoader.source_to_code

    def counting_source_to_code(self: SourceFileLoader, data: Any, path: Any, **kwargs: Any) -> Any:
        compiled.append(str(path))
        return original(self, data, path, **kwargs)

    monkeypatch.setattr(SourceFileLoader, "source_to_code", counting_source_to_code)
    # prepare_workflow builds a real sandbox instance, as the worker does for each new run.
    runner.prepare_workflow(definition)

    assert compiled == []


def test_changed_source_is_compiled_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cache_probe_{uuid.uuid4().hex}"
    source = tmp_path / f"{name}.py"
    source.write_text("VALUE = 1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    SandboxCodeCache.install([name])
    finder = _finders()[0]

    before = finder.find_spec(name, None)
    assert before is not None
    assert before.loader is not None
    old_code = before.loader.get_code(name)
    source.write_text("VALUE = 22\n", encoding="utf-8")
    after = finder.find_spec(name, None)
    assert after is not None
    assert after.loader is not None
    new_code = after.loader.get_code(name)

    assert new_code is not old_code
    module = importlib.util.module_from_spec(after)
    after.loader.exec_module(module)
    assert module.VALUE == 22
