"""Measure how long loading and compiling a large generated workflow takes.

Generates a workflow with `--nodes` nodes (default 1,000), a mix of http, llm, sql, python,
transform and wait nodes with references between nodes, conditions, needs, for_each and
fallbacks. It writes the workflow to a temporary file and times `load_file` alone and
`compile_file` (load included), after one warm-up compile. Prints the median, min and max
of `--runs` runs.

    .venv/bin/python bench/compile_bench.py [--nodes 1000] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dagwright.activities.tools import Tool, ToolRegistry
from dagwright.interpreter.compiler import compile_file
from dagwright.interpreter.loader import load_file


def score(text: str, weight: float = 1.0) -> float:
    """Return a made-up score; the benchmark only compiles, it never calls the tool."""
    return len(text) * weight


def _node_lines(index: int) -> list[str]:
    """Return the YAML lines of node `n<index>`; the node type cycles through seven kinds."""
    previous = f"n{index - 1}"
    kind = index % 7
    lines = [f"  n{index}:"]
    if index == 0 or kind == 0:
        lines += [
            "    type: http",
            '    url: "https://api.example/items/{{ inputs.ticker }}"',
            "    headers: {Authorization: 'Bearer {{ secrets.API_TOKEN }}'}",
            "    retry: {max_attempts: 4}",
        ]
    elif kind == 1:
        lines += [
            "    type: llm",
            f'    prompt: "Summarize {{{{ nodes.{previous}.output }}}} for {{{{ inputs.ticker }}}}"',
            "    fallback:",
            "      - {model: large-model}",
        ]
    elif kind == 2:
        lines += [
            "    type: sql",
            "    connection: warehouse",
            "    query: select * from prices where ticker = $1 and score > $2",
            f'    params: ["{{{{ inputs.ticker }}}}", "{{{{ nodes.{previous}.output.usage.prompt_tokens }}}}"]',
        ]
    elif kind == 3:
        lines += [
            "    type: python",
            "    function: score",
            f'    args: {{text: "{{{{ nodes.n{index - 2}.output | length }}}}", weight: 2}}',
        ]
    elif kind == 4:
        lines += [
            "    type: transform",
            f"    when: nodes.{previous}.output > inputs.threshold",
            f'    value: {{score: "{{{{ nodes.{previous}.output }}}}", ticker: "{{{{ inputs.ticker }}}}"}}',
        ]
    elif kind == 5:
        lines += [
            "    type: transform",
            f"    for_each: nodes.{previous}.output.score | list",
            '    value: "{{ index }}: {{ item }}"',
        ]
    else:
        lines += [
            "    type: wait",
            "    duration: 1m",
            f"    when: failed('{previous}') or always()",
            f"    needs: [n{index - 3}]",
        ]
    return lines


def generate_workflow(node_count: int) -> str:
    """Return the YAML text of a valid workflow with `node_count` nodes."""
    lines = [
        "dagwright: 1",
        "name: compile-bench",
        "inputs:",
        "  ticker: {type: string}",
        "  threshold: {type: number, default: 0.5}",
        "defaults:",
        "  timeout: 30s",
        "  retry: {max_attempts: 3, initial_interval: 1s}",
        "  llm: {provider: mistral, model: small-model}",
        "nodes:",
    ]
    for index in range(node_count):
        lines += _node_lines(index)
    lines += ["outputs:", f'  last: "{{{{ nodes.n{node_count - 1}.output }}}}"']
    return "\n".join(lines) + "\n"


def measure(action: Callable[[], object], runs: int) -> list[float]:
    """Return the wall-clock duration of each run, in milliseconds."""
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        durations.append((time.perf_counter() - started) * 1000)
    return durations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000, help="number of nodes to generate (default 1000)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per measurement (default 7)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.runs < 1:
        parser.error("--nodes and --runs must be at least 1")

    registry = ToolRegistry()
    registry.register(Tool("score", score))
    text = generate_workflow(args.nodes)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "compile_bench.yaml"
        path.write_text(text, encoding="utf-8")
        definition = compile_file(path, tools=registry)  # also a warm-up run
        rows = [
            ("load only", measure(lambda: load_file(path), args.runs)),
            ("load + compile", measure(lambda: compile_file(path, tools=registry), args.runs)),
        ]

    print(f"workflow: {args.nodes} nodes, {text.count(chr(10))} lines, {len(text.encode()):,} bytes, "
          f"{sum(len(node['deps']) for node in definition['nodes'].values())} edges")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, {args.runs} runs")
    print()
    print(f"{'step':<16} {'median ms':>10} {'min ms':>10} {'max ms':>10}")
    for name, durations in rows:
        print(f"{name:<16} {statistics.median(durations):>10.1f} {min(durations):>10.1f} {max(durations):>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
