"""POST /v1/completions: OpenAI's legacy completions on the chat pipeline, JSON or SSE.

Each prompt is one call of ``serve_chat`` (keys, limits, budgets, cache, fallback, metrics), its
neutral request carrying the raw prompt (``formats.openai_completions``): on-device models
generate from it without a chat template, OpenAI-compatible providers get it on their own
``/completions``, a provider without one refuses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
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
from hoosh_edge.errors import InvalidRequest
from hoosh_edge.formats import openai as chatfmt
from hoosh_edge.formats import openai_completions as legacy
from hoosh_edge.pipeline.call import KEEPALIVE, ChunkStream
from hoosh_edge.pipeline.chat import ChatAnswer, serve_chat

bp = Blueprint("completions", __name__)


def _checked(body: dict[str, Any], prompt: str) -> dict[str, Any]:
    """The neutral request of one prompt; the chat validation's errors name legacy parameters."""
    chat, raw = legacy.to_chat(body, prompt)
    try:
        return {**chatfmt.validate_chat_request(chat), legacy.LEGACY: raw}
    except InvalidRequest as e:
        if e.param == "messages" or (e.param or "").startswith("messages["):
            e.param, e.message = "prompt", "'prompt' is not a prompt the gateway can serve."
        elif e.param == "top_logprobs":
            e.param = "logprobs"
        raise


@bp.post("/v1/completions")
def completions() -> Response:
    gw = gateway()
    body = read_json(gw.config.server.max_body_bytes)
    prompts = legacy.check(body)
    stamp = {"id": f"cmpl-{g.request_id}", "object": "text_completion",
             "created": int(time.time())}  # fmt: skip
    echo = bool(body.get("echo"))
    if body.get("stream"):
        req = _checked(body, prompts[0])
        result = serve_chat(gw, req, caller(), cache_ask(), route="completions",
                            ctx=call_context())  # fmt: skip
        assert isinstance(result, ChunkStream)  # asked to stream: chunks, even from the cache
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        return _stream(result, stamp, prompts[0] if echo else "", req["model"], include)
    choices, usage, cost, result = (
        [],
        {"prompt_tokens": 0, "completion_tokens": 0},
        Decimal(0),
        None,
    )
    for i, prompt in enumerate(prompts):
        req = _checked(body, prompt)
        result = serve_chat(gw, {**req, "stream": False}, caller(), cache_ask(),
                            route="completions", ctx=call_context())  # fmt: skip
        assert isinstance(result, ChatAnswer)  # not streamed: a whole answer
        choices.append(legacy.choice_of(result.doc, i, prompt if echo else ""))
        got = result.doc.get("usage") or {}
        for k in usage:
            usage[k] += int(got.get(k) or 0)
        cost += Decimal(str(got.get("cost_usd") or 0))
    assert result is not None
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    usage["cost_usd"] = float(cost)
    doc = {**stamp, "model": result.doc.get("model") or body["model"], "choices": choices,
           "usage": usage}  # fmt: skip
    served = result.served
    if len(prompts) > 1 and served.cost_usd is not None:
        served.cost_usd = str(cost)  # the whole request's, not its last prompt's
    g.log_fields = served.fields
    return served_headers(jsonify(doc), served)


def _stream(stream: ChunkStream, stamp: dict[str, Any], echo: str, model: str,
            include_usage: bool) -> Response:  # fmt: skip
    text = legacy.ChunkText(echo)

    def frames() -> Iterator[bytes]:
        for item in stream:
            if item is KEEPALIVE:
                yield b": keep-alive\n\n"
                continue
            choices = text.choices(item)
            if choices:
                yield chatfmt.sse({**stamp, "model": item.get("model") or model,
                                   "choices": choices})  # fmt: skip
        if stream.error is not None:
            yield chatfmt.sse(stream.error.to_dict())
            return
        if include_usage:
            yield chatfmt.sse({**stamp, "model": stream.served.model or model, "choices": [],
                               "usage": stream.usage})  # fmt: skip
        yield b"data: [DONE]\n\n"

    resp = Response(logged_stream(frames(), stream), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
    return served_headers(resp, stream.served)
