"""OpenAI chat wire shapes: validate a request, stamp chunks, join chunks into a completion."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from hoosh_edge.errors import InvalidRequest
from hoosh_edge.estimate import text_tokens

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


# Content part types each role may send, from OpenAI's API reference (ChatCompletionRequest*Message).
PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
    "function": (),
}
_IMAGE_DETAIL = ("auto", "low", "high")
_AUDIO_FORMATS = ("wav", "mp3")
_TOOL_CHOICES = ("none", "auto", "required")
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def _fail(where: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"'{where}' {what}", param=where)


def _string(obj: dict, key: str, where: str, *, required: bool = True) -> None:
    """``obj[key]`` must be a string (or absent / null when not required)."""
    value = obj.get(key)
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise _fail(f"{where}.{key}", f"must be a string, got {_kind(value)}.")


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(where, f"must be an object, got {_kind(value)}.")
    return value


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "an integer", float: "a number"}  # fmt: skip


def _kind(value: Any) -> str:
    """What a JSON value is, in JSON's words."""
    return "null" if value is None else _JSON_KINDS.get(type(value), type(value).__name__)


def _part(part: Any, role: str, where: str) -> None:
    """One content part: a type this role may send, in the shape OpenAI defines for it."""
    if not isinstance(part, dict):
        raise _fail(where, "must be an object with a 'type'.")
    kind = part.get("type")
    allowed = PART_TYPES[role]
    if kind not in allowed:
        raise _fail(
            f"{where}.type",
            f"must be one of {', '.join(allowed)} in a {role} message; got {kind!r}.",
        )
    if kind in ("text", "refusal"):
        _string(part, kind, where)
    elif kind == "image_url":
        image = _object(part.get("image_url"), f"{where}.image_url")
        _string(image, "url", f"{where}.image_url")
        if image.get("detail") is not None and image["detail"] not in _IMAGE_DETAIL:
            raise _fail(f"{where}.image_url.detail", f"must be one of {', '.join(_IMAGE_DETAIL)}.")
    elif kind == "input_audio":
        audio = _object(part.get("input_audio"), f"{where}.input_audio")
        _string(audio, "data", f"{where}.input_audio")
        if audio.get("format") not in _AUDIO_FORMATS:
            raise _fail(
                f"{where}.input_audio.format", f"must be one of {', '.join(_AUDIO_FORMATS)}."
            )
    elif kind == "file":
        file = _object(part.get("file"), f"{where}.file")
        for key in ("file_data", "file_id", "filename"):
            _string(file, key, f"{where}.file", required=False)
        if file.get("file_data") is None and file.get("file_id") is None:
            raise _fail(f"{where}.file", "needs file_data or file_id.")


def _tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise _fail(where, "must be an array.")
    for k, call in enumerate(calls):
        at = f"{where}[{k}]"
        _object(call, at)
        kind = call.get("type", "function")
        if kind == "function":
            fn = _object(call.get("function"), f"{at}.function")
            _string(fn, "name", f"{at}.function")
            _string(fn, "arguments", f"{at}.function")
        elif kind == "custom":
            custom = _object(call.get("custom"), f"{at}.custom")
            _string(custom, "name", f"{at}.custom")
        else:
            raise _fail(f"{at}.type", f"must be function or custom; got {kind!r}.")
        _string(call, "id", at)


def _message(m: Any, where: str) -> None:
    if not isinstance(m, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where)
    role = m.get("role")
    if not isinstance(role, str) or role not in ROLES:  # a list here is unhashable
        raise InvalidRequest(
            f"'{where}.role' must be one of {', '.join(sorted(ROLES))}; got {role!r}.",
            param=f"{where}.role",
        )
    _string(m, "name", where, required=role == "function")
    if role == "tool":
        _string(m, "tool_call_id", where)
    if role == "assistant":
        if m.get("tool_calls") is not None:
            _tool_calls(m["tool_calls"], f"{where}.tool_calls")
        if m.get("function_call") is not None:
            fn = _object(m["function_call"], f"{where}.function_call")
            _string(fn, "name", f"{where}.function_call")
            _string(fn, "arguments", f"{where}.function_call")
        _string(m, "refusal", where, required=False)
    content = m.get("content")
    if content is None:
        if role == "assistant" and (
            m.get("tool_calls") or m.get("function_call") or m.get("audio")
        ):
            return
        raise InvalidRequest(f"'{where}.content' is required.", param=f"{where}.content")
    if isinstance(content, list) and role != "function":
        for j, part in enumerate(content):
            _part(part, role, f"{where}.content[{j}]")
    elif not isinstance(content, str):
        raise InvalidRequest(
            f"'{where}.content' must be a string or an array of content parts.",
            param=f"{where}.content",
        )


def _tools(body: dict) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        _object(tool, at)
        kind = tool.get("type", "function")
        if kind not in ("function", "custom"):
            raise _fail(f"{at}.type", f"must be function or custom; got {kind!r}.")
        spec = _object(tool.get(kind), f"{at}.{kind}")
        _string(spec, "name", f"{at}.{kind}")
        _string(spec, "description", f"{at}.{kind}", required=False)
        if kind == "function" and spec.get("parameters") is not None:
            _object(spec["parameters"], f"{at}.function.parameters")
    choice = body.get("tool_choice")
    if choice is None or choice in _TOOL_CHOICES:
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise InvalidRequest(
            "'tool_choice' must be none, auto, required or an object naming a tool.",
            param="tool_choice",
        )
    if choice["type"] in ("function", "custom"):
        _string(_object(choice.get(choice["type"]), f"tool_choice.{choice['type']}"), "name",
                f"tool_choice.{choice['type']}")  # fmt: skip


def _response_format(body: dict) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    _object(fmt, "response_format")
    if fmt.get("type") not in _RESPONSE_FORMATS:
        raise _fail("response_format.type", f"must be one of {', '.join(_RESPONSE_FORMATS)}.")
    if fmt["type"] == "json_schema":
        spec = _object(fmt.get("json_schema"), "response_format.json_schema")
        _string(spec, "name", "response_format.json_schema")
        if spec.get("schema") is not None:
            _object(spec["schema"], "response_format.json_schema.schema")


def validate_chat_request(body: Any) -> dict[str, Any]:
    """Check an OpenAI chat request; return it with ``stop`` as a list. Raises InvalidRequest."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    for own in ("legacy", "responses"):  # fields the completions and responses doors set
        if own in body:
            raise InvalidRequest(f"Unknown parameter: '{own}'.", param=own)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for i, m in enumerate(messages):
        _message(m, f"messages[{i}]")
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
    if opts is not None:
        _object(opts, "stream_options")
        if opts.get("include_usage") is not None and not isinstance(opts["include_usage"], bool):
            raise _fail("stream_options.include_usage", "must be a boolean.")
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop")
        if len(stop) > 4:
            raise InvalidRequest("'stop' may hold at most 4 sequences.", param="stop")
        body = {**body, "stop": stop or None}
    _tools(body)
    _response_format(body)
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


_TEXT_CHOICE = frozenset({"index", "delta", "finish_reason"})


def text_chunk(chunk: Any, head: bool = False) -> bool:
    """A bare chunk of content text for choice 0 and nothing else (a local engine's token).

    Only these are merged (``merge_text``): no id or model yet, no finish, no logprobs, no
    tool call; ``head`` allows the role of a first chunk.
    """
    if not isinstance(chunk, dict) or len(chunk) != 1:
        return False
    choices = chunk.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return False
    choice = choices[0]
    if not isinstance(choice, dict) or choice.keys() - _TEXT_CHOICE:
        return False
    if choice.get("finish_reason") is not None or choice.get("index", 0) != 0:
        return False
    delta = choice.get("delta")
    if not isinstance(delta, dict) or not isinstance(delta.get("content"), str):
        return False
    return len(delta) == 1 or (head and len(delta) == 2 and "role" in delta)


def merge_text(head: dict[str, Any], more: list[dict[str, Any]]) -> dict[str, Any]:
    """``head`` (a ``text_chunk``) carrying the text of ``more`` after its own: one frame."""
    delta = head["choices"][0]["delta"]
    delta["content"] += "".join(m["choices"][0]["delta"]["content"] for m in more)
    return head


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
