"""llm and embed nodes inside `DagWorkflow`, on a real worker, against the LLM stand-in over HTTP.

Each test starts a worker whose `LlmActivities` point the provider `mistral` (kind mistral) and
the provider `local` (kind openai) at one `LlmStandIn`. It runs a workflow file on the session's
dev server and checks the run's result, its state and the requests the stand-in received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import pytest
from dagwright.activities.llm.activity import LlmActivities
from dagwright.activities.llm.config import load_prices
from dagwright.interpreter.run_types import BudgetIncrease
from dagwright.testing.llm_embeddings import embed
from dagwright.testing.llm_server import LlmStandIn
from dagwright.worker import WorkerOptions, build_worker
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from workflow_helpers import (
    TOOLS,
    RunOutcome,
    compile_yaml,
    history_events,
    run_definition,
    start_run,
    wait_for_outcome,
)

SMALL = "mistral-small-latest"
LARGE = "mistral-large-latest"
EMBED = "mistral-embed"
LOCAL_MODEL = "llama3.1:8b"
LOCAL_KEY_ENV = "LOCAL_LLM_KEY"

# Fast retries keep the tests short. A server's Retry-After still overrides the interval.
FAST_RETRY = "{max_attempts: 3, initial_interval: 100ms, backoff: 1.0, max_interval: 100ms}"

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "urgent": {"type": "boolean"}},
    "required": ["label", "urgent"],
    "additionalProperties": False,
}
SCHEMA_YAML = """
    output_schema:
      type: object
      properties: {label: {type: string}, urgent: {type: boolean}}
      required: [label, urgent]
      additionalProperties: false"""

PROMPT = "Label this ticket: the invoice total is wrong."
VALID = {"label": "billing", "urgent": True}


# ---------------------------------------------------------------- worker and runs


def provider_settings(stand_in: LlmStandIn) -> dict[str, Any]:
    """Return the [providers] tables of a dagwright.toml that point at the stand-in."""
    return {
        "providers": {
            "mistral": {"kind": "mistral", "base_url": stand_in.base_url},
            "local": {"kind": "openai", "base_url": stand_in.openai_base_url, "api_key_env": LOCAL_KEY_ENV},
        }
    }


@asynccontextmanager
async def llm_worker(client: Client, task_queue: str, stand_in: LlmStandIn,
                     environ: Mapping[str, str] | None = None) -> AsyncIterator[None]:
    """Run a worker whose providers call the stand-in with its key, unless `environ` overrides it."""
    keys = {"MISTRAL_API_KEY": stand_in.api_key, LOCAL_KEY_ENV: stand_in.api_key, **(environ or {})}
    llm = LlmActivities.from_config(provider_settings(stand_in), keys)
    async with build_worker(client, WorkerOptions(task_queue=task_queue), registry=TOOLS, llm=llm):
        yield


async def run_llm_yaml(client: Client, task_queue: str, folder: Path, stand_in: LlmStandIn, text: str, *,
                       inputs: Mapping[str, Any] | None = None,
                       environ: Mapping[str, str] | None = None) -> RunOutcome:
    """Compile `text`, run it on a worker wired to the stand-in and return the outcome."""
    definition = compile_yaml(folder, text.replace("FAST_RETRY", FAST_RETRY))
    async with llm_worker(client, task_queue, stand_in, environ):
        return await run_definition(client, task_queue, definition, inputs)


def classify_workflow(node_fields: str = "", *, name: str = "classify") -> str:
    """Return a workflow with one `classify` llm node using SCHEMA, whose output is the run's output."""
    return f"""
dagwright: 1
name: {name}
nodes:
  classify:
    type: llm
    model: {SMALL}
    prompt: "{PROMPT}"
    retry: FAST_RETRY{SCHEMA_YAML}{node_fields}
outputs:
  answer: "{{{{ nodes.classify.output }}}}"
"""


async def retry_failures(handle: WorkflowHandle) -> list[tuple[int, str, float]]:
    """Return (attempt, failure type, requested delay) for each retried activity start.

    The failure type and the delay in seconds (0 when none was requested) are those of the
    previous attempt's failure.
    """
    found = []
    for event in await history_events(handle):
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            continue
        attributes = event.activity_task_started_event_attributes
        if attributes.HasField("last_failure"):
            info = attributes.last_failure.application_failure_info
            found.append((attributes.attempt, info.type, info.next_retry_delay.ToTimedelta().total_seconds()))
    return found


async def wait_for_state(handle: WorkflowHandle, key: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """Query the run's state until `key` is set, and return that state."""
    async with asyncio.timeout(timeout):
        while True:
            state = await handle.query("state")
            if state.get(key) is not None:
                return state
            await asyncio.sleep(0.05)


class ArrivalClock:
    """Record the time at which each request reaches the stand-in, polling its list every 5 ms.

    The stand-in records requests without a time, so the arrival time is known to within one
    polling interval.
    """

    def __init__(self, stand_in: LlmStandIn) -> None:
        self._stand_in = stand_in
        self.arrivals: list[float] = []
        self._task: asyncio.Task | None = None

    async def _poll(self) -> None:
        while True:
            count = len(self._stand_in.requests)
            while len(self.arrivals) < count:
                self.arrivals.append(time.monotonic())
            await asyncio.sleep(0.005)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def list_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Return the cost in USD of one call at the shipped Mistral list price of `model`."""
    price = load_prices({}).price(model, "mistral")
    assert price is not None, f"no shipped price for {model}"
    return (prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million) / 1_000_000


# ---------------------------------------------------------------- structured output


async def test_schema_output_valid_first_try(client: Client, task_queue: str, tmp_path: Path,
                                             llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.add_rule(reply={"json": VALID})

    outcome = await run_llm_yaml(client, task_queue, tmp_path, llm_stand_in, classify_workflow())

    assert outcome.failure is None
    answer = outcome.result["outputs"]["answer"]
    assert answer["json"] == VALID
    assert answer["text"] == '{"label": "billing", "urgent": true}'
    assert answer["repairs"] == 0
    assert (answer["model"], answer["provider"], answer["finish_reason"]) == (SMALL, "mistral", "stop")
    assert answer["usage"] == llm_stand_in.usage_total()
    assert [request.status for request in llm_stand_in.requests] == [200]
    assert outcome.node("classify")["attempt"] == 1


async def test_invalid_json_repaired_on_second_turn(client: Client, task_queue: str, tmp_path: Path,
                                                    llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.add_rule(reply="Sure! The label is billing.", times=1)
    llm_stand_in.add_rule(reply={"json": VALID})

    outcome = await run_llm_yaml(client, task_queue, tmp_path, llm_stand_in, classify_workflow())

    assert outcome.failure is None
    answer = outcome.result["outputs"]["answer"]
    assert answer["json"] == VALID
    assert answer["repairs"] == 1
    assert answer["usage"] == llm_stand_in.usage_total()
    first, second = llm_stand_in.requests
    assert [first.status, second.status] == [200, 200]
    assert first.body["messages"] == [{"role": "user", "content": PROMPT}]
    assert second.body["messages"] == [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "Sure! The label is billing."},
        {
            "role": "user",
            "content": "Your previous answer cannot be used: the answer is not valid JSON "
            "(Expecting value: line 1 column 1 (char 0)). Reply with only the corrected JSON "
            "value, without explanations or code fences.",
        },
    ]
    # The repair turn is part of the same attempt, not a Temporal retry.
    assert outcome.node("classify")["attempt"] == 1


async def test_exhausted_repairs_fall_back_to_other_model(client: Client, task_queue: str, tmp_path: Path,
                                                          llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.add_rule(model=SMALL, reply={"json": {"label": "billing"}})
    llm_stand_in.add_rule(model=LARGE, reply={"json": VALID})
    fallback = f"\n    fallback:\n      - {{model: {LARGE}}}"

    outcome = await run_llm_yaml(client, task_queue, tmp_path, llm_stand_in, classify_workflow(fallback))

    assert outcome.failure is None
    answer = outcome.result["outputs"]["answer"]
    assert answer["json"] == VALID
    assert answer["model"] == LARGE
    assert answer["variant"] == 1
    assert answer["failed_variants"] == [
        {
            "variant": 0,
            "attempts": 1,
            "error": f"llm node 'classify': the output of model '{SMALL}' did not match output_schema "
            "after 2 repair turn(s): the JSON does not match the schema: at $: 'urgent' is a "
            "required property. Make the prompt describe the expected JSON, raise "
            "repair_attempts, or fall back to a stronger model.",
        }
    ]
    # The first reply and both repair turns went to the small model, then one call to the large one.
    assert [request.model for request in llm_stand_in.requests] == [SMALL, SMALL, SMALL, LARGE]
    assert outcome.node("classify")["variant"] == 1
    # The failed variant's tokens still count in the run's usage.
    by_model = outcome.result["usage"]["by_model"]
    assert by_model[SMALL]["total_tokens"] == llm_stand_in.usage_total(SMALL)["total_tokens"]
    assert by_model[LARGE]["total_tokens"] == llm_stand_in.usage_total(LARGE)["total_tokens"]


# ---------------------------------------------------------------- provider failures


async def test_rate_limit_waits_for_retry_after(client: Client, task_queue: str, tmp_path: Path,
                                                llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.add_rule(fail={"kind": "rate_limit", "retry_after": 1}, times=1)
    llm_stand_in.add_rule(reply={"json": VALID})

    async with ArrivalClock(llm_stand_in) as clock:
        outcome = await run_llm_yaml(client, task_queue, tmp_path, llm_stand_in, classify_workflow())

    assert outcome.failure is None
    assert outcome.result["outputs"]["answer"]["json"] == VALID
    assert [request.status for request in llm_stand_in.requests] == [429, 200]
    assert len(clock.arrivals) == 2
    # The node's own retry interval is 100 ms, so only Retry-After explains a wait of a second.
    assert 0.9 <= clock.arrivals[1] - clock.arrivals[0] < 5.0
    # On the test dev server (Temporal CLI 1.9.1) a retry asked for after 100 ms also arrived about
    # 0.9 s after the first attempt, so the gap alone cannot tell Retry-After from the backoff.
    # The delay that the failure asked for can.
    assert await retry_failures(outcome.handle) == [(2, "LlmRateLimited", 1.0)]


@pytest.mark.parametrize("status", [503, 429])
async def test_capacity_error_is_retried(client: Client, task_queue: str, tmp_path: Path,
                                         llm_stand_in: LlmStandIn, status: int) -> None:
    llm_stand_in.add_rule(fail={"kind": "capacity", "status": status}, times=1)
    llm_stand_in.add_rule(reply={"json": VALID})

    outcome = await run_llm_yaml(client, task_queue, tmp_path, llm_stand_in, classify_workflow())

    assert outcome.failure is None
    assert outcome.result["outputs"]["answer"]["json"] == VALID
    assert [request.status for request in llm_stand_in.requests] == [status, 200]
    assert outcome.node("classify")["attempt"] == 2
    [(attempt, failure_type, delay)] = await retry_failures(outcome.handle)
    assert (attempt, failure_type) == (2, "LlmCapacity")
    # Without Retry-After: the node's 100 ms interval stretched by up to 50 % of jitter.
    assert 0.1 <= delay <= 0.15


async def test_wrong_key_fails_at_once(client: Client, task_queue: str, tmp_path: Path,
                                       llm_stand_in: LlmStandIn) -> None:
    outcome = await run_llm_yaml(client, task_queue, tmp_path, llm_stand_in, classify_workflow(),
                                 environ={"MISTRAL_API_KEY": "not-the-key"})

    assert outcome.failure is not None
    assert len(llm_stand_in.requests) == 1
    assert llm_stand_in.requests[0].status == 401
    assert outcome.elapsed < 5.0
    assert outcome.node("classify")["attempt"] == 1
    message = outcome.error_message
    assert message.startswith("node 'classify' failed after 1 attempt: ")
    assert "provider 'mistral' rejected the API key (401: Unauthorized)" in message
    assert "set MISTRAL_API_KEY on the worker to a valid key" in message
    assert "not-the-key" not in message


async def test_unknown_model_falls_back_to_local_provider(client: Client, task_queue: str, tmp_path: Path,
                                                          llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.add_rule(model=LOCAL_MODEL, reply="A reply from the local model.")
    text = f"""
dagwright: 1
name: unknown-model
nodes:
  draft:
    type: llm
    model: mistral-tiny-retired
    prompt: "Draft a reply."
    retry: FAST_RETRY
    fallback:
      - {{provider: local, model: "{LOCAL_MODEL}"}}
outputs:
  answer: "{{{{ nodes.draft.output }}}}"
"""

    outcome = await run_llm_yaml(client, task_queue, tmp_path, llm_stand_in, text)

    assert outcome.failure is None
    answer = outcome.result["outputs"]["answer"]
    assert (answer["text"], answer["model"], answer["provider"]) == (
        "A reply from the local model.", LOCAL_MODEL, "local")
    assert answer["variant"] == 1
    [failed] = answer["failed_variants"]
    assert (failed["variant"], failed["attempts"]) == (0, 1)
    assert failed["error"].startswith(
        "llm node 'draft': provider 'mistral' does not know model 'mistral-tiny-retired'")
    first, second = llm_stand_in.requests
    assert (first.path, first.status) == ("/v1/chat/completions", 400)
    assert (second.path, second.status) == ("/openai/v1/chat/completions", 200)
    assert second.body == {"model": LOCAL_MODEL, "messages": [{"role": "user", "content": "Draft a reply."}]}
    # The local model has no price, so its cost is unknown rather than zero.
    assert answer["cost_usd"] is None


# ---------------------------------------------------------------- usage and budget


async def test_usage_totals_match_stand_in(client: Client, task_queue: str, tmp_path: Path,
                                           llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.add_rule(model=SMALL, reply="no JSON here", times=1)
    llm_stand_in.add_rule(model=SMALL, reply={"json": VALID})
    llm_stand_in.add_rule(model=LARGE, reply="A summary of the ticket in one sentence.")
    text = f"""
dagwright: 1
name: usage
nodes:
  classify:
    type: llm
    model: {SMALL}
    prompt: "{PROMPT}"{SCHEMA_YAML}
  summarize:
    type: llm
    model: {LARGE}
    prompt: "Summarize: {{{{ nodes.classify.output.json.label }}}}"
  vectors:
    type: embed
    model: {EMBED}
    input: ["first text", "second text"]
"""

    outcome = await run_llm_yaml(client, task_queue, tmp_path, llm_stand_in, text)

    assert outcome.failure is None
    expected_by_model = {}
    for model in (EMBED, LARGE, SMALL):
        used = llm_stand_in.usage_total(model)
        cost = sum(list_cost(model, r.usage["prompt_tokens"], r.usage["completion_tokens"])
                   for r in llm_stand_in.requests if r.model == model and r.usage is not None)
        expected_by_model[model] = {"calls": 1, **used, "cost_usd": pytest.approx(cost, abs=1e-8)}
    total = llm_stand_in.usage_total()
    usage = outcome.result["usage"]
    assert usage["by_model"] == expected_by_model
    assert usage["total_tokens"] == total["total_tokens"]
    assert usage["cost_usd"] == pytest.approx(sum(e["cost_usd"].expected for e in expected_by_model.values()),
                                              abs=1e-8)
    # The small model's first reply and its repair turn, the large model, the embedding.
    assert llm_stand_in.model_counts() == {SMALL: 2, LARGE: 1, EMBED: 1}
    assert outcome.state["usage"] == usage


BUDGET_WORKFLOW = """
dagwright: 1
name: budget
limits:
  budget: {max_tokens: 1000, on_exceed: ON_EXCEED}
nodes:
  first: {type: llm, model: MODEL, prompt: "Step one", max_tokens: 400}
  second: {type: llm, model: MODEL, prompt: "Step two", max_tokens: 400, needs: [first]}
  third: {type: llm, model: MODEL, prompt: "Step three", max_tokens: 400, needs: [second]}
outputs:
  last: "{{ nodes.third.output.text }}"
"""
# 1,600 characters, which the stand-in counts as exactly 400 completion tokens.
LONG_REPLY = "word " * 320


def budget_workflow(on_exceed: str) -> str:
    return BUDGET_WORKFLOW.replace("ON_EXCEED", on_exceed).replace("MODEL", SMALL)


async def test_budget_stops_before_exceeding_call(client: Client, task_queue: str, tmp_path: Path,
                                                  llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.set_default_reply(LONG_REPLY)

    outcome = await run_llm_yaml(client, task_queue, tmp_path, llm_stand_in, budget_workflow("fail"))

    # Two calls of about 402 tokens each fit in 1,000. A third could use 400 more, so it is not sent.
    assert [request.body["messages"][0]["content"] for request in llm_stand_in.requests] == [
        "Step one", "Step two"]
    used = llm_stand_in.usage_total()["total_tokens"]
    assert 800 < used <= 1000
    assert outcome.failure is not None
    message = outcome.error_message
    assert message.startswith("budget exceeded before node 'third': ")
    assert f"the run has used {used} tokens" in message
    assert "over limits.budget.max_tokens = 1000" in message
    assert outcome.statuses()["third"] != "succeeded"


async def test_budget_approval_waits_for_raise(client: Client, task_queue: str, tmp_path: Path,
                                               llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.set_default_reply(LONG_REPLY)
    definition = compile_yaml(tmp_path, budget_workflow("approval"))

    async with llm_worker(client, task_queue, llm_stand_in):
        handle = await start_run(client, task_queue, definition)
        waiting = await wait_for_state(handle, "budget_request")
        sent_while_waiting = len(llm_stand_in.requests)
        raised = await handle.execute_update(
            "raise_budget", BudgetIncrease(max_tokens=5000, by="tester", comment="one more step"),
            result_type=dict)
        outcome = await wait_for_outcome(handle)

    assert waiting["status"] == "waiting_approval"
    request = waiting["budget_request"]
    assert (request["node"], request["index"]) == ("third", None)
    assert "over limits.budget.max_tokens = 1000" in request["reason"]
    assert waiting["nodes"]["third"]["waiting_for"].startswith("waiting for a budget increase")
    assert sent_while_waiting == 2
    assert raised["max_tokens"] == 5000

    assert outcome.failure is None
    assert outcome.result["outputs"]["last"] == LONG_REPLY
    assert len(llm_stand_in.requests) == 3
    assert outcome.state["budget_request"] is None
    [control] = outcome.state["control"]
    assert (control["action"], control["by"], control["reason"]) == ("raise_budget", "tester", "one more step")


# ---------------------------------------------------------------- request bodies and embeddings


async def test_mistral_requests_contain_only_api_fields(client: Client, task_queue: str, tmp_path: Path,
                                                        llm_stand_in: LlmStandIn) -> None:
    llm_stand_in.add_rule(contains="Label", reply={"json": VALID})
    text = f"""
dagwright: 1
name: bodies
inputs:
  ticket: {{type: string}}
nodes:
  classify:
    type: llm
    model: {SMALL}
    system: You label tickets.
    prompt: "Label this ticket: {{{{ inputs.ticket }}}}"
    temperature: 0.2
    top_p: 0.9
    max_tokens: 100
    random_seed: 7
    stop: ["\\n\\n"]{SCHEMA_YAML}
  chat:
    type: llm
    model: {LARGE}
    messages:
      - {{role: system, content: Be brief.}}
      - {{role: user, content: "{{{{ nodes.classify.output.json }}}}"}}
  vectors:
    type: embed
    model: {EMBED}
    input: "{{{{ inputs.ticket }}}}"
"""

    outcome = await run_llm_yaml(client, task_queue, tmp_path, llm_stand_in, text,
                                 inputs={"ticket": "the invoice total is wrong."})

    assert outcome.failure is None
    bodies = {request.model: (request.path, request.status, request.body) for request in llm_stand_in.requests}
    assert bodies == {
        SMALL: ("/v1/chat/completions", 200, {
            "model": SMALL,
            "messages": [
                {"role": "system", "content": "You label tickets."},
                {"role": "user", "content": PROMPT},
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 100,
            "random_seed": 7,
            "stop": ["\n\n"],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "classify", "schema": SCHEMA, "strict": True},
            },
        }),
        LARGE: ("/v1/chat/completions", 200, {
            "model": LARGE,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": '{"label": "billing", "urgent": true}'},
            ],
        }),
        EMBED: ("/v1/embeddings", 200, {"model": EMBED, "input": ["the invoice total is wrong."]}),
    }
    assert len(llm_stand_in.requests) == 3


async def test_embed_node_returns_vectors_usage_cost(client: Client, task_queue: str, tmp_path: Path,
                                                     llm_stand_in: LlmStandIn) -> None:
    texts = ["refund my order", "the app crashes on start"]
    text = f"""
dagwright: 1
name: embeddings
inputs:
  texts: {{type: array, items: {{type: string}}}}
nodes:
  vectors:
    type: embed
    model: {EMBED}
    input: "{{{{ inputs.texts }}}}"
outputs:
  embedded: "{{{{ nodes.vectors.output }}}}"
"""

    outcome = await run_llm_yaml(client, task_queue, tmp_path, llm_stand_in, text, inputs={"texts": texts})

    assert outcome.failure is None
    embedded = outcome.result["outputs"]["embedded"]
    used = llm_stand_in.usage_total()
    assert embedded == {
        "vectors": [embed(item, 1024) for item in texts],
        "model": EMBED,
        "provider": "mistral",
        "usage": {"prompt_tokens": used["prompt_tokens"], "total_tokens": used["total_tokens"]},
        "cost_usd": pytest.approx(list_cost(EMBED, used["prompt_tokens"], 0), abs=1e-12),
        "price": {"input_per_million": 0.1, "output_per_million": 0.0},
    }
    assert used["prompt_tokens"] > 0
    [request] = llm_stand_in.requests
    assert request.body == {"model": EMBED, "input": texts}
