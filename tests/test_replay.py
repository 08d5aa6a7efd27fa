"""Replay the recorded history corpus (tests/histories/) against the current `DagWorkflow`.

A failure here means the interpreter now issues different commands for a run that is
already in flight, so deploying it would leave such runs stuck with a non-determinism error.
Ship the change behind `workflow.patched(...)` or Worker Versioning instead; see the section
"Shipping interpreter changes" of docs/operations.md. `tests/histories/record.py` records new
histories.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Interceptor, Replayer
from temporalio.workflow import NondeterminismError

from dagwright.interpreter import requests as interpreter_requests
from dagwright.interpreter.workflow import DagWorkflow
from dagwright.worker import PASSTHROUGH_MODULES, worker_interceptors, workflow_runner

HISTORIES_DIR = Path(__file__).parent / "histories"
MANIFEST = "manifest.json"


class _ClientWithoutInterceptors:
    """The one part of a `Client` that `worker_interceptors` reads: its own interceptor list."""

    def config(self) -> dict[str, Any]:
        return {"interceptors": []}


def corpus() -> list[tuple[Path, str]]:
    """Return (history file, workflow id) for every history of every recorded label."""
    histories = []
    for manifest in sorted(HISTORIES_DIR.glob(f"*/{MANIFEST}")):
        entries = json.loads(manifest.read_text(encoding="utf-8"))["histories"]
        for file_name, entry in entries.items():
            histories.append((manifest.parent / file_name, entry["workflow_id"]))
    return histories


def corpus_id(history: tuple[Path, str]) -> str:
    path, _ = history
    return f"{path.parent.name}/{path.stem}"


def load_history(path: Path, workflow_id: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(workflow_id, path.read_text(encoding="utf-8"))


def replayer() -> Replayer:
    """Build a replayer configured like the worker that `build_worker` creates."""
    # Only the workflow side of the interceptors matters for replay. The list comes from the
    # worker's own function, so an interceptor added there is replayed here too.
    interceptors: list[Interceptor] = worker_interceptors(cast(Client, _ClientWithoutInterceptors()))
    return Replayer(
        workflows=[DagWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(),
        interceptors=interceptors,
    )


CORPUS = corpus()


def test_corpus_is_present() -> None:
    assert len(CORPUS) >= 20, f"expected the recorded corpus under {HISTORIES_DIR}, found {len(CORPUS)} histories"


def test_every_history_file_is_in_a_manifest() -> None:
    listed = {path for path, _ in CORPUS}
    on_disk = {path for path in HISTORIES_DIR.glob("*/*.json") if path.name != MANIFEST}

    assert on_disk - listed == set(), "history files without a workflow id in their folder's manifest.json"
    assert listed - on_disk == set(), "manifest entries whose history file is missing"


@pytest.mark.parametrize("history", CORPUS, ids=corpus_id)
async def test_history_replays(history: tuple[Path, str]) -> None:
    path, workflow_id = history

    await replayer().replay_workflow(load_history(path, workflow_id), raise_on_replay_failure=True)


async def test_renamed_activity_type_fails_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    # The sandbox re-imports workflow code for every run, but passes this module through, so
    # the workflow reads the patched dict. If it stopped being passed through, the patch would
    # silently not apply and this test would prove nothing.
    assert interpreter_requests.__name__ in PASSTHROUGH_MODULES
    path, workflow_id = next(entry for entry in CORPUS if entry[0].stem == "basics")
    history = load_history(path, workflow_id)

    with monkeypatch.context() as patch:
        patch.setitem(interpreter_requests.ACTIVITY_NAMES, "python", "dagwright.python_v2")
        with pytest.raises(NondeterminismError, match="dagwright.python_v2"):
            await replayer().replay_workflow(history, raise_on_replay_failure=True)

    # The patch is undone, so later tests (and this replay) see the real activity names.
    assert interpreter_requests.ACTIVITY_NAMES["python"] == "dagwright.python"
    await replayer().replay_workflow(history, raise_on_replay_failure=True)
