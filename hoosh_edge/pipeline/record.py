"""What a call used, counted once: token counters for /metrics and the fields of its access line."""

from __future__ import annotations

from typing import Any

from hoosh_edge.metrics import Metrics
from hoosh_edge.pipeline.router import Target


def record_chat(metrics: Metrics, target: Target, usage: dict[str, Any], *,
                cache: str | None) -> dict[str, Any]:  # fmt: skip
    """Count a chat call's tokens; its access-line fields."""
    labels = {"provider": target.provider}
    metrics.inc("hoosh_tokens_in_total", labels, usage.get("prompt_tokens", 0),
                help="Prompt tokens")  # fmt: skip
    metrics.inc("hoosh_tokens_out_total", labels, usage.get("completion_tokens", 0),
                help="Completion tokens")  # fmt: skip
    return {
        "provider": target.provider,
        "model": target.model,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cost_usd": usage.get("cost_usd"),
        "cache": cache,
        "stream": False,
    }
