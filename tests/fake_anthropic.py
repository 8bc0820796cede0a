"""A fake Anthropic Messages API: a real HTTP server on 127.0.0.1 speaking the real wire format.

    with FakeAnthropic() as fake:                      # fake.url ends in /v1
        fake.script(error(429, "rate_limit_error", "slow down", retry_after="0"), reply("Hi"))
        ...                                            # fake.requests records what arrived

Each request takes the next scripted ``Reply`` (or ``fake.default`` when the script is empty). A
reply holds an Anthropic message and is sent as JSON or as SSE to match the request's ``stream``
flag. Hostile cases are fields of the reply: ``delay_s`` (hang before answering), ``events`` /
``with_event`` (extra, malformed or error events), ``stop_after`` with ``then`` ("close": cut the
socket mid-stream, "end": end the body cleanly without message_stop, "stall": go silent).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from typing import Any

API_KEY = "sk-ant-fake-0123456789abcdef"
# The versions this fake knows: the two classic ones and the one the installed SDK sends.
VERSIONS = ("2023-06-01", "2023-01-01", "2026-10-21")
_ids = count(1)


def message(
    text: str | None = "Hello from the fake.",
    *,
    tool_uses: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
    stop_reason: str | None = None,
    usage: dict[str, int] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """An Anthropic message object: optional text, then tool_use blocks (name, input)."""
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    for name, args in tool_uses:
        content.append({"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name,
                        "input": args})  # fmt: skip
    return {
        "id": f"msg_{next(_ids):04d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason or ("tool_use" if tool_uses else "end_turn"),
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 12, "output_tokens": 7},
    }


def message_events(msg: dict[str, Any], piece: int = 4) -> list[tuple[str, str]]:
    """The SSE events Anthropic streams for ``msg``: text and tool JSON in small fragments."""

    def ev(data: dict[str, Any]) -> tuple[str, str]:
        return data["type"], json.dumps(data)

    usage = msg["usage"]
    start_usage = {k: v for k, v in usage.items() if k != "output_tokens"}
    head = {**msg, "content": [], "stop_reason": None, "usage": {**start_usage, "output_tokens": 1}}
    out = [ev({"type": "message_start", "message": head}), ev({"type": "ping"})]
    for i, block in enumerate(msg["content"]):
        if block["type"] == "text":
            out.append(ev({"type": "content_block_start", "index": i,
                           "content_block": {"type": "text", "text": ""}}))  # fmt: skip
            text = block["text"]
            for k in range(0, len(text), piece):
                out.append(ev({"type": "content_block_delta", "index": i,
                               "delta": {"type": "text_delta", "text": text[k:k + piece]}}))  # fmt: skip
        else:
            out.append(ev({"type": "content_block_start", "index": i,
                           "content_block": {**block, "input": {}}}))  # fmt: skip
            args = json.dumps(block["input"])
            out.append(ev({"type": "content_block_delta", "index": i,
                           "delta": {"type": "input_json_delta", "partial_json": ""}}))  # fmt: skip
            for k in range(0, len(args), piece):
                out.append(ev({"type": "content_block_delta", "index": i,
                               "delta": {"type": "input_json_delta",
                                         "partial_json": args[k:k + piece]}}))  # fmt: skip
        out.append(ev({"type": "content_block_stop", "index": i}))
    out.append(ev({"type": "message_delta",
                   "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                   "usage": {"output_tokens": usage["output_tokens"]}}))  # fmt: skip
    out.append(ev({"type": "message_stop"}))
    return out


@dataclass
class Reply:
    """One scripted answer."""

    message: dict[str, Any] | None = field(default_factory=message)
    status: int = 200
    error_type: str = "api_error"
    error_message: str = "Internal server error"  # "{api_key}" is replaced by the key received
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    events: list[tuple[str, str]] | None = None  # explicit SSE events instead of the message's
    stop_after: int | None = None  # send only this many events, then do ``then``
    then: str = "close"  # "close" the socket, "end" the body cleanly, or "stall" until shutdown

    def stream_events(self, model: str) -> list[tuple[str, str]]:
        if self.events is not None:
            return list(self.events)
        return message_events({**self.message, "model": self.message.get("model") or model})

    def with_event(self, at: int, name: str, data: str | dict[str, Any]) -> Reply:
        """A copy whose stream has one more event (raw text or JSON) inserted at ``at``."""
        events = self.stream_events("claude-fake")
        raw = data if isinstance(data, str) else json.dumps(data)
        events.insert(at, (name, raw))
        return dataclasses.replace(self, events=events)


def reply(text: str | None = "Hello from the fake.", **kw: Any) -> Reply:
    """A successful answer; keywords go to ``message()``."""
    return Reply(message=message(text, **kw))


def error(status: int, etype: str, msg: str, *, retry_after: str | None = None) -> Reply:
    """An Anthropic error answer, e.g. 429 rate_limit_error, 529 overloaded_error."""
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return Reply(message=None, status=status, error_type=etype, error_message=msg,
                 headers=headers)  # fmt: skip


@dataclass
class Recorded:
    """A request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_{next(_ids):04d}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, etype: str, msg: str, headers: dict | None = None) -> None:
        self._json(status, {"type": "error", "error": {"type": etype, "message": msg}}, headers)

    def do_GET(self) -> None:
        fake = self.server.fake  # type: ignore[attr-defined]
        fake._record(
            Recorded("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, None)
        )
        if self.path.split("?")[0] != "/v1/models":
            return self._error(404, "not_found_error", f"Not found: {self.path}")
        if (self.headers.get("x-api-key") or "") != fake.api_key:
            return self._error(401, "authentication_error", "invalid x-api-key")
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in fake.model_list]  # fmt: skip
        self._json(200, {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None})  # fmt: skip

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        fake = self.server.fake
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake._record(Recorded("POST", self.path, headers, body))
        if self.path.split("?")[0] != "/v1/messages":
            return self._error(404, "not_found_error", f"Not found: {self.path}")
        # Newer official SDKs send the key as a Bearer token rather than x-api-key.
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        key = headers.get("x-api-key") or bearer
        if key != fake.api_key:
            return self._error(401, "authentication_error", "invalid x-api-key")
        if headers.get("anthropic-version") not in fake.versions:
            return self._error(400, "invalid_request_error", "anthropic-version: header is "
                               f"required and must be one of {', '.join(fake.versions)}")  # fmt: skip
        problem = validate(body)
        if problem:
            return self._error(400, "invalid_request_error", problem)
        r = fake._next()
        if r.delay_s and fake._stopping.wait(r.delay_s):
            return
        if r.status >= 400 or r.message is None and r.events is None:
            msg = r.error_message.replace("{api_key}", key)
            return self._error(r.status, r.error_type, msg, r.headers)
        if not body.get("stream"):
            return self._json(r.status, {**r.message, "model": r.message.get("model")
                                         or body["model"]}, r.headers)  # fmt: skip
        self._stream(r, body["model"])

    def _stream(self, r: Reply, model: str) -> None:
        events = r.stream_events(model)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for k, v in r.headers.items():
            self.send_header(k, v)
        self.end_headers()
        n = len(events) if r.stop_after is None else r.stop_after
        for name, data in events[:n]:
            payload = f"event: {name}\ndata: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            self.wfile.flush()
        if r.stop_after is not None and r.then == "close":
            # No terminating chunk: the client sees the connection die mid-body.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if r.stop_after is not None and r.then == "stall":
            self.close_connection = True
            self.server.fake._stopping.wait(60)
            return
        self.wfile.write(b"0\r\n\r\n")


def validate(body: Any) -> str | None:
    """What the real API would refuse with a 400 (the checks that catch translation bugs)."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "messages: at least one message is required"
    tool_ids: set[str] = set()
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            return f"messages.{i}.content: Input should be a valid list"
        ids_here = set()
        for block in blocks:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and not block.get("text"):
                return f"messages.{i}: text content blocks must be non-empty"
            if kind == "tool_use":
                ids_here.add(block.get("id"))
            if kind == "tool_result" and block.get("tool_use_id") not in tool_ids:
                return (f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}")  # fmt: skip
        tool_ids = ids_here
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeAnthropic

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that gave up (timeouts, cut streams) are expected here, not failures


class FakeAnthropic:
    """The fake API on a free loopback port, for use as a context manager or pytest fixture."""

    def __init__(self, api_key: str = API_KEY, versions: tuple[str, ...] = VERSIONS) -> None:
        self.api_key = api_key
        self.versions = versions
        self.requests: list[Recorded] = []
        self.default = Reply()
        self.model_list = ["claude-3-5-haiku-latest", "claude-sonnet-4-5"]  # GET /v1/models
        self._queue: list[Reply] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def root(self) -> str:
        """Base URL without /v1, as the official anthropic SDK wants it."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.root}/v1"

    def script(self, *replies: Reply) -> FakeAnthropic:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._queue.extend(replies)
        return self

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies received so far."""
        return [r.body for r in self.requests]

    def _next(self) -> Reply:
        with self._lock:
            return self._queue.pop(0) if self._queue else self.default

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def close(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeAnthropic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
