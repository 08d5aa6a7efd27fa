"""Token and cost accounting for a run, and the `limits.budget` check before LLM calls."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

# Without `max_tokens` on the node, a call is assumed to produce at most this many tokens
# when deciding whether it could exceed the budget.
DEFAULT_COMPLETION_ESTIMATE = 1024
# Estimated characters per token for English text. It only decides whether a call could
# exceed the budget, so an estimate is enough.
CHARS_PER_TOKEN = 4


@dataclass
class ModelUsage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 8),
        }


@dataclass
class UsageLedger:
    """Running totals by model; a cost stays null once any call of that model had no price."""

    by_model: dict[str, ModelUsage] = field(default_factory=dict)
    prices: dict[str, dict[str, float]] = field(default_factory=dict)

    def record(self, output: Any, *, requested_model: str | None = None) -> None:
        """Add one call's usage; `output` is an llm/embed output or a failure's details."""
        if not isinstance(output, dict) or not isinstance(output.get("usage"), dict):
            return
        model = str(output.get("model") or requested_model or "unknown")
        entry = self.by_model.setdefault(model, ModelUsage())
        usage = output["usage"]
        entry.calls += 1
        entry.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        entry.completion_tokens += int(usage.get("completion_tokens") or 0)
        cost = output.get("cost_usd")
        entry.cost_usd = None if cost is None or entry.cost_usd is None else entry.cost_usd + float(cost)
        price = output.get("price")
        if isinstance(price, dict):
            # Providers return a resolved model name (an alias becomes a dated name), while the
            # budget check looks prices up by the name the node requested, so both are kept.
            for name in {model, requested_model or model}:
                priced = self.prices.setdefault(name, {})
                priced.update(price)

    def total_tokens(self) -> int:
        return sum(entry.prompt_tokens + entry.completion_tokens for entry in self.by_model.values())

    def total_cost(self) -> float | None:
        costs = [entry.cost_usd for entry in self.by_model.values()]
        if any(cost is None for cost in costs):
            return None
        return sum(costs)  # type: ignore[arg-type]

    def summary(self) -> dict[str, Any]:
        cost = self.total_cost()
        return {
            "total_tokens": self.total_tokens(),
            "cost_usd": None if cost is None else round(cost, 8),
            "by_model": {model: entry.as_dict() for model, entry in sorted(self.by_model.items())},
        }


def estimate_call(request: dict[str, Any]) -> tuple[int, int]:
    """Return (prompt, completion) token estimates for an llm or embed request."""
    parts = [request.get("prompt"), request.get("system"), request.get("messages"), request.get("input")]
    text = json.dumps([part for part in parts if part is not None], ensure_ascii=False)
    prompt = math.ceil(len(text) / CHARS_PER_TOKEN)
    completion = 0 if "input" in request else int(request.get("max_tokens") or DEFAULT_COMPLETION_ESTIMATE)
    return prompt, completion


def budget_problem(budget: dict[str, Any] | None, ledger: UsageLedger, request: dict[str, Any]) -> str | None:
    """Return why the next call could exceed the budget, or None when it fits."""
    if not budget:
        return None
    prompt, completion = estimate_call(request)
    max_tokens = budget.get("max_tokens")
    used_tokens = ledger.total_tokens()
    if max_tokens is not None and used_tokens + prompt + completion > max_tokens:
        return (
            f"the run has used {used_tokens} tokens and the next call could use up to {prompt + completion}"
            f" more, over limits.budget.max_tokens = {max_tokens}"
        )
    max_cost = budget.get("max_cost_usd")
    used_cost = ledger.total_cost()
    if max_cost is None or used_cost is None:
        return None
    price = ledger.prices.get(str(request.get("model"))) or {}
    next_cost = 0.0
    if price.get("input_per_million") is not None and price.get("output_per_million") is not None:
        next_cost = (prompt * price["input_per_million"] + completion * price["output_per_million"]) / 1_000_000
    if used_cost + next_cost > max_cost:
        return (
            f"the run has spent ${used_cost:.4f} and the next call could cost about ${next_cost:.4f},"
            f" over limits.budget.max_cost_usd = {max_cost}"
        )
    return None
