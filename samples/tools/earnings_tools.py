"""Tools used by samples/earnings.yaml."""

from __future__ import annotations

from typing import Any

from dagwright.activities.tools import tool

# Weight of each factor in the score. The weights sum to 1, so the score stays in [0, 1].
FACTOR_WEIGHTS = {
    "revenue_trend": 0.30,
    "eps_trend": 0.20,
    "guidance": 0.20,
    "disclosed_risks": 0.15,
    "news_sentiment": 0.15,
}

# Risk of each guidance change. "none" (no guidance given) is uncertain rather than bad.
GUIDANCE_RISK = {"raised": 0.0, "maintained": 0.2, "none": 0.5, "lowered": 0.8, "withdrawn": 1.0}
SEVERITY_RISK = {"low": 0.2, "medium": 0.5, "high": 1.0}
DISCLOSED_FULL_RISK = 1.5

# A factor whose data is missing counts as this risk: neither reassuring nor alarming.
UNKNOWN_RISK = 0.5

# Falls of this fraction against the baseline, or more, count as full risk.
REVENUE_FULL_RISK_DROP = 0.20
EPS_FULL_RISK_DROP = 0.30

# The baseline is the mean of at most this many earlier quarters (one year).
BASELINE_QUARTERS = 4

# Factors above this risk are listed in `reasons`, so a neutral or unknown factor (0.5) is not.
REASON_THRESHOLD = 0.5


@tool(version="1")
def risk_score(metrics: dict[str, Any], sentiment: float, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Score a quarter's risk from 0 (calm) to 1 (alarming) and list the factors behind it.

    `metrics` is the extraction of the llm node (revenue, eps, guidance, risks). `sentiment` is
    the news score from -1 (negative) to 1 (positive). `history` contains earlier quarters, newest
    first, as rows of the sql node. Numeric columns may arrive as numbers or as decimal text.
    """
    factors = {
        "revenue_trend": _drop_risk(
            _as_float(metrics.get("revenue")), _baseline(history, "revenue"), REVENUE_FULL_RISK_DROP
        ),
        "eps_trend": _drop_risk(_as_float(metrics.get("eps")), _baseline(history, "eps"), EPS_FULL_RISK_DROP),
        "guidance": GUIDANCE_RISK.get(str(metrics.get("guidance", "none")).lower(), UNKNOWN_RISK),
        "disclosed_risks": _disclosed_risk(metrics.get("risks") or []),
        "news_sentiment": (1.0 - _clamp(sentiment, -1.0, 1.0)) / 2.0,
    }

    score = sum(FACTOR_WEIGHTS[name] * value for name, value in factors.items())
    reasons = [_describe(name, value) for name, value in factors.items() if value > REASON_THRESHOLD]
    return {
        "score": round(score, 3),
        "factors": {name: round(value, 3) for name, value in factors.items()},
        "reasons": reasons,
        "quarters_compared": min(len(history), BASELINE_QUARTERS),
    }


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _baseline(history: list[dict[str, Any]], column: str) -> float | None:
    values = [_as_float(row.get(column)) for row in history[:BASELINE_QUARTERS]]
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


def _drop_risk(current: float | None, baseline: float | None, full_risk_drop: float) -> float:
    """Map a fall against the baseline to [0, 1]: no fall is 0, `full_risk_drop` or more is 1."""
    if current is None or baseline is None:
        return UNKNOWN_RISK
    if baseline == 0:
        # A relative change from zero is undefined, so only a move into losses counts.
        return 1.0 if current < 0 else 0.0
    change = (current - baseline) / abs(baseline)
    return _clamp(-change / full_risk_drop, 0.0, 1.0)


def _disclosed_risk(risks: list[Any]) -> float:
    # One high-severity risk plus one medium, or three medium ones, are enough for full risk.
    total = 0.0
    for risk in risks:
        severity = risk.get("severity") if isinstance(risk, dict) else None
        total += SEVERITY_RISK.get(str(severity).lower(), SEVERITY_RISK["medium"])
    return _clamp(total / DISCLOSED_FULL_RISK, 0.0, 1.0)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _describe(factor: str, value: float) -> str:
    labels = {
        "revenue_trend": "revenue below the recent baseline",
        "eps_trend": "EPS below the recent baseline",
        "guidance": "weak or missing guidance",
        "disclosed_risks": "serious risks disclosed in the filing",
        "news_sentiment": "negative news coverage",
    }
    return f"{labels[factor]} (risk {value:.2f})"
