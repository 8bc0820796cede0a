"""Anthropic's Messages API behind the OpenAI chat interface: requests one way, answers the other.

OpenAI -> Anthropic: system messages become the top-level ``system``; ``tool`` messages become
user ``tool_result`` blocks; consecutive same-role turns are merged; images, tools, tool_choice,
stop, max_tokens, temperature and user are mapped. Anthropic -> OpenAI: text and ``tool_use``
blocks, stop reasons, token usage, and the streamed events one by one as chat.completion.chunks.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from hoosh_edge.backends.providers.base import CallContext, ChatBackend
from hoosh_edge.backends.providers.catalog import ListsItsModels, ProviderModels, listed_ids
from hoosh_edge.backends.providers.http import HttpClient
from hoosh_edge.config import ProviderConfig
from hoosh_edge.errors import InvalidRequest, UpstreamError
from hoosh_edge.presets import ANTHROPIC_API_VERSION

# Anthropic requires max_tokens; OpenAI clients usually leave it out.
DEFAULT_MAX_TOKENS = 4096

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_DATA_URL = re.compile(r"^data:([^;,]+)((?:;[^;,]*)*),(.*)$", re.DOTALL)


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="messages")


def _text_parts(content: Any, where: str) -> list[str]:
    """The texts of a string or a list of text parts (system, tool and assistant content)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise _bad(f"{where}: content must be a string or a list of parts")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise _bad(f"{where}: only text content parts are allowed here, got {kind!r}")
        texts.append(str(part.get(part["type"]) or ""))  # "text" or "refusal"
    return texts


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    """An OpenAI image_url part as an Anthropic image block (inline base64 or a URL source)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise _bad(f"{where}: image_url part without a url")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    m = _DATA_URL.match(url)
    if not m:
        raise _bad(f"{where}: image url must be http(s) or a data: URL")
    media_type, params, data = m.group(1).lower(), m.group(2).lower(), m.group(3)
    if ";base64" not in params:
        raise _bad(f"{where}: data: URL images must be base64-encoded")
    if media_type not in IMAGE_TYPES:
        raise _bad(f"{where}: image type {media_type!r} is not one of {', '.join(IMAGE_TYPES)}")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(f"{where}: content must be a string or a list of parts")
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url":
            blocks.append(_image_block(part, where))
        else:
            raise _bad(f"{where}: content part type {kind!r} is not supported for Anthropic")
    return blocks


def _assistant_blocks(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": t} for t in _text_parts(msg.get("content"), where) if t
    ]
    for j, call in enumerate(msg.get("tool_calls") or []):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not fn.get("name") or not call.get("id"):
            raise _bad(f"{where}.tool_calls[{j}]: needs an id and function.name")
        args = fn.get("arguments") or "{}"
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            raise _bad(f"{where}.tool_calls[{j}]: function.arguments is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise _bad(f"{where}.tool_calls[{j}]: function.arguments must be a JSON object")
        blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"], "input": parsed})
    return blocks


def _convert_messages(messages: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """OpenAI messages -> (system texts, Anthropic messages with same-role turns merged)."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list")
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(f"{where} must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            # Anthropic has one system prompt, outside the turns: hoist them all, in order.
            system.extend(t for t in _text_parts(msg.get("content"), where) if t)
            continue
        if role == "user":
            blocks = _user_blocks(msg.get("content"), where)
        elif role == "assistant":
            blocks = _assistant_blocks(msg, where)
        elif role == "tool":
            if not msg.get("tool_call_id"):
                raise _bad(f"{where}: a tool message needs tool_call_id")
            text = "".join(_text_parts(msg.get("content"), where))
            role = "user"  # Anthropic carries tool results in the user's turn
            blocks = [{"type": "tool_result", "tool_use_id": msg["tool_call_id"], "content": text}]
        else:
            raise _bad(f"{where}: role {role!r} is not supported for Anthropic")
        if not blocks:
            continue  # Anthropic refuses empty text blocks; an empty turn says nothing anyway
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    if not out:
        raise _bad("messages hold no user or assistant content")
    for m in out:
        if len(m["content"]) == 1 and m["content"][0]["type"] == "text":
            m["content"] = m["content"][0]["text"]
    return system, out


def _convert_tools(req: dict[str, Any]) -> dict[str, Any]:
    tools = req.get("tools")
    if not tools:
        return {}
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise InvalidRequest(f"tools[{i}]: only function tools are supported", param="tools")
        if not fn.get("name"):
            raise InvalidRequest(f"tools[{i}]: function.name is required", param="tools")
        item = {
            "name": fn["name"],
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            item["description"] = fn["description"]
        out.append(item)
    body: dict[str, Any] = {"tools": out}
    choice = req.get("tool_choice")
    mapped: dict[str, Any] | None = None
    if choice in ("auto", "none"):
        mapped = {"type": choice}
    elif choice == "required":
        mapped = {"type": "any"}
    elif isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not name:
            raise InvalidRequest("tool_choice must name a function", param="tool_choice")
        mapped = {"type": "tool", "name": name}
    elif choice is not None:
        raise InvalidRequest(f"tool_choice {choice!r} is not supported", param="tool_choice")
    if req.get("parallel_tool_calls") is False and (mapped or {}).get("type") != "none":
        mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
    if mapped is not None:
        body["tool_choice"] = mapped
    return body


def to_messages_request(
    model: str, req: dict[str, Any], *, max_tokens_limit: int | None = None
) -> dict[str, Any]:
    """An OpenAI chat request as an Anthropic Messages request body (without ``stream``)."""
    system, messages = _convert_messages(req.get("messages"))
    body: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        body["system"] = system[0] if len(system) == 1 else [
            {"type": "text", "text": t} for t in system
        ]  # fmt: skip
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or DEFAULT_MAX_TOKENS
    if max_tokens_limit:
        max_tokens = min(max_tokens, max_tokens_limit)
    body["max_tokens"] = int(max_tokens)
    if req.get("temperature") is not None:
        # OpenAI's scale is 0-2, Anthropic's 0-1: values above 1 are the most random Anthropic
        # offers, so they are clamped rather than rescaled (0.7 keeps meaning 0.7).
        body["temperature"] = min(float(req["temperature"]), 1.0)
    if req.get("top_p") is not None:
        body["top_p"] = req["top_p"]
    stop = req.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]
        if stops := [s for s in stops if s]:
            body["stop_sequences"] = stops
    if req.get("user"):
        body["metadata"] = {"user_id": str(req["user"])}
    body.update(_convert_tools(req))
    # Left out on purpose, since the Messages API has no equivalent: seed (no deterministic
    # sampling), n (one answer per call), frequency/presence penalties, logit_bias and logprobs.
    # response_format (json_object / json_schema) is dropped too: Anthropic has no JSON mode
    # here, and failing the request would be worse than an answer the prompt already steers.
    return body


def _usage(u: dict[str, Any] | None) -> dict[str, Any]:
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


def to_chat_completion(doc: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic message (non-streamed answer) as an OpenAI chat.completion."""
    texts, calls = [], []
    for block in doc.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append({
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                },
            })  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
        message["content"] = message["content"] or None
    return {
        "id": f"chatcmpl-{doc.get('id') or int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": doc.get("model") or model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": FINISH_REASONS.get(doc.get("stop_reason") or "end_turn", "stop"),
        }],
        "usage": _usage(doc.get("usage")),
    }  # fmt: skip


class StreamTranslator:
    """Turns Anthropic stream events, one at a time, into OpenAI chat.completion.chunks."""

    def __init__(self, model: str, provider: str) -> None:
        self.provider = provider
        self.id = f"chatcmpl-{int(time.time() * 1000)}"
        self.model = model
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        self.tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_call index
        self.args_sent: set[int] = set()
        self.finished = False
        self.done = False

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def feed(self, etype: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks one event yields; raises UpstreamError for an error event."""
        if etype == "message_start":
            msg = data.get("message") or {}
            if msg.get("id"):
                self.id = f"chatcmpl-{msg['id']}"
            self.model = msg.get("model") or self.model
            self.usage.update(msg.get("usage") or {})
            return [self.chunk({"role": "assistant", "content": ""})]
        if etype == "content_block_start":
            index, block = data.get("index", 0), data.get("content_block") or {}
            if block.get("type") == "text" and block.get("text"):
                return [self.chunk({"content": block["text"]})]
            if block.get("type") == "tool_use":
                self.tools[index] = n = len(self.tools)
                call = {"index": n, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""}}  # fmt: skip
                return [self.chunk({"tool_calls": [call]})]
            return []  # thinking and server-tool blocks have no OpenAI counterpart
        if etype == "content_block_delta":
            index, delta = data.get("index", 0), data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self.chunk({"content": delta["text"]})]
            if delta.get("type") == "input_json_delta" and index in self.tools:
                fragment = delta.get("partial_json") or ""
                if not fragment:
                    return []
                self.args_sent.add(index)
                call = {"index": self.tools[index], "function": {"arguments": fragment}}
                return [self.chunk({"tool_calls": [call]})]
            return []
        if etype == "content_block_stop":
            index = data.get("index", 0)
            if index in self.tools and index not in self.args_sent:
                # A tool without arguments streams no JSON; clients still json.loads() them.
                self.args_sent.add(index)
                call = {"index": self.tools[index], "function": {"arguments": "{}"}}
                return [self.chunk({"tool_calls": [call]})]
            return []
        if etype == "message_delta":
            # message_delta usage is cumulative: the latest value of each count wins.
            self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason and not self.finished:
                self.finished = True
                return [self.chunk({}, FINISH_REASONS.get(reason, "stop"))]
            return []
        if etype == "message_stop":
            self.done = True
            out = [] if self.finished else [self.chunk({}, "stop")]
            self.finished = True
            usage_chunk = {**self.chunk({}), "choices": [], "usage": _usage(self.usage)}
            return out + [usage_chunk]
        if etype == "error":
            err = data.get("error") or {}
            kind = f"{err.get('type')}: " if isinstance(err, dict) and err.get("type") else ""
            msg = err.get("message") if isinstance(err, dict) else str(err)
            raise UpstreamError(f"{self.provider} reported mid-stream: {kind}{msg}")
        return []  # ping, and event types added to the API after this code was written


class AnthropicProvider(ListsItsModels, ChatBackend):
    """Serves OpenAI chat requests from Anthropic's Messages API."""

    def __init__(self, cfg: ProviderConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.http = HttpClient(cfg)
        self.catalog = ProviderModels(cfg, self._list_models)
        self.api_version = cfg.api_version or ANTHROPIC_API_VERSION

    def serves(self, model: str) -> bool:
        return self.cfg.serves(model)

    def _list_models(self) -> list[str]:
        return listed_ids(
            self.http.get_json(f"{self.cfg.base_url}/models?limit=1000", headers=self._headers())
        )

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.api_version}
        if self.cfg.api_key:
            headers["x-api-key"] = self.cfg.api_key
        return headers

    def _body(self, model: str, req: dict[str, Any], stream: bool) -> dict[str, Any]:
        body = to_messages_request(model, req, max_tokens_limit=self.cfg.max_tokens_limit)
        body["stream"] = stream
        return body

    def complete(self, model: str, req: dict[str, Any], ctx: CallContext) -> dict:
        body = self._body(model, req, stream=False)
        resp = self.http.post(f"{self.cfg.base_url}/messages", body=body, headers=self._headers())
        try:
            doc = resp.json()
        except ValueError:
            raise UpstreamError(
                self.http.clean(f"{self.name} answered with invalid JSON: {resp.text[:200]!r}")
            ) from None
        if isinstance(doc, dict) and doc.get("type") == "error":
            err = doc.get("error") or {}
            msg = err.get("message") if isinstance(err, dict) else err
            raise UpstreamError(self.http.clean(f"{self.name} reported: {msg}"))
        if not isinstance(doc, dict) or not isinstance(doc.get("content"), list):
            raise UpstreamError(
                self.http.clean(f"{self.name} answered without 'content': {str(doc)[:200]}")
            )
        return to_chat_completion(doc, model)

    def stream(self, model: str, req: dict[str, Any], ctx: CallContext) -> Iterator[dict]:
        body = self._body(model, req, stream=True)
        resp = self.http.post(
            f"{self.cfg.base_url}/messages", body=body, headers=self._headers(), stream=True
        )
        state = StreamTranslator(model, self.name)
        events = self.http.events(resp)
        try:
            for event in events:
                if not event.data:
                    continue
                try:
                    data = json.loads(event.data)
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    ctx.malformed(self.name, event.data)
                    continue
                etype = data.get("type") or event.event
                try:
                    yield from state.feed(etype, data)
                except UpstreamError as e:
                    raise UpstreamError(self.http.clean(e.message)) from None
                if state.done:
                    return
        finally:
            events.close()
        raise UpstreamError(f"{self.name}: stream ended early, before message_stop")

    def close(self) -> None:
        self.http.close()
