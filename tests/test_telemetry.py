"""Traces, metrics and logs of real runs: span tree, Prometheus endpoint, JSON logs, secrets.

Spans go to the real OpenTelemetry SDK with an in-memory exporter. Metrics are scraped over
HTTP from the Prometheus endpoint of a Temporal runtime of the test's own. The LLM node calls
the stand-in server from `dagwright.testing`, and HTTP nodes call `HttpStub`.
"""

from __future__ import annotations

import base64
import io
import json
import re
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dagwright.activities.llm.activity import LlmActivities
from dagwright.activities.log_records import RedactingFilter, SecretRedactor
from dagwright.cli.telemetry_setup import configure_logging, create_runtime
from dagwright.testing.llm_server import LlmStandIn
from dagwright.worker import WorkerOptions, build_worker
from http_stub import HttpStub, Reply
from workflow_helpers import TOOLS, compile_yaml, start_run, wait_for_outcome

SECRET_VALUE = "tok-7f3a9c-very-secret"

# fetch retries once (500, then 200), classify calls the LLM stand-in, shout and done run tools.
FOUR_NODES = """
dagwright: 1
name: traced
version: "3"
nodes:
  fetch:
    type: http
    url: STUB/fetch
    retry: {max_attempts: 3, initial_interval: 0.1s}
  classify:
    type: llm
    model: mistral-small-latest
    prompt: "Label: {{ nodes.fetch.output.json.text }}"
  shout:
    type: python
    function: echo
    args: {value: "{{ nodes.classify.output.text }}"}
  done:
    type: python
    function: echo
    args: {value: 1}
    needs: [shout]
outputs:
  usage: "{{ nodes.classify.output.usage }}"
  cost: "{{ nodes.classify.output.cost_usd }}"
  model: "{{ nodes.classify.output.model }}"
"""

# Like FOUR_NODES, but `shout` fails permanently and succeeds on its fallback variant.
WITH_FALLBACK = FOUR_NODES.replace("name: traced", "name: metered").replace(
    """    function: echo
    args: {value: "{{ nodes.classify.output.text }}"}""",
    """    function: fail
    args: {message: first variant fails}
    fallback:
      - function: echo
        args: {value: second variant}""",
)

# Labels every Temporal metric carries; the assertions below ignore them.
_COMMON_LABELS = {"namespace", "service_name", "task_queue", "activity_type", "workflow_type"}


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(span_exporter: InMemorySpanExporter) -> Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    return provider.get_tracer("dagwright-tests")


@pytest_asyncio.fixture
async def traced_client(temporal_env: WorkflowEnvironment, tracer: Tracer) -> Client:
    """A client of the session's server with Temporal's tracing interceptor on the test tracer."""
    return await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace=temporal_env.client.namespace,
        data_converter=pydantic_data_converter,
        interceptors=[TracingInterceptor(tracer)],
    )


@pytest_asyncio.fixture
async def stub() -> AsyncIterator[HttpStub]:
    async with HttpStub() as server:
        yield server


def llm_activities(stand_in: LlmStandIn) -> LlmActivities:
    """Return LLM activities whose built-in `mistral` provider is the stand-in."""
    return LlmActivities.from_config({}, {
        "DAGWRIGHT_PROVIDER_MISTRAL_BASE_URL": stand_in.base_url,
        "MISTRAL_API_KEY": stand_in.api_key,
    })


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Capture every log record as a JSON line, as `dagwright worker --log-format json` writes them."""
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("json", logging.DEBUG, stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def log_entries(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


# ---------------------------------------------------------------- traces


def span_tree(spans: list[ReadableSpan], root: ReadableSpan) -> tuple:
    """Return (name, node attributes, status, children) with children in a stable order."""
    children = [span for span in spans if span.parent is not None and span.parent.span_id == root.context.span_id]
    is_node = root.name.startswith("node ")
    return (
        root.name,
        dict(root.attributes or {}) if is_node else {},
        root.status.status_code.name if is_node else "",
        tuple(sorted((span_tree(spans, child) for child in children), key=repr)),
    )


def ordered(tree: tuple) -> tuple:
    name, attributes, status, children = tree
    return name, attributes, status, tuple(sorted((ordered(child) for child in children), key=repr))


def leaf(name: str) -> tuple:
    return (name, {}, "", ())


async def test_span_tree_of_four_node_run(traced_client: Client, task_queue: str, tmp_path: Path,
                                          stub: HttpStub, llm_stand_in: LlmStandIn,
                                          span_exporter: InMemorySpanExporter, tracer: Tracer) -> None:
    """One span per node attempt sits under Temporal's RunActivity span, with run and GenAI attributes."""
    stub.script("/fetch", Reply(status=500), Reply(json={"text": "the invoice total is wrong"}))
    definition = compile_yaml(tmp_path, FOUR_NODES.replace("STUB", stub.url))
    async with build_worker(traced_client, WorkerOptions(task_queue=task_queue), registry=TOOLS,
                            llm=llm_activities(llm_stand_in), tracer=tracer):
        handle = await start_run(traced_client, task_queue, definition)
        result = await handle.result()

    spans = list(span_exporter.get_finished_spans())
    root = next(span for span in spans if span.name == "StartWorkflow:DagWorkflow")
    in_trace = [span for span in spans if span.context.trace_id == root.context.trace_id]
    outputs = result["outputs"]
    run = {
        "dagwright.run_id": handle.id,
        "dagwright.temporal_run_id": handle.result_run_id,
        "dagwright.workflow": "traced",
        "dagwright.workflow_version": "3",
        "dagwright.definition_hash": definition["hash"],
    }

    def node(node_id: str, node_type: str, attempt: int, outcome: str, status: str = "UNSET",
             **extra: Any) -> tuple:
        attributes = {**run, "dagwright.node_id": node_id, "dagwright.node_type": node_type,
                      "dagwright.attempt": attempt, "dagwright.activity_id": node_id,
                      "dagwright.outcome": outcome, **extra}
        return (f"node {node_id}", attributes, status, ())

    def activity(activity_type: str, *attempts: tuple) -> tuple:
        runs = tuple((f"RunActivity:{activity_type}", {}, "", (attempt,)) for attempt in attempts)
        return (f"StartActivity:{activity_type}", {}, "", runs)

    llm_attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "mistral",
        "gen_ai.system": "mistral",
        "gen_ai.request.model": "mistral-small-latest",
        "gen_ai.response.model": outputs["model"],
        "gen_ai.usage.input_tokens": outputs["usage"]["prompt_tokens"],
        "gen_ai.usage.output_tokens": outputs["usage"]["completion_tokens"],
        "dagwright.cost_usd": outputs["cost"],
    }
    expected = ("StartWorkflow:DagWorkflow", {}, "", (
        leaf("RunWorkflow:DagWorkflow"),
        activity("dagwright.http",
                 node("fetch", "http", 1, "retrying", "ERROR", **{"error.type": "HttpServerError"}),
                 node("fetch", "http", 2, "succeeded")),
        activity("dagwright.llm", node("classify", "llm", 1, "succeeded", **llm_attributes)),
        activity("dagwright.python", node("shout", "python", 1, "succeeded")),
        activity("dagwright.python", node("done", "python", 1, "succeeded")),
        leaf("CompleteWorkflow:DagWorkflow"),
    ))
    assert span_tree(in_trace, root) == ordered(expected)
    assert outputs["usage"]["prompt_tokens"] > 0


# ---------------------------------------------------------------- metrics


def free_port() -> int:
    # The Temporal runtime cannot report the port it bound, so the test picks one first.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def parse_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Parse Prometheus text format into {(name, labels without the common ones): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, label_text = series.partition("{")
        labels = []
        for pair in label_text.rstrip("}").split(","):
            if "=" in pair:
                key, _, raw = pair.partition("=")
                if key not in _COMMON_LABELS:
                    labels.append((key, raw.strip('"')))
        samples[(name, frozenset(labels))] = float(value)
    return samples


def labels(**values: str) -> frozenset:
    return frozenset(values.items())


@pytest_asyncio.fixture
async def metered_env(temporal_executable: Path) -> AsyncIterator[tuple[WorkflowEnvironment, int]]:
    """A dev server whose client runs on a Temporal runtime with a Prometheus endpoint."""
    port = free_port()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_executable),
        data_converter=pydantic_data_converter,
        ip="127.0.0.1",
        runtime=create_runtime(f"127.0.0.1:{port}"),
    )
    try:
        yield env, port
    finally:
        await env.shutdown()


async def test_metrics_endpoint_after_run(metered_env: tuple[WorkflowEnvironment, int], tmp_path: Path,
                                          stub: HttpStub, llm_stand_in: LlmStandIn) -> None:
    """Attempts, retries, fallbacks, tokens, cost and node outcomes are counted once, replays included."""
    env, port = metered_env
    task_queue = f"metrics-{uuid.uuid4()}"
    stub.script("/fetch", Reply(status=500), Reply(json={"text": "the invoice total is wrong"}))
    definition = compile_yaml(tmp_path, WITH_FALLBACK.replace("STUB", stub.url))
    # No workflow cache: every workflow task replays the history from the start, so a metric
    # recorded during replay would be counted several times.
    options = WorkerOptions(task_queue=task_queue, max_cached_workflows=0)
    async with build_worker(env.client, options, registry=TOOLS, llm=llm_activities(llm_stand_in)):
        outcome = await wait_for_outcome(await start_run(env.client, task_queue, definition))
    assert outcome.failure is None
    usage = outcome.result["outputs"]["usage"]
    cost = outcome.result["outputs"]["cost"]

    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    samples = parse_samples(response.text)
    counted = {key: value for key, value in samples.items()
               if key[0].startswith("dagwright_") and not key[0].endswith(("_bucket", "_duration_sum"))}
    workflow = "metered"
    model = {"provider": "mistral", "model": "mistral-small-latest", "workflow": workflow}
    attempts = {("http", "retrying"): 1, ("http", "succeeded"): 1, ("llm", "succeeded"): 1,
                ("python", "failed"): 1, ("python", "succeeded"): 2}
    nodes = {("http", "succeeded"): 1, ("llm", "succeeded"): 1, ("python", "succeeded"): 2}
    assert counted == {
        **{("dagwright_node_attempts", labels(workflow=workflow, node_type=node_type, outcome=result)): count
           for (node_type, result), count in attempts.items()},
        **{("dagwright_node_attempt_duration_count", labels(workflow=workflow, node_type=node_type,
                                                            outcome=result)): count
           for (node_type, result), count in attempts.items()},
        ("dagwright_node_retries", labels(workflow=workflow, node_type="http")): 1,
        ("dagwright_node_fallbacks", labels(workflow=workflow, node_type="python")): 1,
        ("dagwright_llm_tokens", labels(**model, token_type="input")): usage["prompt_tokens"],
        ("dagwright_llm_tokens", labels(**model, token_type="output")): usage["completion_tokens"],
        ("dagwright_llm_cost_usd_count", labels(**model)): 1,
        ("dagwright_llm_cost_usd_sum", labels(**model)): pytest.approx(cost),
        **{("dagwright_node_outcomes", labels(workflow=workflow, node_type=node_type, outcome=result)): count
           for (node_type, result), count in nodes.items()},
        **{("dagwright_node_duration_count", labels(workflow=workflow, node_type=node_type, outcome=result)): count
           for (node_type, result), count in nodes.items()},
    }
    durations = {key: value for key, value in samples.items() if key[0].endswith("_duration_sum")
                 and key[0].startswith("dagwright_")}
    assert len(durations) == len(attempts) + len(nodes)
    assert all(value >= 0 for value in durations.values())
    # The http node waited at least its 0.1 s retry interval between its two attempts.
    assert durations[("dagwright_node_duration_sum",
                      labels(workflow=workflow, node_type="http", outcome="succeeded"))] >= 100
    assert any(name == "temporal_activity_execution_latency_count" for name, _ in samples)


# ---------------------------------------------------------------- logs


async def test_json_log_lines_carry_run_ids(client: Client, task_queue: str, tmp_path: Path, stub: HttpStub,
                                            json_log: io.StringIO) -> None:
    """Activity and workflow log lines are JSON with run id, node id and attempt as fields."""
    stub.script("/fetch", Reply(json={"ok": True}))
    definition = compile_yaml(tmp_path, f"""
dagwright: 1
name: logged
nodes:
  fetch: {{type: http, url: "{stub.url}/fetch"}}
  boom:
    type: python
    function: fail
    args: {{message: broken on purpose}}
    needs: [fetch]
""")
    async with build_worker(client, WorkerOptions(task_queue=task_queue), registry=TOOLS):
        outcome = await wait_for_outcome(await start_run(client, task_queue, definition))
    assert outcome.failure is not None
    handle = outcome.handle

    entries = log_entries(json_log)
    call = next(entry for entry in entries if entry["message"].startswith("http call"))
    assert {key: call.get(key) for key in ("logger", "level", "run_id", "temporal_run_id", "workflow",
                                           "node_id", "node_type", "attempt", "status")} == {
        "logger": "dagwright.activities.http",
        "level": "info",
        "run_id": handle.id,
        "temporal_run_id": handle.result_run_id,
        "workflow": "logged",
        "node_id": "fetch",
        "node_type": "http",
        "attempt": 1,
        "status": 200,
    }
    ended = next(entry for entry in entries
                 if entry["message"].startswith("node attempt ended") and entry.get("node_id") == "boom")
    assert (ended["outcome"], ended["error_type"], ended["run_id"]) == ("failed", "TestFailure", handle.id)
    failed = next(entry for entry in entries if entry["message"].startswith("node failed"))
    assert (failed["run_id"], failed["temporal_run_id"], failed["node_id"]) == (
        handle.id, handle.result_run_id, "boom")
    assert "temporal_workflow" not in failed


def test_redacting_filter_hides_secret_and_api_key(tmp_path: Path) -> None:
    """Values of DAGWRIGHT_SECRET_*, *_API_KEY and the secrets file never reach a log line."""
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps({"DB_PASSWORD": "from-the-file-991"}), encoding="utf-8")
    redactor = SecretRedactor({
        "DAGWRIGHT_SECRET_TOKEN": "abc123secret",
        "MISTRAL_API_KEY": "mk-live-555",
        "DAGWRIGHT_SECRETS_FILE": str(secrets_file),
        "HOME": "/root",
    })
    record = logging.makeLogRecord({
        "msg": "calling with %s and %s and %s from %s",
        "args": ("abc123secret", "Bearer mk-live-555", "from-the-file-991", "/root"),
        "header": "Authorization: Bearer abc123secret",
    })
    RedactingFilter(redactor).filter(record)
    assert record.getMessage() == "calling with [REDACTED] and Bearer [REDACTED] and [REDACTED] from /root"
    assert record.header == "Authorization: Bearer [REDACTED]"


def readable_history(history_json: str) -> str:
    """Return the history JSON followed by every payload's decoded data (JSON base64-encodes it)."""
    decoded = [base64.b64decode(data).decode("utf-8", "replace")
               for data in re.findall(r'"data": "([A-Za-z0-9+/=]*)"', history_json)]
    return "\n".join([history_json, *decoded])


async def test_secret_absent_from_history_spans_logs(traced_client: Client, task_queue: str, tmp_path: Path,
                                                     stub: HttpStub, span_exporter: InMemorySpanExporter,
                                                     tracer: Tracer, json_log: io.StringIO,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret sent in a header is in no history event, span (even with content) or log line."""
    monkeypatch.setenv("DAGWRIGHT_SECRET_API_TOKEN", SECRET_VALUE)
    stub.script("/private", Reply(status=503), Reply(json={"ok": True}))
    definition = compile_yaml(tmp_path, f"""
dagwright: 1
name: secretive
nodes:
  fetch:
    type: http
    url: "{stub.url}/private"
    headers: {{Authorization: "Bearer {{{{ secrets.API_TOKEN }}}}"}}
    retry: {{max_attempts: 2, initial_interval: 0.1s}}
""")
    async with build_worker(traced_client, WorkerOptions(task_queue=task_queue), registry=TOOLS,
                            tracer=tracer, trace_content=True):
        outcome = await wait_for_outcome(await start_run(traced_client, task_queue, definition))
    assert outcome.failure is None
    assert [request.headers.get("authorization") for request in stub.requests("/private")] == [
        f"Bearer {SECRET_VALUE}"] * 2

    history = readable_history((await outcome.handle.fetch_history()).to_json())
    spans = span_exporter.get_finished_spans()
    span_text = json.dumps([
        {"name": span.name, "attributes": dict(span.attributes or {}), "status": span.status.description,
         "events": [dict(event.attributes or {}) for event in span.events]}
        for span in spans
    ], default=str)
    logs = json_log.getvalue()
    assert "secrets.API_TOKEN" in history or "secret:API_TOKEN" in history
    assert any("dagwright.node.input" in (span.attributes or {}) for span in spans)
    assert SECRET_VALUE not in history
    assert SECRET_VALUE not in span_text
    assert SECRET_VALUE not in logs


# ---------------------------------------------------------------- ops kit


def test_dashboard_uses_only_emitted_metrics() -> None:
    """Every dagwright metric the Grafana dashboard queries is one the worker records."""
    from dagwright.activities import telemetry
    from dagwright.interpreter import metrics

    kit = Path(__file__).parent.parent / "temporal-dev"
    dashboard = json.loads((kit / "grafana-dashboard.json").read_text(encoding="utf-8"))
    queried = {re.sub(r"_(bucket|sum|count)$", "", name)
               for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"dagwright_[a-z_]+", target["expr"])}
    emitted = {metrics.NODE_DURATION, metrics.NODE_OUTCOMES, metrics.APPROVALS_OPENED, metrics.APPROVALS_CLOSED,
               telemetry.NODE_ATTEMPTS, telemetry.NODE_ATTEMPT_DURATION, telemetry.NODE_RETRIES,
               telemetry.NODE_FALLBACKS, telemetry.LLM_TOKENS, telemetry.LLM_COST}
    assert queried == emitted


def test_ops_configs_parse() -> None:
    """The Prometheus and collector files are valid YAML with the jobs and pipeline the docs describe."""
    import yaml

    kit = Path(__file__).parent.parent / "temporal-dev"
    prometheus = yaml.safe_load((kit / "prometheus.yml").read_text(encoding="utf-8"))
    collector = yaml.safe_load((kit / "otel-collector.yaml").read_text(encoding="utf-8"))
    assert [job["job_name"] for job in prometheus["scrape_configs"]] == ["dagwright-worker", "temporal-server"]
    assert collector["service"]["pipelines"]["traces"] == {
        "receivers": ["otlp"], "processors": ["attributes/drop-content", "batch"],
        "exporters": ["otlp/jaeger", "debug"]}


def test_worker_interceptors_trace_only_with_tracer(client: Client, tracer: Tracer) -> None:
    """Temporal's tracing interceptor is added for a tracer, and left out when spans have nowhere to go."""
    from dagwright.activities.envelope import NodeEnvelopeInterceptor
    from dagwright.activities.telemetry import NodeTelemetryInterceptor
    from dagwright.interpreter.tracing_headers import RunMetadataInterceptor
    from dagwright.worker import worker_interceptors

    untraced = [RunMetadataInterceptor, NodeEnvelopeInterceptor, NodeTelemetryInterceptor]
    assert [type(item) for item in worker_interceptors(client)] == untraced
    assert [type(item) for item in worker_interceptors(client, tracer=tracer)] == [TracingInterceptor, *untraced]
