"""What every HTTP door shares: the gateway handle, the caller, the cache ask, response headers,
the access line."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Response, current_app, g, request

from hoosh_edge.doors.bodies import read_json
from hoosh_edge.errors import HooshError
from hoosh_edge.pipeline.call import CacheAsk, CallContext, Caller, ChunkStream, Served

__all__ = ["gateway", "inference_headers", "read_json", "caller", "cache_ask", "cache_directives",
           "call_context", "served_headers", "log_access", "logged_stream"]  # fmt: skip

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

access_log = logging.getLogger("hoosh_edge.access")


def gateway() -> Gateway:
    """The Gateway object of the running app."""
    return current_app.extensions["hoosh"]


def caller() -> Caller:
    """Who asks: the key ``before_request`` authenticated, and the request id."""
    return Caller(request_id=g.request_id, key=g.get("key"))


def call_context() -> CallContext:
    """The per-call facts backends log with; the access line names the target it tried last."""
    ctx = CallContext(request_id=g.request_id)
    g.call_ctx = ctx
    return ctx


def cache_directives(header_value: str | None) -> tuple[bool, bool]:
    """``(lookup, store)`` from a ``Cache-Control`` value: ``no-cache`` (or ``max-age=0``) skips
    the lookup (the answer may still be stored), ``no-store`` the store."""
    lookup = store = True
    for part in (header_value or "").split(","):
        name, _, arg = part.strip().lower().partition("=")
        name = name.strip()
        if name == "no-cache" or (name == "max-age" and arg.strip().strip('"') == "0"):
            lookup = False
        elif name == "no-store":
            store = False
    return lookup, store


def cache_ask() -> CacheAsk:
    """What the request's ``Cache-Control`` asks of the cache."""
    lookup, store = cache_directives(request.headers.get("Cache-Control"))
    return CacheAsk(lookup=lookup, store=store)


def inference_headers(resp: Response, provider: str | None, model: str | None) -> Response:
    """Say who really served the request."""
    resp.headers["X-Request-Id"] = g.request_id
    if provider:
        resp.headers["X-Hoosh-Provider"] = provider
    if model:
        resp.headers["X-Hoosh-Model"] = model
    return resp


def served_headers(resp: Response, served: Served) -> Response:
    """Who served, the cache, the cost, the budget left and the gateway's token cap."""
    resp.headers["X-Hoosh-Cache"] = served.cache
    if served.similarity is not None:
        resp.headers["X-Hoosh-Cache-Similarity"] = f"{served.similarity:.4f}"
    if served.cost_usd is not None:
        resp.headers["X-Hoosh-Cost-USD"] = served.cost_usd
    if served.remaining is not None:
        resp.headers["X-Hoosh-Budget-Remaining"] = served.remaining
    if served.max_tokens is not None:
        resp.headers["X-Hoosh-Max-Tokens"] = str(served.max_tokens)
    if served.sample_rate is not None:
        resp.headers["X-Hoosh-Sample-Rate"] = str(served.sample_rate)
    return inference_headers(resp, served.provider, served.model)


def error_headers(e: HooshError) -> dict[str, str]:
    """The response headers an error asks for: a 429's ``Retry-After`` in whole seconds (rounded
    up and at least 1: a client that retries on it must not arrive early), and ``Connection:
    close`` when the connection cannot go on."""
    out = {"Connection": "close"} if e.ends_connection else {}
    if e.retry_after is not None and e.status == 429:
        out["Retry-After"] = str(max(1, math.ceil(e.retry_after)))
    return out


def log_access(rid: str, method: str, path: str, status: int, duration_s: float,
               fields: dict[str, Any] | None) -> None:  # fmt: skip
    """One JSON access line (never a key's secret: only its name)."""
    if not access_log.isEnabledFor(logging.INFO):
        return  # log_level above info: no line is written, so none is built
    line = {"ts": round(time.time(), 3), "request_id": rid, "method": method, "path": path,
            "status": status, "duration_ms": round(duration_s * 1000, 2)}  # fmt: skip
    if fields:
        line.update(fields)
    access_log.info(json.dumps(line, separators=(",", ":")))


def logged_stream(frames: Iterator[bytes], stream: ChunkStream) -> Iterator[bytes]:
    """``frames`` made from ``stream``; once they end, the stream is closed (which settles its
    books) and its access line is written, outside the request context by then."""
    rid, path, started = g.request_id, request.path, g.get("started", time.monotonic())
    key = g.get("key_name")
    g.logs_itself = True

    def body() -> Iterator[bytes]:
        try:
            yield from frames
        finally:
            stream.close()
            fields = stream.served.fields
            log_access(rid, "POST", path, stream.status, time.monotonic() - started,
                       {"key": key, **fields} if key else fields)  # fmt: skip

    return body()
