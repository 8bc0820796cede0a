"""Ollama's API in front of every backend the router knows: POST /api/chat and /api/generate.

The body is translated (``formats.ollama``) into the neutral chat request and served by the
pipeline as /v1/chat/completions is (keys, limits, budgets, the cache, fallback, metrics, access
lines). The door always reads the answer as chunks, so it can time it: ``stream: false`` joins
them into one JSON object, otherwise each becomes an NDJSON line and the last says ``done``.
Errors take Ollama's shape ``{"error": "message"}`` with the HTTP status of the failure; one that
happens after the stream began is a final ``{"error": ...}`` line. Every /api/* route is on this
blueprint and shares its body reading, model names and errors: models are in ``ollama_models``,
pulls in ``ollama_pull``, embeddings in ``ollama_embed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
from flask import Blueprint, Response, g, jsonify
from werkzeug.exceptions import HTTPException

from hoosh_edge.books.keys import require_model
from hoosh_edge.books.money import format_usd
from hoosh_edge.doors.bodies import parse_json, read_bounded
from hoosh_edge.doors.common import (
    cache_ask,
    call_context,
    caller,
    error_headers,
    gateway,
    logged_stream,
    served_headers,
)
from hoosh_edge.errors import HooshError, InvalidRequest
from hoosh_edge.formats import ollama as fmt
from hoosh_edge.pipeline.call import KEEPALIVE, ChunkStream
from hoosh_edge.pipeline.chat import serve_chat
from hoosh_edge.pipeline.embeddings import targets_for

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger(__name__)
bp = Blueprint("ollama", __name__)
NDJSON = "application/x-ndjson"


# ---- errors -------------------------------------------------------------------------------------


def ollama_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Ollama's error object with ``status``."""
    resp = jsonify({"error": message})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


@bp.errorhandler(HooshError)
def _hoosh_error(e: HooshError) -> Response:
    return ollama_error(e.status, e.message, error_headers(e))


@bp.errorhandler(HTTPException)
def _http_error(e: HTTPException) -> Response:
    code = e.code or 500
    return ollama_error(code, e.description or e.name)


@bp.errorhandler(Exception)
def _unexpected(e: Exception) -> Response:
    log.exception("request %s failed", g.get("request_id", "-"))
    return ollama_error(500, "Internal server error.")


# ---- what every /api/* route shares -------------------------------------------------------------


def read_body() -> Any:
    """The JSON body, bounded, whatever its Content-Type says: Ollama reads any, and its own docs
    post with ``curl -d`` (a form type). Safe to take: a cross-site page's simple post carries an
    Origin, which browser.check refused before this."""
    return parse_json(read_bounded(gateway().config.server.max_body_bytes))


def wanted(body: Any) -> str:
    """The model a body names (``model``, or the older ``name``)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    return name.strip()


def is_known(gw: Gateway, name: str) -> bool:
    """Whether the router would find a target for ``name`` (without ordering any)."""
    r = gw.router
    if name in r.aliases:
        return True
    provider, _, model = name.partition(":")
    if model and provider in r.by_name:
        backend = r.by_name[provider]
        return not backend.is_local or backend.serves(model)  # a cloud may know more than it lists
    return any(b.serves(name) for b in r.backends)


def embeds(gw: Gateway, name: str) -> bool:
    """Whether an on-device embedding model or a provider that embeds would take ``name``."""
    try:
        return bool(targets_for(gw, name))
    except HooshError:
        return False


def gateway_name(gw: Gateway, name: str,
                 known: Callable[[Gateway, str], bool] = is_known) -> str:  # fmt: skip
    """The gateway's id for an Ollama model name: as given, or without its ``:latest`` tag."""
    if name.endswith(":latest") and not known(gw, name) and known(gw, name[:-7]):
        return name[:-7]
    return name


def local_slot(gw: Gateway, name: str) -> str | None:
    """The pool slot of ``name`` if it is an on-device chat model."""
    local = gw.router.by_name.get("local")
    return name if local is not None and local.serves(name) and name in gw.pool.slots else None


# ---- chat and generate --------------------------------------------------------------------------


@bp.post("/api/chat")
def chat() -> Response:
    return _serve("chat", fmt.chat_request(read_body()))


@bp.post("/api/generate")
def generate() -> Response:
    return _serve("generate", fmt.generate_request(read_body()))


def _serve(kind: str, ask: fmt.OllamaAsk) -> Response:
    gw = gateway()
    timing = fmt.Timing(started=g.get("started", time.monotonic()))
    name = gateway_name(gw, ask.model)
    for option in ask.ignored:
        log.debug("request %s: Ollama option %r has no equivalent here; ignored",
                  g.request_id, option)  # fmt: skip
    if ask.req is None:
        return _load_only(gw, kind, ask, name, timing)
    ask.req["model"] = name
    stream = serve_chat(gw, ask.req, caller(), cache_ask(), route="chat", ctx=call_context())
    assert isinstance(stream, ChunkStream)  # the request asks for chunks
    reply = fmt.Reply(ask.model, kind)
    if ask.stream:
        resp = Response(logged_stream(_lines(gw, stream, reply, timing, ask), stream),
                        mimetype=NDJSON, headers={"Cache-Control": "no-cache",
                                                  "X-Accel-Buffering": "no"})  # fmt: skip
        return served_headers(resp, stream.served)
    try:
        for _ in _pieces(gw, stream, reply, timing):
            pass
    finally:
        stream.close()
        _keep(gw, stream, ask)
    if stream.error is not None:
        raise stream.error
    g.log_fields = {k: v for k, v in stream.served.fields.items() if k != "stream"}
    resp = jsonify(reply.final(stream.usage, timing, time.monotonic(), whole=True))
    cost = (stream.usage or {}).get("cost_usd")
    if cost is not None and stream.served.cost_usd is None:
        stream.served.cost_usd = format_usd(round(float(cost) * 1_000_000))
    return served_headers(resp, stream.served)


def _pieces(
    gw: Gateway, stream: ChunkStream, reply: fmt.Reply, timing: fmt.Timing
) -> Iterator[str]:
    """The text of each chunk as it comes, timed; keep-alives are dropped (NDJSON has none)."""
    for item in stream:
        if item is KEEPALIVE:
            continue
        now = time.monotonic()
        if timing.first is None:
            timing.first = now
            slot = local_slot(gw, stream.served.model or "")
            if slot is not None and stream.served.provider == "local":
                timing.load_s = gw.pool.loaded_since(slot, timing.started)
        timing.last = now
        yield reply.feed(item)


def _lines(gw: Gateway, stream: ChunkStream, reply: fmt.Reply, timing: fmt.Timing,
           ask: fmt.OllamaAsk) -> Iterator[bytes]:  # fmt: skip
    """NDJSON lines: the pieces, the tool calls once whole, then ``done`` (or one error line)."""
    try:
        for text in _pieces(gw, stream, reply, timing):
            if text:
                yield fmt.ndjson(reply.piece(text))
        if stream.error is not None:
            yield fmt.ndjson({"error": stream.error.message})
            return
        calls = reply.calls_line()
        if calls is not None:
            yield fmt.ndjson(calls)
        yield fmt.ndjson(reply.final(stream.usage, timing, time.monotonic()))
    finally:
        _keep(gw, stream, ask)


def _keep(gw: Gateway, stream: ChunkStream, ask: fmt.OllamaAsk) -> None:
    """Apply ``keep_alive`` to the on-device model that served (a cloud model has nothing to keep)."""
    slot = local_slot(gw, stream.served.model or "") if stream.served.provider == "local" else None
    if slot is not None:
        gw.pool.keep(slot, ask.keep_alive_s)


def _load_only(gw: Gateway, kind: str, ask: fmt.OllamaAsk, name: str,
               timing: fmt.Timing) -> Response:  # fmt: skip
    """No prompt: load the model (``done_reason`` "load") or, with keep_alive 0, unload it."""
    require_model(g.get("key"), name)
    gw.router.resolve(name)  # 404 for a model that does not exist
    slot = local_slot(gw, name)
    reason = "load"
    if ask.keep_alive_s == 0:
        reason = "unload"
        if slot is not None:
            gw.pool.keep(slot, 0)
            held, deadline = gw.pool.slot(slot), time.monotonic() + 10
            while held.loaded and time.monotonic() < deadline:
                gevent.sleep(0.02)  # an answer still ending: it unloads the model when done
    elif slot is not None:
        with gw.pool.slot(slot).use():
            pass
        timing.load_s = gw.pool.loaded_since(slot, timing.started)
        gw.pool.keep(slot, ask.keep_alive_s)
    obj = fmt.empty_final(ask.model, kind, timing, time.monotonic(), reason)
    if ask.stream:
        return Response(fmt.ndjson(obj), mimetype=NDJSON)
    return jsonify(obj)
