"""Anthropic messages <-> OpenAI chat.completions: stop reasons, usage, content, error types.

One stop-reason table serves both directions. Usage: Anthropic counts cache writes and reads apart
from ``input_tokens``; OpenAI counts them in ``prompt_tokens`` (reads again as ``cached_tokens``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from hoosh_edge.errors import UpstreamError
from hoosh_edge.formats.anthropic_blocks import answer_tool_use

# Anthropic stop_reason <-> OpenAI finish_reason. The provider reads it left to right; the door
# reads it right to left, where the first row naming an OpenAI reason wins (stop -> end_turn).
STOP_REASONS = (
    ("end_turn", "stop"),
    ("stop_sequence", "stop"),
    ("pause_turn", "stop"),
    ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"),
    ("tool_use", "tool_calls"),
    ("refusal", "content_filter"),
)
FINISH_REASONS = dict(STOP_REASONS)
_STOP_OF_FINISH = {oa: an for an, oa in reversed(STOP_REASONS)}
_STOP_OF_FINISH["function_call"] = "tool_use"  # OpenAI's legacy name for tool_calls

# Anthropic's error type for each HTTP status the gateway answers with.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# The gateway's OpenAI error types that Anthropic names too (or names as the nearest kind).
_ERROR_TYPE_OF_OPENAI = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "rate_limit_error": "rate_limit_error",
    "insufficient_quota": "rate_limit_error",
    "timeout_error": "timeout_error",
}
# The box is busy or short of memory: Anthropic's clients know that as 529, "retry later".
OVERLOADED = {"queue_full", "insufficient_memory", "service_unavailable", "provider_disabled"}


def finish_reason(stop_reason: str | None) -> str:
    """The OpenAI finish_reason for an Anthropic stop_reason (an unknown one is a plain stop)."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def finish_choice(stop_reason: str | None, stop_sequence: Any) -> dict[str, Any]:
    """The finish fields of an OpenAI choice, with the stop string that ended the text.

    OpenAI's "stop" does not say whether a stop string matched; ``stop_reason`` holding the
    string is vLLM's way to say so, which ``stop_of`` (and the chunk joiner) read back.
    """
    out: dict[str, Any] = {"finish_reason": finish_reason(stop_reason)}
    if stop_reason == "stop_sequence" and isinstance(stop_sequence, str):
        out["stop_reason"] = stop_sequence
    return out


def stop_of(choice: dict[str, Any], stops: list[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished OpenAI choice.

    Backends that say which stop string ended the text (``stop_sequence``, or vLLM's
    ``stop_reason``) turn "stop" into Anthropic's "stop_sequence".
    """
    finish = choice.get("finish_reason")
    if not isinstance(finish, str):
        finish = "stop"  # none given, or a backend's nonsense: the text simply ended
    if finish == "stop":
        for field in ("stop_sequence", "stop_reason"):
            hit = choice.get(field)
            if isinstance(hit, str) and hit in stops:
                return "stop_sequence", hit
    return _STOP_OF_FINISH.get(finish, "end_turn"), None


def openai_usage(u: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage as OpenAI usage; cache writes and reads are prompt tokens too."""
    u = u or {}
    cached = int(u.get("cache_read_input_tokens") or 0)
    prompt = (
        int(u.get("input_tokens") or 0) + int(u.get("cache_creation_input_tokens") or 0) + cached
    )
    completion = int(u.get("output_tokens") or 0)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


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


def to_chat_completion(
    doc: dict[str, Any], model: str, provider: str = "upstream"
) -> dict[str, Any]:
    """An Anthropic message (non-streamed answer) as an OpenAI chat.completion."""
    try:
        return _completion(doc, model)
    except (AttributeError, TypeError, ValueError):
        # Fields in shapes the API never sends: the upstream's fault, not a traceback here.
        raise UpstreamError(f"{provider} answered with a malformed message") from None


def _completion(doc: dict[str, Any], model: str) -> dict[str, Any]:
    texts, calls = [], []
    for block in doc.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            if not isinstance(block.get("input") or {}, dict) or not block.get("name"):
                raise ValueError("a tool_use block without a name or an object input")
            calls.append({
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                },
            })  # fmt: skip
        # thinking blocks: an OpenAI chat.completion has no place for them
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
        message["content"] = message["content"] or None
    choice = {"index": 0, "message": message,
              **finish_choice(doc.get("stop_reason"), doc.get("stop_sequence"))}  # fmt: skip
    return {
        "id": f"chatcmpl-{doc.get('id') or int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": doc.get("model") or model,
        "choices": [choice],
        "usage": openai_usage(doc.get("usage")),
    }


def to_message(doc: dict[str, Any], msg_id: str, stops: list[str]) -> dict[str, Any]:
    """A chat.completion as an Anthropic message."""
    choice = (doc.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    content.extend(answer_tool_use(call) for call in msg.get("tool_calls") or ())
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


def error_type(status: int | None, oa_type: str | None, code: str | None) -> str:
    """Anthropic's error type for a gateway error (by status, or by its OpenAI type and code)."""
    if code in OVERLOADED:
        return "overloaded_error"
    if status is not None:
        if status in ERROR_TYPES:
            return ERROR_TYPES[status]
        return "invalid_request_error" if status < 500 else "api_error"
    return _ERROR_TYPE_OF_OPENAI.get(oa_type or "", "api_error")


def error_body(kind: str, message: str) -> dict[str, Any]:
    """Anthropic's error shape, as a body or a stream's ``error`` event."""
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_text(doc: Any) -> str:
    """What an Anthropic error body or ``error`` event says, with its type: "type: message"."""
    err = doc.get("error") if isinstance(doc, dict) else doc
    if not isinstance(err, dict):
        return str(err)
    kind = f"{err['type']}: " if err.get("type") else ""
    return f"{kind}{err.get('message')}"
