"""POST /v1/chat/completions: parse, hand the pipeline, frame JSON or SSE in OpenAI's shape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify

from hoosh_edge.doors.common import (
    cache_ask,
    call_context,
    caller,
    gateway,
    logged_stream,
    read_json,
    served_headers,
)
from hoosh_edge.formats import openai as chatfmt
from hoosh_edge.pipeline.call import KEEPALIVE, ChunkStream
from hoosh_edge.pipeline.chat import ChatAnswer, serve_chat

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    gw = gateway()
    req = chatfmt.validate_chat_request(read_json(gw.config.server.max_body_bytes))
    result = serve_chat(gw, req, caller(), cache_ask(), route="chat", ctx=call_context())
    ids = Stamp(g.request_id, req["model"])
    if isinstance(result, ChatAnswer):
        return answer_response(result, ids)
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    return stream_response(result, ids, include_usage)


class Stamp:
    """One completion's id, timestamp and model, on the answer and every chunk of it."""

    def __init__(self, request_id: str, model: str) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.created = int(time.time())
        self.model = model

    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        chunk["id"] = self.id
        chunk["object"] = "chat.completion.chunk"
        chunk["created"] = self.created
        chunk["model"] = chunk.get("model") or self.model
        return chunk


def answer_response(result: ChatAnswer, ids: Stamp) -> Response:
    doc = result.doc
    doc["id"] = ids.id
    doc["object"] = "chat.completion"
    if result.served.provider == "cache":
        doc["created"] = ids.created
    else:
        doc.setdefault("created", ids.created)
    g.log_fields = result.served.fields
    return served_headers(jsonify(doc), result.served)


def stream_response(stream: ChunkStream, ids: Stamp, include_usage: bool) -> Response:
    def frames() -> Iterator[bytes]:
        for item in stream:
            if item is KEEPALIVE:
                yield b": keep-alive\n\n"
                continue
            yield chatfmt.sse(ids.chunk(item))
        if stream.error is not None:
            yield chatfmt.sse(stream.error.to_dict())
            return
        if include_usage:
            yield chatfmt.sse(ids.chunk({"model": stream.served.model, "choices": [],
                                         "usage": stream.usage}))  # fmt: skip
        yield b"data: [DONE]\n\n"

    resp = Response(logged_stream(frames(), stream), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
    return served_headers(resp, stream.served)
