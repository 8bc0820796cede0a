"""A slow reader must slow the upstream down, never make the gateway hold a whole answer in memory."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import GatewayProcess

MB = 1024 * 1024


class SSEUpstream:
    """A real OpenAI-style streaming chat upstream on 127.0.0.1 that counts what it manages to send.

    ``framing`` is how the body ends: ``"chunked"`` (Transfer-Encoding: chunked, as OpenAI does) or
    ``"close"`` (no length, the connection closes at the end, as many small servers do).
    """

    def __init__(self, *, total_bytes: int = 50 * MB, delta_chars: int = 32 * 1024,
                 framing: str = "chunked", delay_s: float = 0.0) -> None:  # fmt: skip
        self.total_bytes = total_bytes
        self.delta_chars = delta_chars
        self.framing = framing
        self.delay_s = delay_s
        self.bytes_sent = 0
        self.longest_write_s = 0.0  # how long one finished write waited for the peer to read
        self.write_started: float | None = None  # when the write in progress began
        self.finished = threading.Event()  # the whole answer went out
        self.streams: list[dict[str, Any]] = []  # per request: its body and whether it all went out
        owner = self

        class Handler(_SSEHandler):
            upstream = owner

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SSEUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def blocked_s(self) -> float:
        """The longest time one write has waited so far, counting the one still waiting."""
        started = self.write_started
        current = time.monotonic() - started if started is not None else 0.0
        return max(self.longest_write_s, current)

    def provider_toml(self, name: str = "sse", models: str = '["gpt-*"]') -> str:
        return f"""
[[providers]]
name = "{name}"
type = "openai"
base_url = "{self.url}"
api_key = "sk-upstream-test"
models = {models}
timeout_s = 20
connect_timeout_s = 2
"""


class _SSEHandler(BaseHTTPRequestHandler):
    upstream: SSEUpstream
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each small write waits out a delayed ACK

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        up = self.upstream
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        stream = {"body": body, "finished": False}
        up.streams.append(stream)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if up.framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for i, event in enumerate(self._events(body)):
                if i and up.delay_s:
                    time.sleep(up.delay_s)
                self._write(event)
            if up.framing == "chunked":
                self.wfile.write(b"0\r\n\r\n")
            stream["finished"] = True
            up.finished.set()
        except OSError:
            pass  # the gateway hung up: that is how a cancelled stream ends

    def _write(self, event: bytes) -> None:
        up = self.upstream
        data = event if up.framing != "chunked" else b"%x\r\n%s\r\n" % (len(event), event)
        up.write_started = started = time.monotonic()
        self.wfile.write(data)  # unbuffered: returns once the kernel took every byte
        up.write_started = None
        up.longest_write_s = max(up.longest_write_s, time.monotonic() - started)
        up.bytes_sent += len(data)

    def _events(self, body: dict[str, Any]):
        up = self.upstream
        model = body.get("model")

        def sse(choices: list, **extra: Any) -> bytes:
            doc = {"id": "chatcmpl-sse", "object": "chat.completion.chunk", "created": 1,
                   "model": model, "choices": choices, **extra}  # fmt: skip
            return b"data: " + json.dumps(doc).encode() + b"\n\n"

        yield sse([{"index": 0, "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None}])  # fmt: skip
        piece = ("abcdefgh" * (up.delta_chars // 8 + 1))[: up.delta_chars]
        sent = chunks = 0
        while sent < up.total_bytes:
            event = sse([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
            sent += len(event)
            chunks += 1
            yield event
        yield sse([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 5, "completion_tokens": chunks,
                     "total_tokens": 5 + chunks}  # fmt: skip
            yield sse([], usage=usage)
        yield b"data: [DONE]\n\n"


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def open_stream(
    gw: GatewayProcess, model: str = "gpt-4o-mini", rcvbuf: int = 16384
) -> socket.socket:
    """Send a streaming chat request on a plain socket with a small receive buffer."""
    port = int(gw.url.rsplit(":", 1)[-1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before connecting, so the TCP window the gateway sees stays small.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": "write a lot"}]}).encode()  # fmt: skip
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    return sock


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_a_slow_reader_slows_the_upstream_and_memory_stays_flat(tmp_path, framing):
    with SSEUpstream(framing=framing) as up, \
            GatewayProcess(up.provider_toml(), tmp_path) as gw:  # fmt: skip
        pid = gw.proc.pid
        start_rss = rss_bytes(pid)
        sock = open_stream(gw)
        received = 0
        head = b""
        stop = threading.Event()

        def read_slowly() -> None:
            # ~80 KB/s: a phone on a bad link, against an upstream that could send GB/s.
            nonlocal received, head
            while not stop.is_set():
                try:
                    got = sock.recv(4096)
                except OSError:
                    return
                if not got:
                    return
                if len(head) < 200:
                    head += got[:200]
                received += len(got)
                time.sleep(0.05)

        reader = threading.Thread(target=read_slowly, daemon=True)
        reader.start()
        samples: list[int] = []
        health_s: list[float] = []
        t0 = time.monotonic()
        baseline = None
        blocked_s = 0.0
        try:
            while time.monotonic() - t0 < 10:
                time.sleep(0.25)
                samples.append(rss_bytes(pid))
                if baseline is None and time.monotonic() - t0 > 1.5:
                    # After the first second and a half every buffer on the way is full.
                    baseline = samples[-1]
                if len(samples) % 4 == 0:
                    h0 = time.monotonic()
                    assert requests.get(gw.url + "/health", timeout=5).status_code == 200
                    health_s.append(time.monotonic() - h0)
            blocked_s = up.blocked_s()  # before closing: that unblocks the upstream
        finally:
            stop.set()
            sock.close()
            reader.join(5)
        assert head.startswith(b"HTTP/1.1 200"), head
        after_warmup = samples[samples.index(baseline) :] if baseline else samples
        growth = max(after_warmup) - (baseline or start_rss)
        print(f"\n[{framing}] upstream sent {up.bytes_sent / MB:.1f} MB (a write blocked for "
              f"{blocked_s:.1f} s), client read {received / MB:.2f} MB; gateway RSS "
              f"{start_rss / MB:.0f} MB at start, {(baseline or 0) / MB:.0f} MB after warm-up, "
              f"max {max(samples) / MB:.0f} MB; /health max {max(health_s) * 1000:.0f} ms")  # fmt: skip
        assert received > 100_000  # the client did get a stream
        # The upstream could not write faster than the client read: its writes blocked and most
        # of the 50 MB was never sent.
        assert not up.finished.is_set()
        assert up.bytes_sent < 25 * MB
        assert blocked_s > 1.0
        # Nothing piles up in the gateway.
        assert max(samples) - start_rss < 60 * MB
        assert growth < 30 * MB
        # And the hub is free: /health answers at once while the stream is stuck.
        assert health_s and max(health_s) < 1.0


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_each_event_is_relayed_as_it_arrives(tmp_path, framing):
    """The first words reach the client while the upstream is still writing the rest."""
    # 40 small events, 50 ms apart: a two-second answer.
    with SSEUpstream(framing=framing, total_bytes=40 * 300, delta_chars=100, delay_s=0.05) as up, \
            GatewayProcess(up.provider_toml(), tmp_path) as gw:  # fmt: skip
        body = {"model": "gpt-4o-mini", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        t0 = time.monotonic()
        with requests.post(gw.url + "/v1/chat/completions", json=body, stream=True,
                           timeout=10) as r:  # fmt: skip
            assert r.status_code == 200
            lines = r.iter_lines()
            for line in lines:
                if b'"content": "abcd' in line or b'"content":"abcd' in line:
                    break
            first_s = time.monotonic() - t0
            upstream_done_at_first = up.finished.is_set()
            rest = [line for line in lines if line]
        assert rest[-1] == b"data: [DONE]"
        assert not upstream_done_at_first, (
            f"first words only after the whole answer ({first_s:.2f} s)"
        )
        assert first_s < 1.0
