"""The documented input and output of a `DagWorkflow` run (plain JSON).

Any Temporal client can start a run by sending a `RunRequest` as JSON to the
workflow type `DagWorkflow` on the worker's task queue; see docs/running.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

WORKFLOW_TYPE = "DagWorkflow"
REQUEST_FORMAT = 1

NodeStatus = Literal["pending", "running", "waiting", "succeeded", "failed", "skipped", "cancelled"]
TERMINAL_STATUSES = ("succeeded", "failed", "skipped", "cancelled")


class ReusedNode(BaseModel):
    """A node result recorded by an earlier run, used instead of executing the node."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["succeeded", "failed", "skipped"]
    output: Any = None
    error: str | None = None


class BatchSpec(BaseModel):
    """Internal: one slice of a large `for_each` that a parent run delegates to a child run."""

    node: str
    items: list[Any]
    offset: int


class BudgetIncrease(BaseModel):
    """The argument of the `raise_budget` update."""

    model_config = ConfigDict(extra="forbid")

    max_cost_usd: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    by: str | None = None
    comment: str | None = None


class RunRequest(BaseModel):
    """The input of `DagWorkflow`.

    `definition` is the compiled definition (`dagwright compile FILE` prints it), so
    each run's history pins exactly what it ran. `inputs` are checked against the
    definition's input schemas by the client and again by the workflow.
    """

    model_config = ConfigDict(extra="forbid")

    format: int = REQUEST_FORMAT
    definition: dict[str, Any]
    inputs: dict[str, Any] = Field(default_factory=dict)
    reuse: dict[str, ReusedNode] = Field(default_factory=dict)
    rerun_of: str | None = None
    search_attributes: bool = False
    batch: BatchSpec | None = None


class RunResult(BaseModel):
    """The result of a successful run: the workflow's outputs and a per-node summary."""

    outputs: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    usage: dict[str, Any] = Field(default_factory=dict)
