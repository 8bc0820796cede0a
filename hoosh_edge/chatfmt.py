"""OpenAI chat wire shapes: validate a request, stamp chunks, join chunks into a completion."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from .errors import InvalidRequest
from .estimate import text_tokens

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def _number(body: dict, key: str, lo: float, hi: float) -> None:
    if key not in body or body[key] is None:
        return
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidRequest(f"'{key}' must be a number, got {v!r}.", param=key)
    if not lo <= v <= hi:
        raise InvalidRequest(f"'{key}' must be between {lo:g} and {hi:g}, got {v!r}.", param=key)


def _int(body: dict, key: str, lo: int) -> None:
    if key not in body or body[key] is None:
        return
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidRequest(f"'{key}' must be an integer, got {v!r}.", param=key)
    if v < lo:
        raise InvalidRequest(f"'{key}' must be at least {lo}, got {v}.", param=key)


def validate_chat_request(body: Any) -> dict[str, Any]:
    """Check an OpenAI chat request; return it with ``stop`` as a list. Raises InvalidRequest."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"'{where}.role' must be one of {', '.join(sorted(ROLES))}; got {role!r}.",
                param=f"{where}.role",
            )
        content = m.get("content")
        if content is None:
            if role == "assistant" and (m.get("tool_calls") or m.get("function_call")):
                continue
            raise InvalidRequest(f"'{where}.content' is required.", param=f"{where}.content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise InvalidRequest(
                        f"'{where}.content[{j}]' must be an object with a 'type'.",
                        param=f"{where}.content[{j}]",
                    )
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise InvalidRequest(
                        f"'{where}.content[{j}].text' must be a string.",
                        param=f"{where}.content[{j}].text",
                    )
        elif not isinstance(content, str):
            raise InvalidRequest(
                f"'{where}.content' must be a string or an array of content parts.",
                param=f"{where}.content",
            )
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _int(body, "max_tokens", 1)
    _int(body, "max_completion_tokens", 1)
    _int(body, "n", 1)
    if body.get("n") not in (None, 1):
        raise InvalidRequest("Only n=1 is supported.", param="n")
    if "seed" in body and body["seed"] is not None:
        if isinstance(body["seed"], bool) or not isinstance(body["seed"], int):
            raise InvalidRequest("'seed' must be an integer.", param="seed")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop")
        if len(stop) > 4:
            raise InvalidRequest("'stop' may hold at most 4 sequences.", param="stop")
        body = {**body, "stop": stop or None}
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    for key in ("response_format",):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise InvalidRequest(f"'{key}' must be an object.", param=key)
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise InvalidRequest("'logprobs' must be a boolean.", param="logprobs")
    if body.get("top_logprobs") is not None:
        _int(body, "top_logprobs", 0)
        if body["top_logprobs"] > 20:
            raise InvalidRequest("'top_logprobs' must be between 0 and 20.", param="top_logprobs")
        if not logprobs:
            raise InvalidRequest("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise InvalidRequest("'user' must be a string.", param="user")
    return body


def max_tokens_of(req: dict[str, Any]) -> int | None:
    """The completion token limit the client asked for, whichever field it used."""
    v = req.get("max_completion_tokens")
    return v if v is not None else req.get("max_tokens")


def chunk_text(chunk: dict[str, Any]) -> str:
    """Content and tool-call argument text carried by one chunk."""
    out = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str):
            out.append(delta["content"])
        for call in delta.get("tool_calls") or ():
            fn = call.get("function") or {}
            out.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
    return "".join(out)


def join_chunks(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Build one chat.completion from its stream of chunks."""
    content: list[str] = []
    refusal: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    model = None
    logprobs: list[Any] | None = None
    matched_stop = None
    for chunk in chunks:
        model = chunk.get("model") or model
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                refusal.append(delta["refusal"])
            for tc in delta.get("tool_calls") or ():
                idx = tc.get("index", len(calls))
                slot = calls.setdefault(
                    idx, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["function"]["arguments"] += fn["arguments"]
            lp = choice.get("logprobs")
            if isinstance(lp, dict) and isinstance(lp.get("content"), list):
                logprobs = (logprobs or []) + lp["content"]
            if isinstance(choice.get("stop_reason"), str):
                matched_stop = choice["stop_reason"]  # the stop string that ended the text
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(content) if content or not calls else None,
    }
    if refusal:
        message["refusal"] = "".join(refusal)
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    choice_out: dict[str, Any] = {
        "index": 0,
        "message": message,
        "finish_reason": finish or "stop",
        "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
    }
    if matched_stop is not None:
        choice_out["stop_reason"] = matched_stop
    return {"model": model, "choices": [choice_out], "usage": usage}


def completion_text(doc: dict[str, Any]) -> str:
    """Text of a chat.completion's first choice (content and tool calls)."""
    try:
        msg = doc["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return ""
    parts = [msg.get("content") or ""]
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        parts.append(str(fn.get("name", "")) + str(fn.get("arguments", "")))
    return "".join(parts)


def normalize_usage(usage: Any, prompt_bound: int, completion: str | int) -> dict[str, int]:
    """Usage with the three OpenAI counts; where the backend gave none, the upper bounds.

    ``prompt_bound`` is ``estimate.prompt_tokens`` of the request; ``completion`` is the answer's
    text, or its length in UTF-8 bytes (at most one token each).
    """
    if isinstance(usage, dict):
        p = usage.get("prompt_tokens")
        c = usage.get("completion_tokens")
        if isinstance(p, int) and isinstance(c, int):
            out = dict(usage)
            out["total_tokens"] = p + c
            return out
    c = text_tokens(completion) if isinstance(completion, str) else max(0, int(completion))
    return {"prompt_tokens": prompt_bound, "completion_tokens": c,
            "total_tokens": prompt_bound + c, "estimated": True}  # fmt: skip


def sse(data: dict[str, Any] | str) -> bytes:
    """One SSE ``data:`` event."""
    text = (
        data
        if isinstance(data, str)
        else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    )
    return f"data: {text}\n\n".encode()
