"""A real HTTP server on 127.0.0.1 that speaks OpenAI's chat API (JSON and SSE).

Tests script its next answers to reproduce what real upstreams do on bad days:

    fake.script("status", 429, headers={"Retry-After": "1"})
    fake.script("hang", 5)              # accept, then say nothing for 5 s
    fake.script("cut", 3)               # stream 3 chunks, then drop the connection
    fake.script("malformed", 2)         # chunk 2 is not JSON
    fake.script("html")                 # a stream request answered with an HTML error page
    fake.script("echo_key", 401)        # a 401 whose body repeats the key it was sent
    fake.script("tool_call")            # answer with a tool call
    fake.script("slow", 1.0)            # wait 1 s, then answer normally
    fake.script("wrong_shape", 2)       # JSON in shapes the API never sends (at chunk 2)

    fake.script("wrong_shape")          # (on /embeddings) a 'data' list without vectors
    fake.script("bad_vectors")          # (on /embeddings) vectors that are not numbers

/embeddings answers one deterministic vector per input (``fake_vector``), priced at one token
per UTF-8 byte (or per token of a token array).

Without a script it answers "Echo: <last user message>" (word by word when streaming).

``FakeOpenAI(billing=True)`` is instead the harshest legal upstream, for budget tests: its
tokenizer makes one token of every UTF-8 byte it tokenizes (roles, names, text parts, tool calls
and their arguments, tool schemas and ``response_format`` as JSON) plus OpenAI's documented
overhead (3 per request, 4 per message), and it writes every token it is allowed: ``max_tokens``
(or ``max_completion_tokens``) bytes of text, or ``UNCAPPED_TOKENS`` when no limit was sent. Each
call is billed when it arrives (``billed``), as a real upstream bills work it has started;
``overbill_tokens`` adds prompt tokens no tokenizer could count, for the overrun path.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What a billing fake writes when the gateway sent no limit: enough to sink any small budget.
UNCAPPED_TOKENS = 20_000


# Valid JSON, invalid chunks: what a broken OpenAI-compatible server on the LAN may send.
WRONG_SHAPES = [
    {"choices": ["x"]},
    {"choices": "abc"},
    {"choices": [{"delta": "text"}]},
    {"choices": [{"delta": {"content": 42}}]},
    {"choices": [{"delta": {"tool_calls": [1]}}]},
    {"choices": [{"delta": {"tool_calls": [{"function": "f"}]}}]},
    {"choices": [{"delta": {}, "finish_reason": ["stop"]}]},
    {"choices": [], "usage": "lots"},
]


class FakeOpenAI:
    def __init__(
        self,
        api_key: str | None = "sk-fake-test-key-123456",
        *,
        words_delay_s: float = 0.0,
        billing: bool = False,
    ):
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.words_delay_s = words_delay_s
        self.model_list = ["gpt-4o-mini"]  # what GET /models answers
        self.billing = billing
        self.serves_legacy = True  # False: /completions answers 404, as chat-only servers do
        self.overbill_tokens = 0
        self.billed: list[dict[str, int]] = []  # {"prompt_tokens", "completion_tokens"} per call
        self._script: deque = deque()
        self._lock = threading.Lock()
        fake = self

        class Handler(_Handler):
            owner = fake

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, kind: str, *args: Any, **kw: Any) -> None:
        with self._lock:
            self._script.append((kind, args, kw))

    def next_behaviour(self) -> tuple[str, tuple, dict]:
        with self._lock:
            return self._script.popleft() if self._script else ("ok", (), {})

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a gateway killed mid-call (kill -9 tests): nothing the fake did wrong
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: FakeOpenAI
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self.owner.requests.append({"path": self.path, "headers": dict(self.headers), "json": None})
        if self.path.endswith("/models") and self.owner.model_list is None:
            self._send_json(500, {"error": {"message": "listing is down", "type": "server_error"}})
        elif self.path.endswith("/models"):
            data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.owner.model_list]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_json(
                404, {"error": {"message": "not found", "type": "invalid_request_error"}}
            )

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        owner = self.owner
        owner.requests.append({"path": self.path, "headers": dict(self.headers), "json": body})
        kind, args, kw = owner.next_behaviour()
        if owner.api_key and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            self._send_json(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            )
            return
        if kind == "status":
            status = args[0]
            message = kw.get("message", f"fake upstream error {status}")
            self._send_json(
                status,
                {
                    "error": {
                        "message": message,
                        "type": "server_error" if status >= 500 else "invalid_request_error",
                        "code": kw.get("code"),
                    }
                },
                kw.get("headers"),
            )
            return
        if kind == "echo_key":
            self._send_json(
                args[0],
                {
                    "error": {
                        "message": f"Incorrect API key provided: "
                        f"{self.headers.get('Authorization')} (api_key={owner.api_key})",
                        "type": "invalid_request_error",
                    }
                },
            )
            return
        if kind == "hang":
            time.sleep(args[0])
            try:
                self._send_json(200, _completion(body, "late"))
            except OSError:
                pass
            return
        if kind == "slow":
            time.sleep(args[0])  # then answer normally
        if self.path.endswith("/audio/transcriptions") or self.path.endswith("/audio/translations"):
            # A multipart upload: the fake checks it carries a file and answers OpenAI's JSON.
            ok = b'name="file"' in raw and b'name="model"' in raw
            self._send_json(
                200 if ok else 400,
                {"text": "cloud transcript"}
                if ok
                else {"error": {"message": "file missing", "type": "invalid_request_error"}},
            )
            return
        if self.path.endswith("/audio/speech"):
            audio = b"ID3" + bytes(2000)
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.send_header("Content-Length", str(len(audio)))
            self.end_headers()
            self.wfile.write(audio)
            return
        if not isinstance(body, dict):
            self._send_json(
                400, {"error": {"message": "bad json", "type": "invalid_request_error"}}
            )
            return
        if self.path.endswith("/embeddings"):
            self._send_json(200, _embeddings(body, kind))
            return
        if owner.billing and self.path.endswith("/chat/completions"):
            self._billed(body)
            return
        if self.path.endswith("/completions") and not self.path.endswith("/chat/completions"):
            self._legacy(body)
            return
        if self.path.endswith("/responses"):
            self._responses(body, kind == "tool_call")
            return
        text = _reply_text(body)
        tool = kind == "tool_call"
        if body.get("stream"):
            if kind == "html":
                page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            self._stream(body, text, kind, args, tool)
        elif kind == "wrong_shape":
            self._send_json(200, {"id": "x", "object": "chat.completion", "choices": ["Echo"]})
        else:
            self._send_json(200, _completion(body, text, tool=tool))

    def _responses(self, body: dict, tool: bool) -> None:
        """OpenAI's Responses API: "Echo: <last user text>", or a get_weather call; JSON or SSE."""
        last = ""
        items = body.get("input")
        for item in [{"role": "user", "content": items}] if isinstance(items, str) else items or ():
            if isinstance(item, dict) and item.get("role") == "user":
                c = item.get("content")
                last = c if isinstance(c, str) else " ".join(
                    p.get("text", "") for p in c or () if isinstance(p, dict))  # fmt: skip
        words = f"Echo: {last}".split(" ")
        limit = body.get("max_output_tokens")
        status = "incomplete" if limit is not None and len(words) > limit else "completed"
        words = words[:limit] if limit is not None else words
        text = " ".join(words)
        if tool:
            item = {"id": "fc_1", "type": "function_call", "status": "completed",
                    "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}  # fmt: skip
        else:
            item = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip
        n_in = len(json.dumps(items)) // 4
        doc = {"id": "resp_upstream", "object": "response", "created_at": int(time.time()),
               "status": status, "model": body.get("model"), "output": [item],
               "incomplete_details": {"reason": "max_output_tokens"} if status != "completed"
               else None,
               "usage": {"input_tokens": n_in, "output_tokens": len(words),
                         "total_tokens": n_in + len(words),
                         "input_tokens_details": {"cached_tokens": 0},
                         "output_tokens_details": {"reasoning_tokens": 0}}}  # fmt: skip
        if not body.get("stream"):
            self._send_json(200, doc)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        seq = iter(range(10**6))

        def send(kind: str, **fields: Any) -> None:
            event = {"type": kind, **fields, "sequence_number": next(seq)}
            self.wfile.write(f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode())

        shell = {**doc, "status": "in_progress", "output": [], "usage": None}
        send("response.created", response=shell)
        send("response.in_progress", response=shell)
        if tool:
            send("response.output_item.added", output_index=0, item={**item, "arguments": ""})
            for frag in ('{"city":', ' "Paris"}'):
                send("response.function_call_arguments.delta", item_id="fc_1", output_index=0,
                     delta=frag)  # fmt: skip
            send("response.function_call_arguments.done", item_id="fc_1", output_index=0,
                 arguments=item["arguments"])  # fmt: skip
        else:
            send("response.output_item.added", output_index=0, item={**item, "content": []})
            for i, w in enumerate(words):
                send("response.output_text.delta", item_id="msg_1", output_index=0,
                     content_index=0, delta=w if i == 0 else " " + w)  # fmt: skip
        send("response.output_item.done", output_index=0, item=item)
        send(f"response.{status}", response=doc)
        self.wfile.flush()

    def _legacy(self, body: dict) -> None:
        """Legacy /completions: "Echo: <prompt>" (or "<fill>" between prompt and suffix)."""
        if not self.owner.serves_legacy:
            self._send_json(404, {"error": {"message": "Unknown path /v1/completions",
                                            "type": "invalid_request_error"}})  # fmt: skip
            return
        prompt = body.get("prompt")
        text = " <fill>" if body.get("suffix") else f" Echo: {prompt}"
        words = text.split(" ")[1:]
        limit = body.get("max_tokens", 16)
        finish = "length" if len(words) > limit else "stop"
        pieces = [" " + w for w in words[:limit]]
        usage = {"prompt_tokens": len(str(prompt).split()), "completion_tokens": len(pieces),
                 "total_tokens": len(str(prompt).split()) + len(pieces)}  # fmt: skip

        def logprobs(ps: list[str]) -> dict | None:
            if body.get("logprobs") is None:
                return None
            return {"tokens": ps, "token_logprobs": [-0.5] * len(ps),
                    "top_logprobs": [{p: -0.5} for p in ps], "text_offset": [0] * len(ps)}  # fmt: skip

        base = {"id": "cmpl-upstream", "object": "text_completion", "created": int(time.time()),
                "model": body.get("model")}  # fmt: skip
        if not body.get("stream"):
            choice = {"text": "".join(pieces), "index": 0, "logprobs": logprobs(pieces),
                      "finish_reason": finish}  # fmt: skip
            self._send_json(200, {**base, "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            choice = {"text": piece, "index": 0, "logprobs": logprobs([piece]),
                      "finish_reason": finish if last else None}  # fmt: skip
            self.wfile.write(f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            self.wfile.write(
                f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
            )
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _stream(self, body: dict, text: str, kind: str, args: tuple, tool: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        cid = "chatcmpl-upstream"
        model = body.get("model")
        words = text.split(" ")
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if max_tokens is not None and len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
        chunks: list[Any] = [
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            }
        ]
        if tool:
            chunks.append(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [
                                    {
                                        "index": 0,
                                        "id": "call_1",
                                        "type": "function",
                                        "function": {"name": "get_weather", "arguments": ""},
                                    }
                                ]
                            },
                            "finish_reason": None,
                        }
                    ],
                }
            )
            for frag in ('{"city":', ' "Paris"}'):
                chunks.append(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {
                                    "tool_calls": [{"index": 0, "function": {"arguments": frag}}]
                                },
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            finish = "tool_calls"
        else:
            for i, w in enumerate(words):
                piece = w if i == 0 else " " + w
                chunks.append(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "model": model,
                        "choices": [
                            {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                        ],
                    }
                )
        chunks.append(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
            }
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [],
                    "usage": _usage(body, len(words)),
                }
            )
        if kind == "malformed":
            chunks.insert(args[0], "{this is not json")
        if kind == "wrong_shape":
            chunks[args[0] : args[0]] = WRONG_SHAPES
        try:
            for i, chunk in enumerate(chunks):
                if kind == "cut" and i == args[0]:
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                data = chunk if isinstance(chunk, str) else json.dumps(chunk)
                self.wfile.write(f"data: {data}\n\n".encode())
                self.wfile.flush()
                if self.owner.words_delay_s:
                    time.sleep(self.owner.words_delay_s)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True

    def _billed(self, body: dict) -> None:
        """The harshest legal upstream: bill every byte, write every token allowed."""
        owner = self.owner
        prompt = harsh_prompt_tokens(body) + owner.overbill_tokens
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        n = int(limit) if limit is not None else UNCAPPED_TOKENS
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        with owner._lock:
            owner.billed.append(usage)
        text = ("ok " * (n // 3 + 1))[:n]  # n ASCII bytes: n tokens even to this tokenizer
        model = body.get("model")
        if not body.get("stream"):
            doc = _completion({}, "")
            doc["model"] = model
            doc["choices"][0]["message"]["content"] = text
            doc["choices"][0]["finish_reason"] = "length"
            doc["usage"] = usage
            self._send_json(200, doc)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        pieces = [text[i : i + 400] for i in range(0, len(text), 400)]
        chunks = [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
                  for p in pieces]  # fmt: skip
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({"choices": [], "usage": usage})
        try:
            for chunk in chunks:
                chunk.update(id="chatcmpl-billed", object="chat.completion.chunk", model=model)
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                if owner.words_delay_s:
                    time.sleep(owner.words_delay_s)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True


def _bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    return len(json.dumps(value, ensure_ascii=False).encode()) if value is not None else 0


def harsh_prompt_tokens(body: dict) -> int:
    """One token per UTF-8 byte of everything tokenized, plus 3 per request and 4 per message."""
    total = 3
    for m in body.get("messages") or ():
        total += 4 + _bytes(m.get("role")) + _bytes(m.get("name"))
        total += _bytes(m.get("tool_call_id"))
        content = m.get("content")
        if isinstance(content, list):
            total += sum(_bytes(p.get("text")) for p in content if isinstance(p, dict))
        else:
            total += _bytes(content)
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            total += _bytes(fn.get("name")) + _bytes(fn.get("arguments"))
    for tool in body.get("tools") or ():
        total += _bytes(tool)
    if body.get("response_format"):
        total += _bytes(body["response_format"])
    return total


def _reply_text(body: dict) -> str:
    last = ""
    for m in body.get("messages") or ():
        if m.get("role") == "user":
            c = m.get("content")
            last = (
                c
                if isinstance(c, str)
                else " ".join(p.get("text", "") for p in c or () if isinstance(p, dict))
            )
    return f"Echo: {last}".strip()


def _usage(body: dict, completion_tokens: int) -> dict[str, int]:
    prompt = sum(len(json.dumps(m)) // 4 for m in body.get("messages") or ())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def _completion(body: Any, text: str, *, tool: bool = False) -> dict:
    body = body if isinstance(body, dict) else {}
    words = text.split(" ")
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    finish = "stop"
    if max_tokens is not None and len(words) > max_tokens:
        words, finish = words[:max_tokens], "length"
    message: dict[str, Any] = {"role": "assistant", "content": " ".join(words)}
    if tool:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        }
        finish = "tool_calls"
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(body, len(words)),
    }


def fake_vector(item: Any, dims: int = 8) -> list[float]:
    """The vector the fake gives an input: from its sha256, so equal inputs get equal vectors."""
    import hashlib

    seed = hashlib.sha256(json.dumps(item).encode()).digest()
    return [round((seed[i % 32] - 127.5) / 127.5, 6) for i in range(dims)]


def _embeddings(body: dict, kind: str) -> dict[str, Any]:
    items = body.get("input")
    items = [items] if isinstance(items, str) or (
        isinstance(items, list) and items and isinstance(items[0], int)) else items  # fmt: skip
    dims = int(body.get("dimensions") or 8)
    tokens = sum(len(i.encode()) if isinstance(i, str) else len(i) for i in items)
    data: list[dict[str, Any]] = [
        {"object": "embedding", "index": n, "embedding": fake_vector(i, dims)}
        for n, i in enumerate(items)
    ]
    if kind == "wrong_shape":
        data = [{"object": "embedding", "index": 0}]
    elif kind == "bad_vectors":  # valid JSON, no usable numbers: one of these per call
        bad = [["x", 1.0], [{"a": 1}], "not base64!", [1e999], [[1.0, 2.0]]]
        data = [
            {
                "object": "embedding",
                "index": 0,
                "embedding": bad[int(body.get("dimensions") or 0) % 5],
            }
        ]
    return {"object": "list", "data": data, "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
