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
    cached = cached_tokens(usage)
    if cached is not None:
        prompt = usage.get("prompt_tokens") or 0
        metrics.inc("hoosh_prompt_tokens_reused_total", labels, cached,
                    help="Prompt tokens served from a saved or live prompt state")  # fmt: skip
        metrics.inc("hoosh_prompt_tokens_evaluated_total", labels, max(0, prompt - cached),
                    help="Prompt tokens evaluated afresh (where the usage says what was reused)")  # fmt: skip
    return {
        "provider": target.provider,
        "model": target.model,
        "prompt_tokens": usage.get("prompt_tokens"),
        "cached_tokens": cached,
        "completion_tokens": usage.get("completion_tokens"),
        "cost_usd": usage.get("cost_usd"),
        "cache": cache,
        "stream": False,
    }


def cached_tokens(usage: dict[str, Any]) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens`` when the answer reported it."""
    details = usage.get("prompt_tokens_details")
    n = details.get("cached_tokens") if isinstance(details, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None
