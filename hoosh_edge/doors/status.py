"""The operator's status page (GET /) and its data (GET /admin/status.json).

The JSON is built from whatever parts of the Gateway exist: each part (pool, ledger, cache,
metrics) may still be None while the gateway is being assembled, and a failing part shows up
as an ``error`` string in its own section instead of breaking the whole page.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, send_from_directory
from werkzeug.exceptions import NotFound

from hoosh_edge import device, workers
from hoosh_edge.books.ledger import period_bounds, scope_matches
from hoosh_edge.books.money import format_usd
from hoosh_edge.books.orphans import orphan_summary
from hoosh_edge.doors.common import gateway
from hoosh_edge.version import __version__

log = logging.getLogger("hoosh_edge")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_ASSETS = {"status.css": "text/css", "status.js": "text/javascript"}

bp = Blueprint("status", __name__)


# ---- providers ---------------------------------------------------------------------------------


def provider_health(gw: Any) -> list[dict[str, Any]]:
    """Each backend's state and last error, as /v1/health reports them."""
    router = getattr(gw, "router", None)
    return [] if router is None else router.health_report()


# ---- budgets and spend -------------------------------------------------------------------------

# The usage_summary field (or fields) holding each rule metric; audio in seconds there.
_SUMMARY_FIELDS = {
    "usd": ("cost_micro_usd",),
    "tokens": ("prompt_tokens", "completion_tokens"),
    "requests": ("requests",),
    "characters": ("characters",),
}


def _local_names(gw: Any) -> set[str]:
    router = getattr(gw, "router", None)
    names = {"local"}
    if router is not None:
        names |= {b.name for b in router.backends if b.is_local}
    return names


def _summary_amount(metric: str, row: dict[str, Any]) -> int:
    """A usage_summary row's value in the rule's measured unit (audio in milliseconds)."""
    if metric == "audio_seconds":
        return round((row.get("audio_seconds") or 0) * 1000)
    return sum(int(row.get(f) or 0) for f in _SUMMARY_FIELDS[metric])


def _rule_used(ledger: Any, rule: Any, local: set[str]) -> int:
    """Committed use of ``rule`` in its current period, summed from the ledger's summary.

    Open reservations are not included: the summary has committed use only.
    """
    kind, _, value = rule.scope.partition(":")
    group = {"key": "key", "model": "model"}.get(kind, "provider")
    used = 0
    for row in ledger.usage_summary(rule.period, group):
        grp = row.get(group)
        if rule.scope == "cloud":
            # The summary has no locality column; local backends are known by name.
            hit = grp not in local
        else:
            target = {"key": None, "provider": "", "model": "", "is_local": False, group: grp}
            hit = scope_matches(rule.scope, **target)
        if hit:
            used += _summary_amount(rule.metric, row)
    return used


def budget_status(gw: Any) -> list[dict[str, Any]]:
    """Every budget rule with its use in the current period."""
    ledger = gw.ledger
    local = _local_names(gw)
    now = ledger.now()
    out = []
    for rule in ledger.list_rules():
        used = _rule_used(ledger, rule, local)
        limit = rule.measured_limit
        _, end = period_bounds(rule.period, now, ledger.tz)
        out.append(
            {
                "name": rule.name,
                "scope": rule.scope,
                "metric": rule.metric,
                "unit": rule.unit,
                "period": rule.period,
                "action": rule.action,
                # Amounts as exact decimal strings in the rule's unit (USD, seconds, tokens).
                "limit": rule.format_amount(limit),
                "used": rule.format_amount(used),
                "remaining": rule.format_amount(max(0, limit - used)),
                "percent": round(100 * used / limit, 1) if limit else (100.0 if used else 0.0),
                "resets_at": end.astimezone(ledger.tz).isoformat() if end else None,
            }
        )
    return out


def spend_status(ledger: Any) -> dict[str, Any]:
    """Committed spend in USD today and this month (the ledger's timezone)."""
    out: dict[str, Any] = {}
    for label, period in (("today", "day"), ("month", "month")):
        rows = ledger.usage_summary(period, "provider")
        micro = sum(int(r["cost_micro_usd"] or 0) for r in rows)
        out[f"{label}_usd"] = format_usd(micro)
        out[f"{label}_requests"] = sum(int(r["requests"] or 0) for r in rows)
    return out


# ---- requests ----------------------------------------------------------------------------------


def request_totals(metrics: Any) -> dict[str, Any]:
    """API requests since start by status class, from the ``hoosh_requests_total`` counter.

    Only /v1/ routes count, so the status page polling itself does not inflate the numbers.
    """
    by_class = {"2xx": 0, "4xx": 0, "5xx": 0}
    total = 0
    for labels, value in metrics.samples("hoosh_requests_total"):
        if not labels.get("route", "").startswith("/v1/"):
            continue
        n = int(value)
        total += n
        key = f"{labels.get('status', '')[:1]}xx"
        if key in by_class:
            by_class[key] += n
    return {"total": total, "by_class": by_class}


# ---- the JSON ----------------------------------------------------------------------------------


def _section(name: str, build: Any) -> Any:
    """``build()``, or an error marker: one broken part must not blank the whole page."""
    try:
        return build()
    except Exception as e:  # noqa: BLE001 - shown to the operator, logged in full
        log.exception("status: %s failed", name)
        return {"error": f"{type(e).__name__}: {e}"}


def status_snapshot(gw: Any) -> dict[str, Any]:
    """Everything the status page shows, from whatever parts of the gateway exist now."""
    pool = getattr(gw, "pool", None)
    ledger = getattr(gw, "ledger", None)
    cache = getattr(gw, "cache", None)
    metrics = getattr(gw, "metrics", None)
    started = getattr(gw, "started_at", None)
    storage = getattr(gw, "storage_report", None)
    return {
        "version": __version__,
        "uptime_s": round(time.time() - started, 1) if started else None,
        "device": _section("device", device.snapshot),
        "models": _section("models", lambda: pool.status() if pool is not None else []),
        "providers": _section("providers", lambda: provider_health(gw)),
        "budgets": _section("budgets", lambda: budget_status(gw)) if ledger else None,
        "spend": _section("spend", lambda: spend_status(ledger)) if ledger else None,
        "orphans": _section("orphans", lambda: orphan_summary(ledger)) if ledger else None,
        "cache": _section("cache", lambda: cache.stats()) if cache is not None else None,
        "requests": _section("requests", lambda: request_totals(metrics)) if metrics else None,
        "storage": _section("storage", storage) if storage is not None else None,
        "workers": _section("workers", workers.status),
    }


@bp.get("/")
def page() -> Response:
    """The status page; it fetches its data from /admin/status.json."""
    resp = send_from_directory(STATIC_DIR, "status.html", mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/status/<name>")
def asset(name: str) -> Response:
    """The page's stylesheet and script (only these two names)."""
    if name not in _ASSETS:
        raise NotFound()
    resp = send_from_directory(STATIC_DIR, name, mimetype=_ASSETS[name])
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/admin/status.json")
def status_json() -> Response:
    """The status page's data."""
    resp = jsonify(status_snapshot(gateway()))
    resp.headers["Cache-Control"] = "no-store"
    return resp
