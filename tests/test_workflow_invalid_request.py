"""A run started with a request the compiler never produced fails at once and names the cause."""

from __future__ import annotations

import uuid

import pytest
from workflow_helpers import dag_worker, wait_for_outcome

from dagwright.interpreter.run_types import WORKFLOW_TYPE, RunRequest

INVALID_DEFINITIONS = {
    "no nodes": ({"name": "broken"}, "KeyError: 'nodes'"),
    "node without deps": (
        {"name": "broken", "nodes": {"a": {"type": "transform"}}, "order": ["a"]},
        "node 'a' has no deps, variants",
    ),
    "node not a mapping": (
        {"name": "broken", "nodes": {"a": ["transform"]}, "order": ["a"]},
        "node 'a' is list, not a mapping",
    ),
}


@pytest.mark.parametrize("case", list(INVALID_DEFINITIONS))
async def test_invalid_definition_fails_run(client, task_queue, case):
    definition, expected = INVALID_DEFINITIONS[case]
    async with dag_worker(client, task_queue):
        handle = await client.start_workflow(
            WORKFLOW_TYPE, RunRequest(definition=definition), id=f"invalid-{uuid.uuid4()}", task_queue=task_queue
        )
        outcome = await wait_for_outcome(handle, timeout=30)

    assert outcome.failure is not None
    assert "invalid run request" in outcome.error_message
    assert expected in outcome.error_message
    assert "dagwright compile" in outcome.error_message
