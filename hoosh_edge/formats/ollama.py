"""Ollama's chat and generate API (its docs/api.md) to and from the gateway's neutral chat form.

Requests: an ``/api/chat`` or ``/api/generate`` body becomes an OpenAI chat-completions request
(then checked by ``formats.openai.validate_chat_request``), with what only Ollama has beside it
(``stream``, ``keep_alive``) in an ``OllamaAsk``. Answers: OpenAI-shaped chunks become Ollama's
objects (``Reply``), one per NDJSON line, the last with ``done: true`` and the measured counts and
durations in nanoseconds. Tool-call arguments are JSON objects on Ollama's side and JSON strings
on OpenAI's; both directions are translated here.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from hoosh_edge.errors import InvalidRequest
from hoosh_edge.formats.openai import validate_chat_request

log = logging.getLogger(__name__)

# Ollama's options with an OpenAI request field of the same meaning.
_SAME_OPTIONS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
FOREVER = math.inf  # keep_alive below zero: keep the model loaded
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_ROLES = ("system", "user", "assistant", "tool")


@dataclass
class OllamaAsk:
    """One Ollama call: the neutral request (None: only load or unload) and Ollama's own knobs."""

    model: str
    req: dict[str, Any] | None
    stream: bool = True
    keep_alive_s: float | None = None  # None: the box's default; 0 unload now; inf: forever
    ignored: list[str] = field(default_factory=list)  # options with no equivalent here


def fail(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def keep_alive_seconds(value: Any) -> float | None:
    """Seconds from Ollama's ``keep_alive``: a number of seconds or a Go duration ("5m", "1h30m")."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise fail("'keep_alive' must be a duration (\"5m\") or a number of seconds.", "keep_alive")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)  # "300", "-1": seconds, as Ollama reads them
        except ValueError:
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise fail(f"'keep_alive' {value!r} is not a duration such as \"5m\" or \"30s\".",
                           "keep_alive") from None  # fmt: skip
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    else:
        raise fail("'keep_alive' must be a duration (\"5m\") or a number of seconds.", "keep_alive")
    if math.isnan(seconds):
        raise fail("'keep_alive' must be a number.", "keep_alive")
    return FOREVER if seconds < 0 else seconds


def _options(options: Any, req: dict[str, Any], ignored: list[str]) -> None:
    """Ollama's ``options`` into the request fields that mean the same; the rest is listed."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise fail("'options' must be an object.", "options")
    for key, value in options.items():
        if value is None:
            continue
        if key in _SAME_OPTIONS:
            req[key] = value
        elif key == "num_predict":
            if isinstance(value, bool) or not isinstance(value, int):
                raise fail("'options.num_predict' must be an integer.", "options.num_predict")
            if value > 0:
                req["max_tokens"] = value  # -1 (no limit) and -2 (fill the context): no cap
        elif key == "stop":
            req["stop"] = value
        else:
            ignored.append(key)  # num_ctx, top_k, repeat_penalty, ...: no such knob here


def _format(fmt: Any, req: dict[str, Any]) -> None:
    """``format``: "json" or a JSON schema, as OpenAI's ``response_format``."""
    if fmt is None or fmt == "":
        return
    if fmt == "json":
        req["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        req["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": "response", "schema": fmt,
                                                  "strict": False}}  # fmt: skip
    else:
        raise fail("'format' must be \"json\" or a JSON schema object.", "format")


def _no_images(images: Any, where: str) -> None:
    if images:
        raise fail(f"'{where}.images': images are not supported here (no vision models).",
                   f"{where}.images")  # fmt: skip


def _arguments_text(args: Any, where: str) -> str:
    if isinstance(args, str):
        return args  # some clients already send a JSON string
    if not isinstance(args, dict):
        raise fail(f"'{where}' must be a JSON object.", where)
    return json.dumps(args, ensure_ascii=False)


def _messages(messages: Any) -> list[dict[str, Any]]:
    """Ollama's messages as OpenAI's: tool calls get ids, and each tool result names its call."""
    if not isinstance(messages, list):
        raise fail("'messages' must be an array.", "messages")
    out: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (id, function name) of calls awaiting a result
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise fail(f"'{where}' must be an object.", where)
        role = m.get("role")
        if role not in _ROLES:
            raise fail(f"'{where}.role' must be one of {', '.join(_ROLES)}; got {role!r}.",
                       f"{where}.role")  # fmt: skip
        _no_images(m.get("images"), where)
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise fail(f"'{where}.content' must be a string.", f"{where}.content")
        msg: dict[str, Any] = {"role": role, "content": content or ""}
        calls = m.get("tool_calls")
        if role == "assistant" and calls:
            if not isinstance(calls, list):
                raise fail(f"'{where}.tool_calls' must be an array.", f"{where}.tool_calls")
            msg["tool_calls"] = []
            for k, call in enumerate(calls):
                at = f"{where}.tool_calls[{k}].function"
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise fail(f"'{at}' must be an object with a name.", at)
                cid = call.get("id") if isinstance(call.get("id"), str) else f"call_{i}_{k}"
                msg["tool_calls"].append({"id": cid, "type": "function", "function": {
                    "name": fn["name"], "arguments": _arguments_text(fn.get("arguments") or {},
                                                                     f"{at}.arguments")}})  # fmt: skip
                unanswered.append((cid, fn["name"]))
            if not content:
                msg["content"] = None
        if role == "tool":
            name = m.get("tool_name") or m.get("name")
            # Ollama's results carry no call id: each answers the oldest open call (of that name).
            pick = next((c for c in unanswered if name and c[1] == name), None)
            pick = pick or (unanswered[0] if unanswered else None)
            if pick is None:
                raise fail(f"'{where}' is a tool result, but no tool call comes before it.",
                           where)  # fmt: skip
            unanswered.remove(pick)
            msg["tool_call_id"] = pick[0]
        out.append(msg)
    return out


def _common(body: dict[str, Any], req: dict[str, Any], ask: OllamaAsk) -> None:
    _options(body.get("options"), req, ask.ignored)
    _format(body.get("format"), req)
    tools = body.get("tools")
    if tools:
        req["tools"] = tools  # Ollama's tool objects are OpenAI's
    stream = body.get("stream", True)
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise fail("'stream' must be a boolean.", "stream")
    ask.stream = stream
    ask.keep_alive_s = keep_alive_seconds(body.get("keep_alive"))
    think = body.get("think")
    if think is not None and not isinstance(think, (bool, str)):
        raise fail('\'think\' must be a boolean or "low", "medium", "high".', "think")


def _model(body: Any) -> str:
    if not isinstance(body, dict):
        raise fail("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise fail("'model' is required and must be a non-empty string.", "model")
    return model.strip()


def chat_request(body: Any) -> OllamaAsk:
    """An ``/api/chat`` body as a neutral request; no messages at all only loads the model."""
    ask = OllamaAsk(model=_model(body), req=None)
    req: dict[str, Any] = {"model": ask.model}
    _common(body, req, ask)
    messages = body.get("messages")
    if messages is None or messages == []:
        return ask  # Ollama's way to load (or, with keep_alive 0, unload) a model
    req["messages"] = _messages(messages)
    req["stream"] = True  # the door reads chunks either way: it times them
    ask.req = validate_chat_request(req)
    return ask


def generate_request(body: Any) -> OllamaAsk:
    """An ``/api/generate`` body as a chat request: ``system`` then ``prompt`` as messages."""
    ask = OllamaAsk(model=_model(body), req=None)
    req: dict[str, Any] = {"model": ask.model}
    _common(body, req, ask)
    _no_images(body.get("images"), "generate")
    if body.get("raw"):
        raise fail("'raw' prompts are not supported: the model's own chat template is applied.",
                   "raw")  # fmt: skip
    for key in ("template", "context", "suffix"):
        if body.get(key):
            ask.ignored.append(key)
    prompt, system = body.get("prompt"), body.get("system")
    for key, value in (("prompt", prompt), ("system", system)):
        if value is not None and not isinstance(value, str):
            raise fail(f"'{key}' must be a string.", key)
    if not prompt:
        return ask
    req["messages"] = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    req["stream"] = True
    ask.req = validate_chat_request(req)
    return ask


# ---- answers ------------------------------------------------------------------------------------


def now_rfc3339() -> str:
    """Ollama's ``created_at``: UTC with a ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _done_reason(finish: str | None) -> str:
    return "length" if finish == "length" else "stop"  # a tool call ends with "stop" in Ollama


def _arguments_object(text: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warning("tool call %s: arguments are not a JSON object; sent as {}", name)
        return {}
    return value


@dataclass
class Timing:
    """When the call began, its first and last piece arrived, and how long a model load took."""

    started: float
    first: float | None = None
    last: float | None = None
    load_s: float = 0.0

    def fields(self, end: float) -> dict[str, int]:
        first = self.first if self.first is not None else end
        last = self.last if self.last is not None else end
        load = min(self.load_s, max(0.0, first - self.started))
        return {"total_duration": _ns(end - self.started), "load_duration": _ns(load),
                "prompt_eval_duration": _ns(first - self.started - load),
                "eval_duration": _ns(last - first)}  # fmt: skip


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


class Reply:
    """One answer turned into Ollama's objects: ``chat`` messages or ``generate`` responses."""

    def __init__(self, model: str, kind: str) -> None:
        self.model = model
        self.kind = kind
        self.finish: str | None = None
        self.text: list[str] = []
        self._calls: dict[int, dict[str, str]] = {}  # OpenAI streams them in fragments

    def feed(self, chunk: dict[str, Any]) -> str:
        """Take one neutral chunk; the text it adds ("" for none)."""
        text = ""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or choice.get("message") or {}
            text += delta.get("content") or ""
            for k, tc in enumerate(delta.get("tool_calls") or ()):
                slot = self._calls.setdefault(tc.get("index", k), {"name": "", "arguments": ""})
                fn = tc.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        if text:
            self.text.append(text)
        return text

    def tool_calls(self) -> list[dict[str, Any]]:
        return [{"function": {"name": c["name"],
                              "arguments": _arguments_object(c["arguments"], c["name"])}}
                for _, c in sorted(self._calls.items())]  # fmt: skip

    def _obj(self, text: str, done: bool, calls: list[dict[str, Any]] | None = None) -> dict:
        obj: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            obj["message"] = message
        else:
            obj["response"] = text
        obj["done"] = done
        return obj

    def piece(self, text: str) -> dict[str, Any]:
        """A streamed line with ``text``."""
        return self._obj(text, False)

    def calls_line(self) -> dict[str, Any] | None:
        """The streamed line with the tool calls (sent whole, once they are complete)."""
        calls = self.tool_calls()
        return self._obj("", False, calls) if calls and self.kind == "chat" else None

    def final(self, usage: dict[str, Any] | None, timing: Timing, end: float,
              whole: bool = False) -> dict[str, Any]:  # fmt: skip
        """The ``done`` object: the whole answer too when ``whole`` (``stream: false``)."""
        calls = self.tool_calls() if whole else None
        obj = self._obj("".join(self.text) if whole else "", True, calls)
        usage = usage or {}
        obj["done_reason"] = _done_reason(self.finish)
        obj.update(timing.fields(end))
        obj["prompt_eval_count"] = int(usage.get("prompt_tokens") or 0)
        obj["eval_count"] = int(usage.get("completion_tokens") or 0)
        order = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                 "eval_count", "eval_duration")  # fmt: skip
        return {**{k: v for k, v in obj.items() if k not in order}, **{k: obj[k] for k in order}}


def empty_final(model: str, kind: str, timing: Timing, end: float, reason: str) -> dict[str, Any]:
    """The one object of a call that only loaded (``load``) or unloaded (``unload``) a model."""
    obj = Reply(model, kind)._obj("", True)
    obj["done_reason"] = reason
    obj.update(timing.fields(end))
    return obj


def ndjson(obj: dict[str, Any]) -> bytes:
    """One NDJSON line."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
