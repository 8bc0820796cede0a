"""A Responses request sent on as it came, to a provider with OpenAI's Responses API.

The door puts the client's body under the neutral request's ``responses`` field; a provider with
``responses_api`` posts it (``upstream_body``: the target's model, the budget's token cap, the
conversation of ``previous_response_id`` as input items, since the upstream never saw the
gateway's ids) and turns the answer back into the chat form the pipeline books
(``chat_from_response``; ``ChunkMaker`` for the stream's events). The door then turns that into
Responses again, so clients see one shape whichever way the call went.
"""

from __future__ import annotations

from typing import Any

from hoosh_edge.errors import UpstreamError

PASS = "responses"  # the neutral request's field a Responses-speaking provider reads
# What the gateway keeps to itself: its own store and its own ids.
_OWN = ("previous_response_id", "store", "stream", "stream_options", "model", "input")


def _part(part: dict[str, Any], role: str) -> dict[str, Any]:
    if part.get("type") == "image_url":
        image = part.get("image_url") or {}
        out = {"type": "input_image", "image_url": image.get("url")}
        if image.get("detail"):
            out["detail"] = image["detail"]
        return out
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": kind, "text": part.get("text") or ""}


def chat_to_items(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages (a stored conversation) as Responses input items."""
    items: list[dict[str, Any]] = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role == "tool":
            items.append({"type": "function_call_output", "call_id": m.get("tool_call_id"),
                          "output": content if isinstance(content, str) else ""})  # fmt: skip
            continue
        if isinstance(content, list):
            items.append({"type": "message", "role": role,
                          "content": [_part(p, role) for p in content]})  # fmt: skip
        elif content:
            items.append({"type": "message", "role": role, "content": content})
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            items.append({"type": "function_call", "call_id": call.get("id"),
                          "name": fn.get("name"), "arguments": fn.get("arguments") or ""})  # fmt: skip
    return items


def passed(body: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """What the neutral request carries for a Responses provider: the body and the whole input."""
    own = body["input"]
    own = [{"type": "message", "role": "user", "content": own}] if isinstance(own, str) else own
    # Item ids are the gateway's (or another upstream's): this upstream stores nothing to match.
    own = [{k: v for k, v in item.items() if k != "id"} for item in own]
    return {
        "body": {k: v for k, v in body.items() if k not in _OWN},
        "input": [*chat_to_items(history), *own],
    }


def upstream_body(model: str, req: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The ``/responses`` body for the target: its model, the token cap the gateway chose."""
    given = req[PASS]
    body = {**given["body"], "model": model, "input": given["input"], "store": False,
            "stream": stream}  # fmt: skip
    cap = req.get("max_completion_tokens", req.get("max_tokens"))
    if cap is not None:
        body["max_output_tokens"] = cap
    return body


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None

    def count(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    p, c = count(usage.get("input_tokens")), count(usage.get("output_tokens"))
    details = usage.get("input_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": cached}}  # fmt: skip


def _finish(doc: dict[str, Any], calls: bool) -> str:
    if doc.get("status") == "incomplete":
        return "length"
    return "tool_calls" if calls else "stop"


def chat_from_response(doc: Any, provider: str) -> dict[str, Any]:
    """An upstream response object as a chat completion; UpstreamError for one that failed."""
    if not isinstance(doc, dict) or not isinstance(doc.get("output"), list):
        raise UpstreamError(f"{provider} answered /responses without 'output'")
    if doc.get("status") == "failed":
        err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
        raise UpstreamError(f"{provider} reported: {err.get('message') or 'the response failed'}")
    text, calls = [], []
    bad = UpstreamError(f"{provider} answered /responses with a malformed output item")
    for item in doc["output"]:
        if not isinstance(item, dict):
            raise bad
        if item.get("type") == "message":
            parts = item.get("content") or []
            if not isinstance(parts, list):
                raise bad
            for p in parts:
                if isinstance(p, dict) and p.get("type") == "output_text":
                    if not isinstance(p.get("text"), str):
                        raise bad
                    text.append(p["text"])
        elif item.get("type") == "function_call":
            if not isinstance(item.get("name"), str) or not isinstance(
                item.get("arguments", ""), str
            ):
                raise bad
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"),
                                       "arguments": item.get("arguments") or "{}"}})  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return {"id": doc.get("id"), "object": "chat.completion", "model": doc.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": _finish(doc, bool(calls))}],
            "usage": _usage(doc.get("usage"))}  # fmt: skip


class ChunkMaker:
    """Responses stream events -> chat chunks, one event at a time."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.calls: dict[str, int] = {}  # output item id -> chat tool_call index
        self.done = False

    @staticmethod
    def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def feed(self, data: Any) -> list[dict[str, Any]]:
        """The chunks one event makes; raises UpstreamError for a failure."""
        if not isinstance(data, dict):
            return []
        kind = data.get("type")
        if kind == "response.output_text.delta" and isinstance(data.get("delta"), str):
            return [self._chunk({"content": data["delta"]})]
        item = data.get("item") if isinstance(data.get("item"), dict) else {}
        if kind == "response.output_item.added" and item.get("type") == "function_call":
            key = item.get("id") if isinstance(item.get("id"), str) else f"#{len(self.calls)}"
            self.calls[key] = n = len(self.calls)
            call = {"index": n, "id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": ""}}  # fmt: skip
            return [self._chunk({"tool_calls": [call]})]
        item_id = data.get("item_id")
        if kind == "response.function_call_arguments.delta" and isinstance(item_id, str) \
                and item_id in self.calls:  # fmt: skip
            call = {"index": self.calls[data["item_id"]],
                    "function": {"arguments": str(data.get("delta") or "")}}  # fmt: skip
            return [self._chunk({"tool_calls": [call]})]
        if kind in ("response.completed", "response.incomplete"):
            self.done = True
            doc = data.get("response") if isinstance(data.get("response"), dict) else {}
            out = [self._chunk({}, _finish(doc, bool(self.calls)))]
            usage = _usage(doc.get("usage"))
            return [*out, {"choices": [], "usage": usage}] if usage else out
        if kind in ("response.failed", "error"):
            doc = data.get("response") if isinstance(data.get("response"), dict) else {}
            err = doc.get("error") if kind != "error" else data
            message = err.get("message") if isinstance(err, dict) else None
            raise UpstreamError(f"{self.provider} reported mid-stream: {message or kind}")
        return []
