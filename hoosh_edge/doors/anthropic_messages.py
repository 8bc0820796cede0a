"""POST /v1/messages: Anthropic's Messages API in front of every backend the router knows.

The request is translated (``formats.anthropic_request``) into an OpenAI chat request and served by
the pipeline exactly as /v1/chat/completions is (router, fallback, budget gate, cache,
keep-alives). Its answer, a chat.completion or a stream of chunks, is translated back into an
Anthropic message or Anthropic's stream events, which this door frames as JSON or SSE. Errors take
Anthropic's shape ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify
from werkzeug.exceptions import HTTPException

from hoosh_edge.doors.common import (
    cache_ask,
    call_context,
    caller,
    error_headers,
    gateway,
    logged_stream,
    read_json,
    served_headers,
)
from hoosh_edge.errors import HooshError
from hoosh_edge.formats.anthropic_request import to_chat_request
from hoosh_edge.formats.anthropic_response import error_body, error_type, to_message
from hoosh_edge.formats.anthropic_stream import StreamEvents
from hoosh_edge.pipeline.call import KEEPALIVE, ChunkStream
from hoosh_edge.pipeline.chat import ChatAnswer, serve_chat

log = logging.getLogger(__name__)
bp = Blueprint("messages", __name__)


# One encoder for every event: json.dumps with options builds a new one per call, a quarter of
# the framing's cost on a stream of many small events.
_encode = json.JSONEncoder(ensure_ascii=False).encode


def frame(event: dict[str, Any]) -> bytes:
    """One Anthropic SSE event: its type is the event name."""
    return f"event: {event['type']}\ndata: {_encode(event)}\n\n".encode()


def framed_events(events: StreamEvents, stream: ChunkStream) -> Iterator[bytes]:
    """Anthropic events for the pipeline's chunks; a failure mid-stream is an error event."""
    yield from map(frame, events.start())
    for item in stream:
        if item is KEEPALIVE:
            yield frame({"type": "ping"})
            continue
        yield from map(frame, events.chunk(item))
    if stream.error is not None:
        e = stream.error
        yield frame(error_body(error_type(None, e.type, e.code), e.message))
        return
    yield from map(frame, events.finish(stream.usage))


# ---- errors -------------------------------------------------------------------------------------


def _error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> tuple[Response, int]:
    resp = jsonify({**error_body(kind, message), "request_id": g.get("request_id")})
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp, status


def anthropic_error(status: int, message: str) -> tuple[Response, int]:
    """An Anthropic-shaped error for ``status`` (for paths outside this blueprint's routes)."""
    return _error_response(status, error_type(status, None, None), message)


@bp.errorhandler(HooshError)
def _hoosh_error(e: HooshError) -> tuple[Response, int]:
    kind = error_type(e.status, e.type, e.code)
    return _error_response(
        529 if kind == "overloaded_error" else e.status, kind, e.message, error_headers(e)
    )


@bp.errorhandler(HTTPException)
def _http_error(e: HTTPException) -> tuple[Response, int]:
    code = e.code or 500
    return _error_response(code, error_type(code, None, None), e.description or e.name)


@bp.errorhandler(Exception)
def _unexpected(e: Exception) -> tuple[Response, int]:
    log.exception("request %s failed", g.get("request_id", "-"))
    return _error_response(500, "api_error", "Internal server error.")


# ---- the endpoint -------------------------------------------------------------------------------


@bp.post("/v1/messages")
def create_message() -> Response:
    gw = gateway()
    req = to_chat_request(read_json(gw.config.server.max_body_bytes, dotted=True))
    result = serve_chat(gw, req, caller(), cache_ask(), route="messages", ctx=call_context())
    msg_id = f"msg_{g.request_id}"
    stops = req.get("stop") or []
    served = result.served
    if isinstance(result, ChatAnswer):
        g.log_fields = served.fields
        resp = jsonify(to_message(result.doc, msg_id, stops))
    else:
        events = StreamEvents(msg_id, served.model or req["model"], result.prompt_bound, stops)
        resp = Response(logged_stream(framed_events(events, result), result),
                        mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
    resp.headers["request-id"] = g.request_id  # where Anthropic's SDKs look for it
    return served_headers(resp, served)
