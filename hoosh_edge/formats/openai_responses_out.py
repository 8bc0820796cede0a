"""Chat answers -> OpenAI Responses objects, and chat chunks -> Responses stream events.

``Shell`` holds what a response echoes of its request (model, instructions, tools, sampling,
metadata); ``Shell.response(output, usage, finish)`` builds the response object, ``answer(doc)``
turns a whole chat completion into one, and ``StreamEvents`` turns chunks into the semantic events
OpenAI streams, in its order, each with a ``sequence_number``.
"""

from __future__ import annotations

import time
from typing import Any

from hoosh_edge.formats.openai_responses import new_id


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage as Responses usage (input/output tokens, cached tokens, ``cost_usd``)."""
    if not usage:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    out: dict[str, Any] = {
        "input_tokens": usage.get("prompt_tokens", 0),
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": usage.get("completion_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens", 0),
    }
    if "cost_usd" in usage:
        out["cost_usd"] = usage["cost_usd"]
    return out


def message_item(text: str, item_id: str | None = None, status: str = "completed") -> dict:
    return {"id": item_id or new_id("msg"), "type": "message", "status": status,
            "role": "assistant", "content": [text_part(text)] if status == "completed" else []}  # fmt: skip


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(call_id: str, name: str, arguments: str, item_id: str | None = None,
              status: str = "completed") -> dict[str, Any]:  # fmt: skip
    return {"id": item_id or new_id("fc"), "type": "function_call", "status": status,
            "call_id": call_id, "name": name, "arguments": arguments}  # fmt: skip


class Shell:
    """What every response object of one request says besides its output."""

    def __init__(self, body: dict[str, Any], response_id: str, model: str) -> None:
        self.id = response_id
        self.created_at = int(time.time())
        self.model = model
        self.body = body

    def response(self, output: list[dict[str, Any]], usage: dict[str, Any] | None,
                 status: str = "completed", *, finish: str | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """The response object; a ``length`` finish makes it ``incomplete``."""
        b = self.body
        incomplete = None
        if status == "completed" and finish == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        text = b.get("text") if isinstance(b.get("text"), dict) else {}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": b.get("instructions"),
            "max_output_tokens": b.get("max_output_tokens"),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": b.get("parallel_tool_calls", True),
            "previous_response_id": b.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": b.get("store") is not False,
            "temperature": b.get("temperature"),
            "text": {"format": text.get("format") or {"type": "text"}},
            "tool_choice": b.get("tool_choice") or "auto",
            "tools": b.get("tools") or [],
            "top_p": b.get("top_p"),
            "truncation": b.get("truncation") or "disabled",
            "usage": usage_of(usage),
            "user": b.get("user"),
            "metadata": b.get("metadata") or {},
        }

    def answer(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A whole chat completion as a response object."""
        choice = (doc.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        output: list[dict[str, Any]] = []
        if msg.get("content"):
            output.append(message_item(msg["content"]))
        for call in msg.get("tool_calls") or ():
            fn = call.get("function") or {}
            output.append(call_item(call.get("id") or new_id("call"), fn.get("name") or "",
                                    fn.get("arguments") or "{}"))  # fmt: skip
        if not output:
            output.append(message_item(""))
        self.model = doc.get("model") or self.model
        return self.response(output, doc.get("usage"), finish=choice.get("finish_reason"))


def assistant_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """A response's output as the chat assistant message a follow-up turn shows the model."""
    text = "".join(p.get("text", "") for item in output if item["type"] == "message"
                   for p in item.get("content") or ())  # fmt: skip
    calls = [{"id": i["call_id"], "type": "function",
              "function": {"name": i["name"], "arguments": i["arguments"]}}
             for i in output if i["type"] == "function_call"]  # fmt: skip
    msg: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        msg["tool_calls"] = calls
    elif not text:
        msg["content"] = ""
    return msg


class StreamEvents:
    """Chat chunks -> Responses stream events (dicts whose ``type`` is the SSE event name)."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.text: str | None = None  # the open message's text so far; None when none is open
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool_call index -> its output item
        self.open_call: int | None = None
        self.finish: str | None = None
        self.final: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        """response.created and response.in_progress, before any chunk."""
        shell = self.shell.response([], None, "in_progress")
        return [self._event("response.created", response=shell),
                self._event("response.in_progress", response=shell)]  # fmt: skip

    def _open_text(self) -> list[dict[str, Any]]:
        item = message_item("", status="in_progress")
        self.output.append(item)
        self.text = ""
        index = len(self.output) - 1
        return [self._event("response.output_item.added", output_index=index, item=dict(item)),
                self._event("response.content_part.added", item_id=item["id"], output_index=index,
                            content_index=0, part=text_part(""))]  # fmt: skip

    def _close_text(self) -> list[dict[str, Any]]:
        if self.text is None:
            return []
        item, index, text = self.output[-1], len(self.output) - 1, self.text
        self.text = None
        part = text_part(text)
        item.update(status="completed", content=[part])
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [self._event("response.output_text.done", **where, text=text, logprobs=[]),
                self._event("response.content_part.done", **where, part=part),
                self._event("response.output_item.done", output_index=index, item=item)]  # fmt: skip

    def _close_call(self) -> list[dict[str, Any]]:
        if self.open_call is None:
            return []
        item = self.calls[self.open_call]
        self.open_call = None
        item["arguments"] = item["arguments"] or "{}"
        item["status"] = "completed"
        index = self.output.index(item)
        return [self._event("response.function_call_arguments.done", item_id=item["id"],
                            output_index=index, name=item["name"], arguments=item["arguments"]),
                self._event("response.output_item.done", output_index=index, item=item)]  # fmt: skip

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events one chat chunk yields."""
        out: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.text is None:
                    out += self._close_call() + self._open_text()
                self.text = (self.text or "") + text
                out.append(self._event("response.output_text.delta",
                                       item_id=self.output[-1]["id"],
                                       output_index=len(self.output) - 1, content_index=0,
                                       delta=text, logprobs=[]))  # fmt: skip
            for call in delta.get("tool_calls") or ():
                n = call.get("index", 0)
                fn = call.get("function") or {}
                if n not in self.calls:
                    out += self._close_text() + self._close_call()
                    item = call_item(call.get("id") or new_id("call"), fn.get("name") or "", "",
                                     status="in_progress")  # fmt: skip
                    self.calls[n] = item
                    self.output.append(item)
                    self.open_call = n
                    out.append(self._event("response.output_item.added",
                                           output_index=len(self.output) - 1, item=dict(item)))  # fmt: skip
                item = self.calls[n]
                if fn.get("arguments"):
                    item["arguments"] += fn["arguments"]
                    out.append(self._event("response.function_call_arguments.delta",
                                           item_id=item["id"],
                                           output_index=self.output.index(item),
                                           delta=fn["arguments"]))  # fmt: skip
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def finish_events(self, usage: dict[str, Any] | None, model: str | None) -> list[dict]:
        """The closing events: open items done, then response.completed (or .incomplete)."""
        out = self._close_text() + self._close_call()
        if not self.output:  # an empty answer is still one message, as OpenAI sends it
            out += self._open_text() + self._close_text()
        self.shell.model = model or self.shell.model
        self.final = self.shell.response(self.output, usage, finish=self.finish)
        kind = (
            "response.completed" if self.final["status"] == "completed" else "response.incomplete"
        )
        return [*out, self._event(kind, response=self.final)]

    def failed(self, code: str | None, message: str) -> list[dict[str, Any]]:
        """response.failed, for an error after the stream began."""
        error = {"code": code or "server_error", "message": message}
        self.final = self.shell.response(self.output, None, "failed", error=error)
        return [self._event("response.failed", response=self.final)]
