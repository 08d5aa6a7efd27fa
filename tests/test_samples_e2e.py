"""The sample workflows, run end to end from the command line.

Each run is `python -m dagwright run samples/... --json` in a subprocess with an in-process
worker. The runs use the session's Temporal server, the LLM stand-in with the samples' script
and the sample services of samples/fixtures/serve.py on free ports. Their SQL nodes use the
embedded PostgreSQL server that the samples' dagwright.toml configures, in a state folder of
this module.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from dagwright.testing.llm_embeddings import embed
from dagwright.testing.llm_script import load_script
from dagwright.testing.llm_server import LlmStandIn
from samples_harness import (
    LLM_SCRIPT,
    CliResult,
    EmbeddedDatabase,
    SampleCli,
    cli_environment,
    history_text,
    load_fixtures_module,
    run_result,
)
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

# Random, so that finding it in a history or an output can only mean that it leaked.
HELPDESK_TOKEN = f"e2e-helpdesk-{secrets.token_hex(12)}"
PASSWORD_MESSAGE = "I reset my password twice and still cannot sign in."
REVIEW_NOTE = "Covenant headroom is thin; tell subscribers."


def scripted_json(rule_name: str) -> Any:
    """Return the JSON reply of a rule of the samples' LLM script."""
    rule = next(rule for rule in load_script(LLM_SCRIPT).rules if rule.name == rule_name)
    assert rule.reply is not None
    return rule.reply.json_value


def scripted_text(rule_name: str) -> str:
    rule = next(rule for rule in load_script(LLM_SCRIPT).rules if rule.name == rule_name)
    assert rule.reply is not None and rule.reply.text is not None
    return rule.reply.text


def assert_succeeded(result: CliResult) -> dict[str, Any]:
    assert result.returncode == 0, result.describe()
    document = result.output
    assert document["status"] == "succeeded", result.describe()
    return document


def assert_mistral_requests_valid(llm: LlmStandIn) -> None:
    """Every request used Mistral's API and passed the stand-in's strict validation."""
    assert [request.path for request in llm.requests if request.api != "mistral"] == []
    assert [(request.path, request.status) for request in llm.requests if request.status == 422] == []
    assert [(request.path, request.status) for request in llm.requests if request.status != 200] == []


def assert_usage_matches(usage: dict[str, Any], llm: LlmStandIn) -> None:
    """The run's usage totals equal what the stand-in reported, per model and overall."""
    assert set(usage["by_model"]) == set(llm.model_counts())
    for model, entry in usage["by_model"].items():
        served = llm.usage_total(model)
        assert entry["prompt_tokens"] == served["prompt_tokens"], model
        assert entry["completion_tokens"] == served["completion_tokens"], model
        assert entry["calls"] == llm.model_counts()[model], model
    assert usage["total_tokens"] == llm.usage_total()["total_tokens"]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def samples_state_dir() -> Iterator[Path]:
    # Outside pytest's tmp_path, whose private base folder the embedded server's user
    # ("pgserver" when the tests run as root) cannot traverse.
    path = Path(tempfile.mkdtemp(prefix="dagwright-samples-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def samples_db(samples_state_dir: Path) -> Iterator[EmbeddedDatabase]:
    database = EmbeddedDatabase(samples_state_dir)
    yield database
    database.stop()


@pytest.fixture(scope="module")
def samples_llm() -> Iterator[LlmStandIn]:
    with LlmStandIn(LLM_SCRIPT) as llm:
        yield llm


@pytest_asyncio.fixture(scope="module")
async def services() -> AsyncIterator[Any]:
    fixtures = load_fixtures_module()
    free_ports = {service: 0 for service in fixtures.DEFAULT_PORTS}
    async with fixtures.SampleServices(ports=free_ports, helpdesk_token=HELPDESK_TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def cli(
    temporal_env: WorkflowEnvironment,
    samples_state_dir: Path,
    samples_db: EmbeddedDatabase,
    samples_llm: LlmStandIn,
) -> SampleCli:
    env = cli_environment(
        temporal_address=temporal_env.client.service_client.config.target_host,
        state_dir=samples_state_dir,
        llm_base_url=samples_llm.base_url,
        llm_api_key=samples_llm.api_key,
        helpdesk_token=HELPDESK_TOKEN,
    )
    # A queue of its own, so that the in-process worker of a run polls only this module's runs.
    env["DAGWRIGHT_TASK_QUEUE"] = f"samples-e2e-{uuid.uuid4().hex[:12]}"
    return SampleCli(env)


# ---------------------------------------------------------------------------- hello


async def test_hello_sample_outputs(cli: SampleCli) -> None:
    result = await cli.run("run", "samples/hello.yaml", "-i", "name=Grace Hopper", "-i", "excited=true", "--json")

    document = assert_succeeded(result)
    assert document["outputs"] == {
        "greeting": "HELLO, GRACE HOPPER!",
        "letters": 16,
        "remark": "That is a long greeting.",
    }


# ---------------------------------------------------------------------------- support


async def test_support_index_then_support(
    cli: SampleCli, samples_llm: LlmStandIn, samples_db: EmbeddedDatabase, services: Any, client: Client
) -> None:
    samples_llm.reset()
    index = assert_succeeded(await cli.run("run", "samples/support-index.yaml", "--json"))

    assert index["outputs"]["embedded"] == 8
    assert index["outputs"]["doc_ids"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [request.path for request in samples_llm.requests] == ["/v1/embeddings"]
    assert_usage_matches((await run_result(client, index["run_id"]))["usage"], samples_llm)

    connection = await asyncpg.connect(samples_db.url("support"))
    try:
        rows = await connection.fetch("SELECT id, title, body, embedding::text AS vector FROM support_docs ORDER BY id")
    finally:
        await connection.close()
    for row in rows:
        # Each article got the vector of its own text, so the index pairing held.
        expected = embed(f"{row['title']}\n\n{row['body']}", 1024)
        assert json.loads(row["vector"]) == pytest.approx(expected, abs=1e-6), row["id"]

    samples_llm.reset()
    support_run = await cli.run(
        "run", "samples/support.yaml",
        "-i", "ticket_id=T-1042",
        "-i", f"customer_message={PASSWORD_MESSAGE}",
        "-i", "customer_tier=pro",
        "-i", f"helpdesk_url={services.url('helpdesk')}",
        "--json",
    )
    support = assert_succeeded(support_run)
    run_id = support["run_id"]

    draft = scripted_json("draft-password")
    outputs = support["outputs"]
    assert outputs["answer"] == draft["answer"]
    assert outputs["public"] is True
    assert outputs["answered_by"] == "mistral-small-latest"
    assert outputs["review"] == "not_required"
    assert outputs["cited_docs"] == [{"id": 1, "title": "Reset your password"}]
    assert outputs["helpdesk_status"] == 201
    assert "- Reset your password: /help/account/reset-password" in outputs["reply"]
    assert outputs["reply"].endswith("will follow up within one business day.")

    assert len(services.replies) == 1
    reply = services.replies[0]
    assert reply.path == "/api/tickets/T-1042/replies"
    assert reply.headers["authorization"] == f"Bearer {HELPDESK_TOKEN}"
    assert reply.idempotency_key
    assert reply.body == {
        "body": outputs["reply"],
        "public": True,
        "status": "pending",
        "note": None,
        "cited_doc_ids": [1],
        "run_id": run_id,
    }

    # The worker resolved the token at call time, so history contains only its marker.
    history = await history_text(client, run_id)
    assert "⟦secret:HELPDESK_TOKEN⟧" in history
    assert HELPDESK_TOKEN not in history
    assert HELPDESK_TOKEN not in support_run.stdout
    assert HELPDESK_TOKEN not in support_run.stderr

    assert samples_llm.model_counts() == {"mistral-embed": 1, "ministral-8b-latest": 1, "mistral-small-latest": 1}
    assert_mistral_requests_valid(samples_llm)
    assert_usage_matches((await run_result(client, run_id))["usage"], samples_llm)

    # Articles that already have a vector are left alone, so a second index run calls no model.
    samples_llm.reset()
    again = assert_succeeded(await cli.run("run", "samples/support-index.yaml", "--json"))
    assert again["outputs"] == {"embedded": 0, "doc_ids": [], "tokens": 0}
    assert samples_llm.requests == []


# ---------------------------------------------------------------------------- earnings


async def test_earnings_review_alert_and_storage(
    cli: SampleCli, samples_llm: LlmStandIn, samples_db: EmbeddedDatabase, services: Any, client: Client
) -> None:
    samples_llm.reset()
    inputs = [f"{name}={url}" for name, url in services.inputs().items() if name != "helpdesk_url"]
    running = await cli.start(
        "run", "samples/earnings.yaml", "-i", "ticker=GLOBX", "-i", "quarter=2025-Q3",
        *[argument for pair in inputs for argument in ("-i", pair)],
        "--json",
    )

    # GLOBX's scripted figures score above the default threshold of 0.7, so the run waits here.
    run_id = await running.wait_for_approval("review")
    approval = await cli.run(
        "approve", run_id, "review", "--data", json.dumps({"note": REVIEW_NOTE}), "--by", "risk-desk"
    )
    assert approval.returncode == 0, approval.describe()
    assert approval.stdout.strip() == f"approved review in run {run_id} by risk-desk"

    document = assert_succeeded(await running.finish())
    assert document["run_id"] == run_id
    outputs = document["outputs"]
    assert outputs["metrics"] == scripted_json("extract-globx")
    assert outputs["summary"] == scripted_text("summary-globx")
    assert outputs["risk_score"] == 0.813
    assert outputs["risk_reasons"] == [
        "revenue below the recent baseline (risk 0.62)",
        "EPS below the recent baseline (risk 1.00)",
        "weak or missing guidance (risk 0.80)",
        "serious risks disclosed in the filing (risk 1.00)",
        "negative news coverage (risk 0.78)",
    ]
    assert outputs["review"] == "approved"
    assert outputs["alert_sent"] is True

    assert services.filing_requests == {"filings": 1, "mirror": 0}
    assert len(services.alerts) == 1
    alert = services.alerts[0]
    assert alert.idempotency_key
    assert alert.body == {
        "ticker": "GLOBX",
        "quarter": "2025-Q3",
        "risk_score": 0.813,
        "reasons": outputs["risk_reasons"],
        "summary": outputs["summary"],
        "approved_by": "risk-desk",
        "note": REVIEW_NOTE,
        "run_id": run_id,
    }

    connection = await asyncpg.connect(samples_db.url("analytics"))
    try:
        summary = await connection.fetchrow("SELECT * FROM earnings_summaries WHERE run_id = $1", run_id)
        quarter = await connection.fetchrow(
            "SELECT * FROM quarterly_results WHERE ticker = 'GLOBX' AND quarter = '2025-Q3'"
        )
    finally:
        await connection.close()
    assert summary is not None, f"no earnings_summaries row for {run_id}"
    assert (summary["ticker"], summary["quarter"]) == ("GLOBX", "2025-Q3")
    assert summary["risk_score"] == Decimal("0.813")
    assert summary["summary"] == outputs["summary"]
    assert summary["review"] == "approved"
    assert summary["alert_sent"] is True
    assert quarter is not None
    assert (quarter["revenue"], quarter["eps"], quarter["guidance"]) == (Decimal("702.40"), Decimal("-0.2100"), "lowered")
    assert quarter["source"] == run_id

    assert samples_llm.model_counts() == {
        "mistral-small-latest": 1,
        "ministral-8b-latest": 1,
        "mistral-medium-latest": 1,
    }
    assert_mistral_requests_valid(samples_llm)
    assert_usage_matches((await run_result(client, run_id))["usage"], samples_llm)
