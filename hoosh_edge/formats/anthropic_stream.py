"""Anthropic stream events <-> OpenAI chat.completion.chunks, one event or chunk at a time.

``StreamTranslator`` (for the Anthropic provider) turns Anthropic's events into chunks;
``StreamEvents`` (for the /v1/messages door) turns chunks into Anthropic's events. Events are
plain dicts whose ``type`` is also the SSE event name; framing them is the caller's business.
"""

from __future__ import annotations

import time
from typing import Any

from hoosh_edge.errors import UpstreamError
from hoosh_edge.formats.anthropic_blocks import tool_id
from hoosh_edge.formats.anthropic_response import (
    anthropic_usage,
    error_text,
    finish_choice,
    openai_usage,
    stop_of,
)


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

    def chunk(self, delta: dict[str, Any], finish: dict[str, Any] | None = None) -> dict[str, Any]:
        """One chunk with ``delta``; ``finish`` holds the finish fields of the last one."""
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        if finish:
            choice.update(finish)
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def feed(self, etype: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks one event yields; raises UpstreamError for an error event."""
        handler = _HANDLERS.get(etype) if isinstance(etype, str) else None
        if handler is None:
            return []  # ping, and event types added to the API after this code was written
        try:
            return handler(self, data)
        except (AttributeError, TypeError, ValueError):
            # A known event in a shape the API never sends (an object where a list belongs, ...):
            # the upstream's fault, so a clean upstream error rather than a traceback.
            raise UpstreamError(f"{self.provider} sent a malformed {etype} event") from None

    def _on_message_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        msg = data.get("message") or {}
        if msg.get("id"):
            self.id = f"chatcmpl-{msg['id']}"
        self.model = msg.get("model") or self.model
        self.usage.update(msg.get("usage") or {})
        return [self.chunk({"role": "assistant", "content": ""})]

    def _on_content_block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        index, block = data.get("index", 0), data.get("content_block") or {}
        if block.get("type") == "text" and block.get("text"):
            return [self.chunk({"content": block["text"]})]
        if block.get("type") == "tool_use":
            self.tools[index] = n = len(self.tools)
            call = {"index": n, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""}}  # fmt: skip
            return [self.chunk({"tool_calls": [call]})]
        return []  # thinking and server-tool blocks have no OpenAI counterpart

    def _on_content_block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
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

    def _on_content_block_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        index = data.get("index", 0)
        if index in self.tools and index not in self.args_sent:
            # A tool without arguments streams no JSON; clients still json.loads() them.
            self.args_sent.add(index)
            call = {"index": self.tools[index], "function": {"arguments": "{}"}}
            return [self.chunk({"tool_calls": [call]})]
        return []

    def _on_message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        # message_delta usage is cumulative: the latest value of each count wins.
        self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
        delta = data.get("delta") or {}
        reason = delta.get("stop_reason")
        if reason and not self.finished:
            self.finished = True
            return [self.chunk({}, finish_choice(reason, delta.get("stop_sequence")))]
        return []

    def _on_message_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.done = True
        out = [] if self.finished else [self.chunk({}, {"finish_reason": "stop"})]
        self.finished = True
        return [*out, {**self.chunk({}), "choices": [], "usage": openai_usage(self.usage)}]

    def _on_error(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        raise UpstreamError(f"{self.provider} reported mid-stream: {error_text(data)}")


# Anthropic's event types, each with the method that translates it.
_HANDLERS = {
    "message_start": StreamTranslator._on_message_start,
    "content_block_start": StreamTranslator._on_content_block_start,
    "content_block_delta": StreamTranslator._on_content_block_delta,
    "content_block_stop": StreamTranslator._on_content_block_stop,
    "message_delta": StreamTranslator._on_message_delta,
    "message_stop": StreamTranslator._on_message_stop,
    "error": StreamTranslator._on_error,
}


class StreamEvents:
    """Turns OpenAI chat.completion.chunks into Anthropic's stream events (dicts)."""

    def __init__(self, msg_id: str, model: str, input_estimate: int, stops: list[str]) -> None:
        self.msg_id, self.model, self.stops = msg_id, model, stops
        self.input_estimate = input_estimate
        self.index = -1  # the Anthropic content block now open, if self.open
        self.open: str | None = None  # "text", or "tool:<OpenAI tool_call index>"
        self.stop: tuple[str, str | None] = ("end_turn", None)
        self.usage: dict[str, Any] | None = None

    def start(self) -> list[dict[str, Any]]:
        """message_start (and a first ping), before any chunk."""
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
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _close(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        self.open = None
        return [{"type": "content_block_stop", "index": self.index}]

    def _begin(self, key: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._close()
        self.index += 1
        self.open = key
        out.append({"type": "content_block_start", "index": self.index, "content_block": block})
        return out

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self.index, "delta": delta}

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events one chunk yields."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out: list[dict[str, Any]] = []
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
                    block = {"type": "tool_use", "id": call.get("id") or tool_id(),
                             "name": fn.get("name") or "", "input": {}}  # fmt: skip
                    out += self._begin(key, block)
                if fn.get("arguments"):
                    out.append(self._delta({"type": "input_json_delta",
                                            "partial_json": fn["arguments"]}))  # fmt: skip
            if choice.get("finish_reason"):
                self.stop = stop_of(choice, self.stops)
        return out

    def finish(self, usage: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The closing events; ``usage`` (the call's final count) wins over the chunks' own."""
        if usage is not None:
            self.usage = usage
        reason, sequence = self.stop
        return [
            *self._close(),
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": anthropic_usage(self.usage),
            },
            {"type": "message_stop"},
        ]
