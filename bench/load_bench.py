"""Load benchmark: 1,000 concurrent dagwright runs against one `dagwright worker` process.

The script starts the embedded dev server (cli.server, SQLite database in a temporary state
directory, free ports), an HTTP stub on 127.0.0.1 and one worker subprocess. Then it starts
every run at once. Each run executes a 5-node workflow: http GET, python tool, transform,
http POST, transform. `--approval-runs` of them also wait on an approval node, which a driver
decides through the `decide` update as soon as the approval is listed.

It checks that every run succeeded and that no node was lost or ran twice: each run id must
appear exactly once in the stub's /fetch and /submit requests and in the python tool's
counter file, which the tool appends to inside the worker process. It reports throughput
(runs per second, from the first start to the last result), per-run latency and the
worker's peak resident memory (VmHWM from /proc/<pid>/status, Linux only).

Not run in CI. Run from the repository root:

    .venv/bin/python bench/load_bench.py
    .venv/bin/python bench/load_bench.py --runs 200 --approval-runs 20

The tool `bench.count_run` is defined in this file, and the worker loads the file with
`--tools`, so the module must stay importable without side effects.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dagwright.activities.tools import Tool, ToolRegistry, tool
from dagwright.cli.run import server_has_search_attributes, start_run
from dagwright.interpreter.approvals import DECIDE_UPDATE, ApprovalDecision
from dagwright.interpreter.compiler import compile_file
from dagwright.interpreter.run_types import RunRequest
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError

logger = logging.getLogger(__name__)

COUNTER_ENV = "DAGWRIGHT_BENCH_COUNTER"
TASK_QUEUE = "bench-load"
# Client calls in flight at once while starting runs, so the start burst does not queue
# thousands of RPCs in the client at the same moment.
START_CONCURRENCY = 200
# How often the approval driver lists the runs that wait for an approval, in seconds.
APPROVAL_POLL_SECONDS = 0.5
# How often the worker's memory is sampled, in seconds.
MEMORY_SAMPLE_SECONDS = 0.5
# A run that has not finished by then counts as lost.
RUN_TIMEOUT_SECONDS = 600.0


@tool(name="bench.count_run")
def count_run(run: str, value: int) -> int:
    """Append the run id to the counter file named by $DAGWRIGHT_BENCH_COUNTER and return value * 2."""
    # One short write to a file opened with O_APPEND lands whole, also from parallel threads.
    with open(os.environ[COUNTER_ENV], "a", encoding="utf-8") as counter:
        counter.write(run + "\n")
    return value * 2


def workflow_text(stub_url: str, *, with_approval: bool) -> str:
    """Return the benchmark workflow: 5 nodes, plus an approval before `submit` when asked."""
    name = "load-approval" if with_approval else "load"
    review = """
  review:
    type: approval
    prompt: "Submit score {{ nodes.shape.output.score }}?"
    needs: [shape]""" if with_approval else ""
    submit_needs = "[review]" if with_approval else "[shape]"
    return f"""
dagwright: 1
name: {name}
nodes:
  fetch:
    type: http
    url: "{stub_url}/fetch"
    query: {{run: "{{{{ run.id }}}}"}}
  score:
    type: python
    function: bench.count_run
    args: {{run: "{{{{ run.id }}}}", value: "{{{{ nodes.fetch.output.json.value }}}}"}}
  shape:
    type: transform
    value: {{run: "{{{{ run.id }}}}", score: "{{{{ nodes.score.output }}}}"}}{review}
  submit:
    type: http
    method: POST
    url: "{stub_url}/submit"
    query: {{run: "{{{{ run.id }}}}"}}
    json: "{{{{ nodes.shape.output }}}}"
    needs: {submit_needs}
  summary:
    type: transform
    value: "{{{{ nodes.submit.output.json.accepted }}}}"
outputs:
  accepted: "{{{{ nodes.summary.output }}}}"
  score: "{{{{ nodes.score.output }}}}"
"""


def compile_workflow(folder: Path, text: str, name: str) -> dict[str, Any]:
    registry = ToolRegistry()
    registry.register(Tool(name="bench.count_run", function=count_run))
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return compile_file(path, tools=registry)


# ---------------------------------------------------------------- measuring


@dataclass
class ProcessSampler:
    """Reads a process's memory and CPU time from /proc, and samples its memory until stopped."""

    pid: int
    peak_rss_kib: int = 0
    samples: list[int] = field(default_factory=list)

    def read(self, key: str) -> int:
        """Return one `kB` field of /proc/<pid>/status, such as VmRSS or VmHWM, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(f"{key} not found in /proc/{self.pid}/status; this needs Linux")

    def cpu_seconds(self) -> float:
        """Return the user plus system CPU time the process has used, from /proc/<pid>/stat."""
        # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            rss = self.read("VmRSS")
            self.samples.append(rss)
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            try:
                await asyncio.wait_for(stop.wait(), MEMORY_SAMPLE_SECONDS)
            except TimeoutError:
                pass


@dataclass
class RunRecord:
    """One started run and how it ended."""

    handle: WorkflowHandle
    with_approval: bool
    started_at: float
    ended_at: float = 0.0
    result: dict[str, Any] | None = None
    error: str | None = None


# ---------------------------------------------------------------- driving the runs


async def start_runs(client: Client, plain: dict[str, Any], approval: dict[str, Any], runs: int,
                     approval_runs: int) -> list[RunRecord]:
    """Start `runs` runs at once; every (runs / approval_runs)-th one uses the approval workflow.

    Runs start the way `dagwright run` starts them, with the DagwrightStatus search attribute
    that the approval driver lists.
    """
    if not await server_has_search_attributes(client):
        raise RuntimeError("the dev server lacks dagwright's search attributes; the approval driver needs them")
    gate = asyncio.Semaphore(START_CONCURRENCY)
    spacing = max(runs // approval_runs, 1) if approval_runs else 0

    async def start_one(number: int) -> RunRecord:
        with_approval = bool(spacing) and number % spacing == 0 and number // spacing < approval_runs
        definition = approval if with_approval else plain
        request = RunRequest(definition=definition, inputs={}, search_attributes=True)
        workflow_id = f"{definition['name']}-{number}-{uuid.uuid4().hex[:8]}"
        async with gate:
            handle = await start_run(client, request, workflow_id, TASK_QUEUE, use_attributes=True)
        return RunRecord(handle=handle, with_approval=with_approval, started_at=time.monotonic())

    return list(await asyncio.gather(*(start_one(number) for number in range(runs))))


@dataclass
class ApprovalDriver:
    """Approves every waiting `review` approval of the expected runs, found through visibility.

    Listing runs by search attribute costs the worker nothing, unlike a query per run, which
    under this load waited behind the runs' workflow tasks until its RPC timed out.
    """

    client: Client
    expected: set[str]
    decided: set[str] = field(default_factory=set)
    rpc_retries: int = 0

    async def run(self) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while self.decided != self.expected:
            if time.monotonic() > deadline:
                logger.error("gave up after %g s with %d of %d approvals decided",
                             RUN_TIMEOUT_SECONDS, len(self.decided), len(self.expected))
                return
            waiting = await self._list_waiting()
            outcomes = await asyncio.gather(*(self._approve(run_id) for run_id in waiting))
            self.decided.update(run_id for run_id, approved in zip(waiting, outcomes) if approved)
            logger.info("approved %d of %d approvals", len(self.decided), len(self.expected))
            await asyncio.sleep(APPROVAL_POLL_SECONDS)

    async def _list_waiting(self) -> list[str]:
        query = f"DagwrightStatus = 'waiting_approval' AND TaskQueue = '{TASK_QUEUE}'"
        found = [execution.id async for execution in self.client.list_workflows(query)]
        return sorted(run_id for run_id in found if run_id in self.expected and run_id not in self.decided)

    async def _approve(self, run_id: str) -> bool:
        decision = ApprovalDecision(node="review", decision="approve", by="load-bench")
        handle = self.client.get_workflow_handle(run_id)
        try:
            # A fixed update id makes a repeated call after a lost response return the first outcome.
            await handle.execute_update(DECIDE_UPDATE, decision, id=f"{run_id}-review", result_type=dict)
        except (RPCTimeoutOrCancelledError, RPCError) as exc:
            self.rpc_retries += 1
            logger.warning("decide update on run %s failed, retrying on the next round: %s", run_id, exc)
            return False
        except WorkflowUpdateFailedError as exc:
            # Visibility can still list a run whose approval was decided a moment ago.
            logger.warning("decide update on run %s was rejected: %s", run_id, exc.cause)
            return False
        return True


async def wait_for_result(record: RunRecord) -> None:
    try:
        async with asyncio.timeout(RUN_TIMEOUT_SECONDS):
            record.result = await record.handle.result()
    except WorkflowFailureError as exc:
        record.error = str(exc.cause or exc)
    except TimeoutError:
        record.error = f"no result within {RUN_TIMEOUT_SECONDS:g} s"
    record.ended_at = time.monotonic()


# ---------------------------------------------------------------- checking


def exactly_once_problems(label: str, seen: list[str], expected: set[str]) -> list[str]:
    """Describe run ids missing from `seen` or present more than once."""
    counts = Counter(seen)
    missing = sorted(expected - counts.keys())
    repeated = sorted(run for run, count in counts.items() if count > 1)
    unknown = sorted(counts.keys() - expected)
    problems = []
    if missing:
        problems.append(f"{label}: {len(missing)} runs missing, e.g. {missing[:3]}")
    if repeated:
        problems.append(f"{label}: {len(repeated)} runs repeated, e.g. {repeated[:3]}")
    if unknown:
        problems.append(f"{label}: {len(unknown)} unknown run ids, e.g. {unknown[:3]}")
    return problems


def check(records: list[RunRecord], fetched: list[str], submitted: list[str], counted: list[str]) -> list[str]:
    """Return every problem found: failed runs, wrong outputs, lost or repeated node executions."""
    problems = [f"run {record.handle.id} failed: {record.error}" for record in records if record.error]
    expected = {record.handle.id for record in records}
    wrong = [record.handle.id for record in records
             if record.result is not None and record.result.get("outputs") != {"accepted": True, "score": 42}]
    if wrong:
        problems.append(f"{len(wrong)} runs returned unexpected outputs, e.g. {wrong[:3]}")
    problems += exactly_once_problems("http GET /fetch", fetched, expected)
    problems += exactly_once_problems("python bench.count_run", counted, expected)
    problems += exactly_once_problems("http POST /submit", submitted, expected)
    return problems


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


# ---------------------------------------------------------------- main


async def bench(args: argparse.Namespace, folder: Path) -> int:
    # Imported here so that a worker loading this file for its tool does not import the tests.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from crash_helpers import WorkerProcesses, free_ports, wait_until_polling
    from dagwright.cli.connect import connect
    from dagwright.cli.server import (
        PORT_ENV,
        STATE_DIR_ENV,
        UI_PORT_ENV,
        load_settings,
        start_dev_server,
        stop_dev_server,
        target_for,
    )
    from http_stub import HttpStub, Reply

    load_before = os.getloadavg()[0]
    port, ui_port = free_ports(2)
    os.environ.update({STATE_DIR_ENV: str(folder / "server"), PORT_ENV: str(port), UI_PORT_ENV: str(ui_port)})
    settings = replace(load_settings(), ui=False)
    status = await start_dev_server(settings)
    counter_file = folder / "tool-counter.txt"
    counter_file.touch()
    try:
        client = await connect(target_for(status, settings.namespace))
        async with HttpStub() as stub:
            stub.script("/fetch", Reply(json={"value": 21}))
            stub.script("/submit", Reply(json={"accepted": True}))
            plain = compile_workflow(folder, workflow_text(stub.url, with_approval=False), "load.yaml")
            approval = compile_workflow(folder, workflow_text(stub.url, with_approval=True), "load-approval.yaml")

            worker_args = []
            if args.max_concurrent_activities:
                worker_args = ["--max-concurrent-activities", str(args.max_concurrent_activities)]
            with WorkerProcesses(status.address, folder / "workers", tools=[Path(__file__).resolve()],
                                 env={COUNTER_ENV: str(counter_file)}) as workers:
                worker = workers.start(TASK_QUEUE, extra_args=worker_args)
                await wait_until_polling(client, worker)
                logger.info("worker pid %d polls task queue %s; starting %d runs", worker.pid, TASK_QUEUE, args.runs)
                sampler = ProcessSampler(worker.pid)
                baseline_kib = sampler.read("VmRSS")
                stop_sampling = asyncio.Event()
                sampling = asyncio.create_task(sampler.run(stop_sampling))
                try:
                    cpu_before = sampler.cpu_seconds()
                    server_cpu_before = ProcessSampler(status.pid).cpu_seconds()
                    driver_cpu_before = time.process_time()
                    began = time.monotonic()
                    records = await start_runs(client, plain, approval, args.runs, args.approval_runs)
                    started = time.monotonic()
                    logger.info("started %d runs in %.1f s; waiting for their results", len(records), started - began)
                    driver = ApprovalDriver(client, {r.handle.id for r in records if r.with_approval})
                    await asyncio.gather(driver.run(), *(wait_for_result(record) for record in records))
                    finished = time.monotonic()
                    peak_kib = sampler.read("VmHWM")
                    worker_cpu = sampler.cpu_seconds() - cpu_before
                    server_cpu = ProcessSampler(status.pid).cpu_seconds() - server_cpu_before
                    driver_cpu = time.process_time() - driver_cpu_before
                finally:
                    stop_sampling.set()
                    await sampling
                worker.stop()

            fetched = [request.query.removeprefix("run=") for request in stub.requests("/fetch")]
            submitted = [request.query.removeprefix("run=") for request in stub.requests("/submit")]
        counted = counter_file.read_text(encoding="utf-8").split()
    finally:
        stop_dev_server(settings)

    problems = check(records, fetched, submitted, counted)
    measured = Measurements(
        load_before=load_before, start_seconds=started - began, elapsed=finished - began,
        baseline_kib=baseline_kib, peak_kib=peak_kib, max_sampled_kib=sampler.peak_rss_kib,
        worker_cpu=worker_cpu, server_cpu=server_cpu, driver_cpu=driver_cpu,
    )
    print_report(records, measured, driver, {"/fetch": fetched, "bench.count_run": counted, "/submit": submitted})
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("result: " + ("OK, every run completed and every node ran exactly once" if not problems
                        else f"{len(problems)} problems"))
    return 0 if not problems else 1


@dataclass(frozen=True)
class Measurements:
    """Timings in seconds, memory in KiB and CPU time in seconds of one benchmark run."""

    load_before: float
    start_seconds: float
    elapsed: float
    baseline_kib: int
    peak_kib: int
    max_sampled_kib: int
    worker_cpu: float
    server_cpu: float
    driver_cpu: float


def print_report(records: list[RunRecord], measured: Measurements, driver: ApprovalDriver,
                 executions: dict[str, list[str]]) -> None:
    """Print the results as a Markdown list, ready for docs/benchmarks.md."""
    elapsed = measured.elapsed
    latencies = [record.ended_at - record.started_at for record in records if record.result is not None]
    succeeded = sum(record.result is not None for record in records)
    with_approval = sum(record.with_approval for record in records)
    print(f"- runs: {len(records)} ({with_approval} with an approval), {succeeded} succeeded")
    print(f"- starting all runs took {measured.start_seconds:.1f} s; first start to last result {elapsed:.1f} s")
    print(f"- throughput: {len(records) / elapsed:.1f} runs/s")
    if latencies:
        print(f"- run latency (start call returned to result): p50 {statistics.median(latencies):.1f} s, "
              f"p95 {percentile(latencies, 0.95):.1f} s, max {max(latencies):.1f} s")
    print(f"- worker RSS: {measured.baseline_kib / 1024:.0f} MiB idle, peak {measured.peak_kib / 1024:.0f} MiB "
          f"(VmHWM), max sampled {measured.max_sampled_kib / 1024:.0f} MiB")
    print(f"- CPU time during the load: worker {measured.worker_cpu:.1f} s ({measured.worker_cpu / elapsed:.0%} "
          f"of one core), Temporal dev server {measured.server_cpu:.1f} s ({measured.server_cpu / elapsed:.0%}), "
          f"this driver and the HTTP stub {measured.driver_cpu:.1f} s ({measured.driver_cpu / elapsed:.0%})")
    print("- node executions seen: " + ", ".join(f"{name} {len(seen)}" for name, seen in executions.items()))
    print(f"- approvals decided: {len(driver.decided)}, decide calls retried after an RPC error: {driver.rpc_retries}")
    print(f"- machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}, "
          f"load average before the run {measured.load_before:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="Runs started at once (default: 1000).")
    parser.add_argument("--approval-runs", type=int, default=100,
                        help="How many of the runs wait on an approval (default: 100).")
    parser.add_argument("--max-concurrent-activities", type=int, default=0,
                        help="Passed to the worker; 0 keeps the worker's default.")
    args = parser.parse_args()
    if not 0 <= args.approval_runs <= args.runs:
        parser.error(f"--approval-runs {args.approval_runs} must be between 0 and --runs ({args.runs})")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="dagwright-load-") as folder:
        raise SystemExit(asyncio.run(bench(args, Path(folder))))


if __name__ == "__main__":
    main()
