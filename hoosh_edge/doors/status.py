"""The operator's status page (GET /) and its data (GET /admin/status.json).

Each part of the JSON (models, providers, budgets, cache, ...) is a section of its own: a failing
part shows up as an ``error`` string there instead of breaking the whole page. Budgets come from
``SpendLedger.rule_states()``, the read model ``/admin/budgets``, ``/metrics`` and the CLI share.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import NotFound

from hoosh_edge import device, workers
from hoosh_edge.books.ledger import SpendLedger
from hoosh_edge.books.money import format_usd
from hoosh_edge.books.orphans import orphan_summary
from hoosh_edge.doors.common import gateway
from hoosh_edge.errors import StorageUnavailable
from hoosh_edge.version import __version__

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger("hoosh_edge")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_ASSETS = {"status.css": "text/css", "status.js": "text/javascript"}

bp = Blueprint("status", __name__)


# ---- providers ---------------------------------------------------------------------------------


def provider_health(gw: Gateway) -> list[dict[str, Any]]:
    """Each backend's state and last error, as /v1/health reports them."""
    return gw.router.health_report()


# ---- budgets and spend -------------------------------------------------------------------------


def budget_status(ledger: SpendLedger) -> list[dict[str, Any]]:
    """Every budget rule in its current period, from the ledger's one read model."""
    out = []
    for state in ledger.rule_states():
        rule, used, limit = state.rule, state.used, state.rule.measured_limit
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
                **state.figures(),
                # Committed use against the limit; over 100 is shown, not capped (warn rules).
                "percent": round(100 * used / limit, 1) if limit else (100.0 if used else 0.0),
                "resets_at": state.resets_at.isoformat() if state.resets_at else None,
            }
        )
    return out


def spend_status(ledger: SpendLedger) -> dict[str, Any]:
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

    Only API routes (/v1/ and Ollama's /api/) count, so the status page polling itself does not
    inflate the numbers.
    """
    by_class = {"2xx": 0, "4xx": 0, "5xx": 0}
    total = 0
    for labels, value in metrics.samples("hoosh_requests_total"):
        if not labels.get("route", "").startswith(("/v1/", "/api/")):
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
    except StorageUnavailable as e:  # the books' server away: said once by StorageState
        return {"error": e.message}
    except Exception as e:  # noqa: BLE001 - shown to the operator, logged in full
        log.exception("status: %s failed", name)
        return {"error": f"{type(e).__name__}: {e}"}


def status_snapshot(gw: Gateway) -> dict[str, Any]:
    """Everything the status page shows; each part is a section of its own."""
    ledger = gw.ledger
    return {
        "version": __version__,
        "uptime_s": round(time.time() - gw.started_at, 1),
        "device": _section("device", device.snapshot),
        "models": _section("models", gw.pool.status),
        "tts": _section("tts", gw.speech.tts_report),
        "providers": _section("providers", lambda: provider_health(gw)),
        "budgets": _section("budgets", lambda: budget_status(ledger)),
        "spend": _section("spend", lambda: spend_status(ledger)),
        "orphans": _section("orphans", lambda: orphan_summary(ledger)),
        "cache": _section("cache", gw.cache.stats),
        "prompt_cache": _section(
            "prompt_cache",
            lambda: gw.prompt_states.stats() if gw.prompt_states is not None else None,
        ),  # fmt: skip
        "requests": _section("requests", lambda: request_totals(gw.metrics)),
        "storage": _section("storage", gw.storage_report),
        "workers": _section("workers", workers.status),
    }


@bp.get("/")
def page() -> Response:
    """The status page for a browser (it fetches /admin/status.json); Ollama's probe text else."""
    if "text/html" not in request.headers.get("Accept", ""):
        # Ollama's clients (and curl) probe GET / and HEAD / for this line; every browser asks
        # for text/html when it opens a page.
        return Response("Ollama is running", mimetype="text/plain")
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
