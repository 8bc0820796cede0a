"""POST /v1/messages: Anthropic's Messages API in front of every backend the router knows.

The request is translated into an OpenAI chat request and served by ``ChatCall`` exactly as
/v1/chat/completions serves it (router, fallback, budget gate, cache, keep-alives). Its answer, a
chat.completion or a stream of chunks, is translated back into an Anthropic message or Anthropic's
stream events. Errors take Anthropic's shape ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify
from werkzeug.exceptions import HTTPException

from hoosh_edge.backends.providers.anthropic import FINISH_REASONS
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
from hoosh_edge.errors import HooshError, InvalidRequest, UpstreamError
from hoosh_edge.formats import openai as chatfmt
from hoosh_edge.pipeline.call import KEEPALIVE, ChunkStream
from hoosh_edge.pipeline.chat import ChatAnswer, serve_chat

log = logging.getLogger(__name__)
bp = Blueprint("messages", __name__)

# OpenAI finish_reason -> Anthropic stop_reason: the first Anthropic reason the provider maps onto
# each OpenAI one (stop -> end_turn, length -> max_tokens, tool_calls -> tool_use, ...).
STOP_REASONS = {oa: an for an, oa in reversed(FINISH_REASONS.items())}
STOP_REASONS["function_call"] = "tool_use"

# Anthropic's error type for each HTTP status the gateway answers with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# The box is busy or short of memory: Anthropic's clients know that as 529, "retry later".
_OVERLOADED = {"queue_full", "insufficient_memory", "service_unavailable", "provider_disabled"}


# Every content block type of Anthropic's Messages API (ContentBlockParam); the ones a turn can
# carry here are translated, the rest are refused by name rather than dropped or forwarded.
BLOCK_TYPES = (
    "text", "image", "document", "search_result", "thinking", "redacted_thinking", "tool_use",
    "tool_result", "server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
    "code_execution_tool_result", "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result", "tool_search_tool_result", "container_upload",
    "mid_conv_system",
)  # fmt: skip
USER_BLOCKS = ("text", "image", "tool_result")
ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")


# ---- request: Anthropic -> OpenAI ---------------------------------------------------------------


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _unsupported(kind: Any, at: str, allowed: tuple[str, ...]) -> InvalidRequest:
    """A block this turn cannot carry: an Anthropic type not translated here, or no type at all."""
    expected = ", ".join(f"'{t}'" for t in allowed)
    if isinstance(kind, str) and kind in BLOCK_TYPES:
        return _bad(f"{at}.type: content block type '{kind}' is not supported here; this turn "
                    f"takes {expected}", f"{at}.type")  # fmt: skip
    return _bad(f"{at}.type: Input tag {kind!r} found using 'type' does not match any of the "
                f"expected tags: {expected}", f"{at}.type")  # fmt: skip


def _text_of(block: dict[str, Any], where: str) -> str:
    if not isinstance(block.get("text"), str):
        raise _bad(f"{where}.text: Field required (a string)", where)
    return block["text"]


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block as an OpenAI image_url part (a data: URL for base64 data)."""
    src = block.get("source")
    kind = src.get("type") if isinstance(src, dict) else None
    if (
        kind == "base64"
        and isinstance(src.get("data"), str)
        and isinstance(src.get("media_type"), str)
    ):
        return {
            "type": "image_url",
            "image_url": {"url": f"data:{src['media_type']};base64,{src['data']}"},
        }
    if kind == "url" and isinstance(src.get("url"), str):
        return {"type": "image_url", "image_url": {"url": src["url"]}}
    raise _bad(f"{where}.source: only base64 and url image sources are supported", where)


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A tool_result block as an OpenAI tool message."""
    if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
        raise _bad(f"{where}.tool_use_id: Field required", where)
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad(
                    f"{where}.content.{j}: only text is supported inside a tool_result", where
                )
            texts.append(_text_of(part, f"{where}.content.{j}"))
        text = "\n".join(texts)
    else:
        raise _bad(f"{where}.content: must be a string or a list of text blocks", where)
    if block.get("is_error"):
        text = f"Error: {text}"  # OpenAI tool messages have no error flag; the model reads it
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _user_messages(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as tool messages first, then one user message."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block, at)})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            tools.append(_tool_result(block, at))
        else:
            raise _unsupported(kind, at, USER_BLOCKS)
    if not parts:
        return tools
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tools, {"role": "user", "content": parts[0]["text"]}]
    return [*tools, {"role": "user", "content": parts}]


def _assistant_message(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_use":
            if not all(isinstance(block.get(k), str) and block[k] for k in ("id", "name")):
                raise _bad(f"{at}: a tool_use block needs an id and a name (strings)", at)
            if not isinstance(block.get("input", {}), dict):
                raise _bad(f"{at}.input: must be an object", f"{at}.input")
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {
                        "name": block["name"],
                        "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # reasoning of an earlier turn: no OpenAI counterpart, and not needed
        else:
            raise _unsupported(kind, at, ASSISTANT_BLOCKS)
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        msg["tool_calls"] = calls
        msg["content"] = msg["content"] or None
    return msg


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, list):
        texts = []
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise _bad(f"system.{i}: only text blocks are allowed in system", "system")
            texts.append(_text_of(block, f"system.{i}"))
        system = "\n".join(texts)
    if system is not None and not isinstance(system, str):
        raise _bad("system: must be a string or a list of text blocks", "system")
    if system:
        out.append({"role": "system", "content": system})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: Field required (a non-empty list)", "messages")
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            raise _bad(f"{where}.role: must be 'user' or 'assistant', got {role!r}", where)
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            if role == "user":
                out.extend(_user_messages(content, where))
            else:
                out.append(_assistant_message(content, where))
        else:
            raise _bad(f"{where}.content: must be a string or a list of content blocks", where)
    return out


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if not tools:
        return
    if not isinstance(tools, list):
        raise _bad("tools: must be a list", "tools")
    converted = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            kind = tool.get("type") if isinstance(tool, dict) else tool
            raise _bad(
                f"tools.{i}: tool type {kind!r} is not supported (only custom tools)", "tools"
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(f"tools.{i}.name: Field required", "tools")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"tools.{i}.input_schema: Field required (a JSON schema object)", "tools")
        fn: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if tool.get("description") is not None and not isinstance(tool["description"], str):
            raise _bad(f"tools.{i}.description: must be a string", "tools")
        if tool.get("description"):
            fn["description"] = tool["description"]
        converted.append({"type": "function", "function": fn})
    out["tools"] = converted
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "none"):
        out["tool_choice"] = kind
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad("tool_choice: type must be auto, any, tool (with a name) or none", "tool_choice")
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out["parallel_tool_calls"] = False


def to_chat_request(body: Any) -> dict[str, Any]:
    """An Anthropic Messages request as a validated OpenAI chat request."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model: Field required", "model")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _bad("max_tokens: Field required", "max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad(
            f"max_tokens: must be an integer of at least 1, got {max_tokens!r}", "max_tokens"
        )
    out: dict[str, Any] = {"model": model, "messages": _messages(body), "max_tokens": max_tokens}
    temperature = body.get("temperature")
    if temperature is not None:
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not (0 <= temperature <= 1)
        ):
            raise _bad(
                f"temperature: must be a number from 0 to 1, got {temperature!r}", "temperature"
            )
        out["temperature"] = temperature
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    # top_k is dropped: OpenAI's chat API has no such field and OpenAI itself rejects unknown ones.
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop_sequences: must be a list of strings", "stop_sequences")
        if len(stops) > 4:
            raise _bad(
                "stop_sequences: at most 4 are supported here (what every backend accepts)",
                "stop_sequences",
            )
        if stops:
            out["stop"] = stops
    _tools(body, out)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream: must be a boolean", "stream")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # the final usage feeds message_delta
    # Not carried over: thinking (no backend-neutral form), service_tier, container, mcp_servers
    # and cache_control hints: they mean nothing to the other backends.
    return chatfmt.validate_chat_request(out)


# ---- answer: OpenAI -> Anthropic ----------------------------------------------------------------


def anthropic_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI usage as Anthropic's: prompt tokens read from a cache are counted apart."""
    usage = usage or {}
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": max(0, int(usage.get("prompt_tokens") or 0) - cached),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def stop_of(choice: dict[str, Any], stops: list[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished choice.

    OpenAI's "stop" does not say whether a stop string ended the text; backends that do say
    (``stop_sequence``, or vLLM's ``stop_reason``) turn it into Anthropic's "stop_sequence".
    """
    finish = choice.get("finish_reason") or "stop"
    if finish == "stop":
        for field in ("stop_sequence", "stop_reason"):
            hit = choice.get(field)
            if isinstance(hit, str) and hit in stops:
                return "stop_sequence", hit
    return STOP_REASONS.get(finish, "end_turn"), None


def _tool_input(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    args = fn.get("arguments") or "{}"
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamError(
            f"The model called {fn.get('name')!r} with arguments that are not "
            f"a JSON object: {str(args)[:200]!r}"
        )
    return parsed


def to_message(doc: dict[str, Any], msg_id: str, stops: list[str]) -> dict[str, Any]:
    """A chat.completion as an Anthropic message."""
    choice = (doc.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or ():
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _tool_id(),
                "name": (call.get("function") or {}).get("name"),
                "input": _tool_input(call),
            }
        )
    reason, sequence = stop_of(choice, stops)
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": doc.get("model"),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": anthropic_usage(doc.get("usage")),
    }


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def event(kind: str, data: dict[str, Any]) -> bytes:
    """One Anthropic SSE event."""
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class StreamEvents:
    """Turns the OpenAI SSE frames of a chat stream into Anthropic's stream events."""

    def __init__(self, msg_id: str, model: str, input_estimate: int, stops: list[str]) -> None:
        self.msg_id, self.model, self.stops = msg_id, model, stops
        self.input_estimate = input_estimate
        self.index = -1  # the Anthropic content block now open, if self.open
        self.open: str | None = None  # "text", or "tool:<OpenAI tool_call index>"
        self.stop: tuple[str, str | None] = ("end_turn", None)
        self.usage: dict[str, Any] | None = None

    def start(self) -> list[bytes]:
        # The real input count is only known at the end; message_delta carries it then.
        usage = {"input_tokens": self.input_estimate, "output_tokens": 0}
        message = {
            "id": self.msg_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return [
            event("message_start", {"type": "message_start", "message": message}),
            event("ping", {"type": "ping"}),
        ]

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [event("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _begin(self, key: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.index += 1
        self.open = key
        out.append(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open != "text":
                    out += self._begin("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or ():
                key = f"tool:{call.get('index', 0)}"
                fn = call.get("function") or {}
                if self.open != key:
                    out += self._begin(
                        key,
                        {
                            "type": "tool_use",
                            "id": call.get("id") or _tool_id(),
                            "name": fn.get("name") or "",
                            "input": {},
                        },
                    )
                if fn.get("arguments"):
                    out.append(
                        self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]})
                    )
            if choice.get("finish_reason"):
                self.stop = stop_of(choice, self.stops)
        return out

    def finish(self) -> list[bytes]:
        out = self._close()
        reason, sequence = self.stop
        out.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": anthropic_usage(self.usage),
                },
            )
        )
        out.append(event("message_stop", {"type": "message_stop"}))
        return out

    def translate(self, stream: ChunkStream) -> Iterator[bytes]:
        """Anthropic events for the pipeline's chunks; a failure mid-stream is an error event."""
        yield from self.start()
        for item in stream:
            if item is KEEPALIVE:
                yield event("ping", {"type": "ping"})
                continue
            yield from self.chunk(item)
        if stream.error is not None:
            e = stream.error
            kind = error_type(None, e.type, e.code)
            yield event("error", {"type": "error", "error": {"type": kind, "message": e.message}})
            return
        self.usage = stream.usage
        yield from self.finish()


# ---- errors -------------------------------------------------------------------------------------


def error_type(status: int | None, oa_type: str | None, code: str | None) -> str:
    """Anthropic's error type for a gateway error (by status, or by its OpenAI type and code)."""
    if code in _OVERLOADED:
        return "overloaded_error"
    if status is not None:
        if status in _ERROR_TYPES:
            return _ERROR_TYPES[status]
        return "invalid_request_error" if status < 500 else "api_error"
    by_type = {
        "invalid_request_error": "invalid_request_error",
        "authentication_error": "authentication_error",
        "permission_error": "permission_error",
        "rate_limit_error": "rate_limit_error",
        "insufficient_quota": "rate_limit_error",
        "timeout_error": "timeout_error",
    }
    return by_type.get(oa_type or "", "api_error")


def _error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> tuple[Response, int]:
    resp = jsonify(
        {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": g.get("request_id"),
        }
    )
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

        def done() -> tuple[int, dict[str, Any]]:
            result.close()
            return result.status, served.fields

        if served.provider == "cache":
            g.log_fields = served.fields
        resp = Response(logged_stream(events.translate(result), done), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
    resp.headers["request-id"] = g.request_id  # where Anthropic's SDKs look for it
    return served_headers(resp, served)
