"""/v1/responses: OpenAI's Responses API on the chat pipeline, and its stored responses.

``POST /v1/responses`` is translated (``formats.openai_responses``) into the neutral chat request
and served by ``serve_chat`` like every chat call (keys, limits, budgets, cache, fallback,
metrics); the answer or the chunks are turned back into a response object or the Responses stream
events. With ``store`` (the default) the response, its input items and the conversation are kept
in the books, so ``previous_response_id`` and ``GET``/``DELETE /v1/responses/{id}`` find them;
a key finds only its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, g, jsonify, request

from hoosh_edge.books.responses import StoredResponse, scope_of
from hoosh_edge.doors.common import (
    cache_ask,
    call_context,
    caller,
    gateway,
    logged_stream,
    read_json,
    served_headers,
)
from hoosh_edge.errors import HooshError, InvalidRequest, NotFound
from hoosh_edge.formats import openai as chatfmt
from hoosh_edge.formats import openai_responses_up as up
from hoosh_edge.formats.openai_responses import Translated, new_id, to_chat
from hoosh_edge.formats.openai_responses_out import Shell, StreamEvents, assistant_message
from hoosh_edge.pipeline.call import KEEPALIVE, ChunkStream
from hoosh_edge.pipeline.chat import ChatAnswer, serve_chat
from hoosh_edge.threads import run_books

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger(__name__)
bp = Blueprint("responses", __name__)

_encode = json.JSONEncoder(ensure_ascii=False).encode
# The chat validation names chat fields; a Responses client knows its own names.
_PARAMS = {"max_tokens": "max_output_tokens", "response_format": "text.format",
           "messages": "input"}  # fmt: skip


def frame(event: dict[str, Any]) -> bytes:
    """One Responses SSE event: its type is the event name."""
    return f"event: {event['type']}\ndata: {_encode(event)}\n\n".encode()


def _scope() -> str:
    return scope_of(g.get("key_name"))


def _history(body: Any) -> list[dict[str, Any]]:
    """The conversation ``previous_response_id`` names, in chat form (none without one)."""
    prev = body.get("previous_response_id") if isinstance(body, dict) else None
    if prev is None:
        return []
    if not isinstance(prev, str) or not prev:
        raise InvalidRequest("'previous_response_id' must be a response id.",
                             param="previous_response_id")  # fmt: skip
    record = run_books(gateway().responses.get, _scope(), prev)
    if record is None:
        raise NotFound(f"Previous response with id '{prev}' not found.",
                       param="previous_response_id", code="previous_response_not_found")  # fmt: skip
    return record.messages


def _checked(chat: dict[str, Any]) -> dict[str, Any]:
    try:
        return chatfmt.validate_chat_request(chat)
    except InvalidRequest as e:
        param = e.param or ""
        head, dot, rest = param.partition("[")
        name = _PARAMS.get(head, head)
        e.param = name + (dot + rest if dot else "") if param else None
        e.message = e.message.replace(f"'{head}", f"'{name}") if param else e.message
        raise


def _keep(gw: Gateway, scope: str, t: Translated, history: list[dict[str, Any]],
          response: dict[str, Any]) -> None:  # fmt: skip
    """Store the response (a failing disk costs the record, not the answer already paid for)."""
    if not t.store:
        return
    record = StoredResponse(response["id"], response, t.items,
                            [*history, *t.messages, assistant_message(response["output"])])  # fmt: skip
    try:
        run_books(gw.responses.put, scope, record)
    except HooshError as e:
        log.warning("response %s not stored: %s", response["id"], e.message)


@bp.post("/v1/responses")
def create_response() -> Response:
    gw = gateway()
    body = read_json(gw.config.server.max_body_bytes)
    history = _history(body)
    t = to_chat(body, history)
    # A provider with OpenAI's Responses API gets the body as it came (formats.openai_responses_up).
    req = {**_checked(t.chat), up.PASS: up.passed(body, history)}
    result = serve_chat(gw, req, caller(), cache_ask(), route="responses", ctx=call_context())
    shell = Shell(body, new_id("resp"), req["model"])
    scope = _scope()
    if isinstance(result, ChatAnswer):
        response = shell.answer(result.doc)
        _keep(gw, scope, t, history, response)
        g.log_fields = result.served.fields
        return served_headers(jsonify(response), result.served)
    return _streamed(result, StreamEvents(shell), t, history, scope)


def _streamed(stream: ChunkStream, events: StreamEvents, t: Translated,
              history: list[dict[str, Any]], scope: str) -> Response:  # fmt: skip
    gw = gateway()

    def frames() -> Iterator[bytes]:
        yield from map(frame, events.start())
        for item in stream:
            if item is KEEPALIVE:
                yield b": keep-alive\n\n"
                continue
            yield from map(frame, events.chunk(item))
        if stream.error is not None:
            yield from map(frame, events.failed(stream.error.code, stream.error.message))
            return
        yield from map(frame, events.finish_events(stream.usage, stream.served.model))
        if events.final is not None:
            _keep(gw, scope, t, history, events.final)

    resp = Response(logged_stream(frames(), stream), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
    return served_headers(resp, stream.served)


def _record(response_id: str) -> StoredResponse:
    record = run_books(gateway().responses.get, _scope(), response_id)
    if record is None:
        raise NotFound(f"No response with id '{response_id}' found.", param="response_id")
    return record


@bp.get("/v1/responses/<response_id>")
def retrieve_response(response_id: str) -> Response:
    if request.args.get("stream", "").lower() == "true":
        raise InvalidRequest("Streaming a stored response again is not served.", param="stream")
    return jsonify(_record(response_id).response)


@bp.delete("/v1/responses/<response_id>")
def delete_response(response_id: str) -> Response:
    if not run_books(gateway().responses.delete, _scope(), response_id):
        raise NotFound(f"No response with id '{response_id}' found.", param="response_id")
    return jsonify({"id": response_id, "object": "response", "deleted": True})


@bp.post("/v1/responses/<response_id>/cancel")
def cancel_response(response_id: str) -> Response:
    _record(response_id)
    raise InvalidRequest("Only background responses can be cancelled, and background mode is "
                         "not served.", param="response_id")  # fmt: skip


@bp.get("/v1/responses/<response_id>/input_items")
def input_items(response_id: str) -> Response:
    items = list(_record(response_id).input_items)
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be asc or desc.", param="order")
    try:
        limit = int(request.args.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100.", param="limit")
    if order == "desc":
        items.reverse()
    after = request.args.get("after")
    if after:
        ids = [i.get("id") for i in items]
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{after}'.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return jsonify({"object": "list", "data": page,
                    "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None,
                    "has_more": len(items) > limit})  # fmt: skip
