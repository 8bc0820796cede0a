"""The lean upstream path: a JSON post sent like requests.Session would, IP literals resolved inline."""

from __future__ import annotations

import _socket
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hoosh_edge.backends.providers.http import HttpClient
from hoosh_edge.config import ProviderConfig
from hoosh_edge.serve.resolver import NumericFirstResolver, is_ip_literal


class _Upstream(BaseHTTPRequestHandler):
    """POST /old answers 307 to /new and sets a cookie; /new echoes what it got."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append({"path": self.path, "cookie": self.headers.get("Cookie"),
                          "auth": self.headers.get("Authorization"), "body": body})  # fmt: skip
        if self.path == "/old":
            self.send_response(307)
            self.send_header("Location", "/new")
            self.send_header("Set-Cookie", "route=b; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        out = json.dumps({"path": self.path, "body": json.loads(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream():
    _Upstream.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_json_post_follows_a_redirect_and_keeps_its_cookie_as_a_session_would(upstream):
    cfg = ProviderConfig(name="up", type="openai", base_url=upstream, headers=(("X-Org", "o1"),))
    http = HttpClient(cfg)
    headers = {"Authorization": "Bearer sk-up"}
    first = http.post(f"{upstream}/new", body={"n": 1}, headers=headers)
    assert first.json() == {"path": "/new", "body": {"n": 1}}
    again = http.post(f"{upstream}/new", body={"n": 2, "s": "é"}, headers=headers)
    assert again.json() == {"path": "/new", "body": {"n": 2, "s": "é"}}  # the body is per call
    moved = http.post(f"{upstream}/old", body={"n": 3}, headers=headers)
    assert moved.status_code == 200 and moved.json() == {"path": "/new", "body": {"n": 3}}
    assert [r.status_code for r in moved.history] == [307]
    after = http.post(f"{upstream}/new", body={"n": 4}, headers=headers)
    assert after.json()["body"] == {"n": 4}
    paths = [(s["path"], s["cookie"], s["auth"]) for s in _Upstream.seen]
    assert paths == [
        ("/new", None, "Bearer sk-up"),
        ("/new", None, "Bearer sk-up"),
        ("/old", None, "Bearer sk-up"),
        ("/new", "route=b", "Bearer sk-up"),  # the 307 kept the method, body and cookie
        ("/new", "route=b", "Bearer sk-up"),  # and the session remembers the cookie
    ]
    assert _Upstream.seen[3]["body"] == b'{"n":3}'


def test_a_streamed_json_post_is_read_as_it_arrives(upstream):
    http = HttpClient(ProviderConfig(name="up", type="openai", base_url=upstream))
    resp = http.post(f"{upstream}/new", body={"n": 5}, headers={}, stream=True)
    assert not resp.raw.isclosed()  # not read ahead: the caller reads it
    assert json.loads(resp.raw.read()) == {"path": "/new", "body": {"n": 5}}
    resp.close()


def test_the_direct_pool_keeps_requests_errors_a_refused_port_and_a_late_answer():
    import socket

    from hoosh_edge.errors import UpstreamError, UpstreamTimeout

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    http = HttpClient(ProviderConfig(name="up", type="openai", base_url=dead, max_retries=0))
    with pytest.raises(UpstreamError, match="cannot connect") as refused:
        http.post(f"{dead}/new", body={"n": 1}, headers={})
    assert not isinstance(refused.value, UpstreamTimeout)

    silent = socket.socket()  # accepts (the kernel does) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cfg = ProviderConfig(name="up", type="openai", base_url=url, timeout_s=0.3)
        with pytest.raises(UpstreamTimeout, match="no answer within 0.3s") as late:
            HttpClient(cfg).post(f"{url}/new", body={"n": 2}, headers={})
        assert late.value.may_have_billed  # sent: never retried, booked at its reservation
    finally:
        silent.close()


def test_a_kept_alive_connection_the_upstream_closed_is_not_reused():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted = []

    def serve() -> None:
        # Each connection gets one keep-alive answer, then the upstream closes it (idle timeout).
        for _ in range(2):
            conn, _ = listener.accept()
            accepted.append(conn)
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                data += conn.recv(65536)
            body = b'{"ok":true}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        http = HttpClient(ProviderConfig(name="up", type="openai", base_url=url, max_retries=0))
        assert http.post(f"{url}/new", body={"n": 1}, headers={}).json() == {"ok": True}
        thread.join(0.5)  # the upstream has closed the first connection by now
        assert http.post(f"{url}/new", body={"n": 2}, headers={}).json() == {"ok": True}
        assert len(accepted) == 2  # a new connection, not the closed one (no retry allowed)
    finally:
        listener.close()


def test_an_answer_cut_short_is_an_upstream_error_not_a_crash():
    import socket

    from hoosh_edge.errors import UpstreamError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"choices":')
        conn.close()  # 89 bytes short

    threading.Thread(target=serve, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        http = HttpClient(ProviderConfig(name="up", type="openai", base_url=url, max_retries=0))
        with pytest.raises(UpstreamError, match="request failed"):
            http.post(f"{url}/new", body={"n": 1}, headers={})
    finally:
        listener.close()


class _NoThreads:
    """A thread pool that fails the test if a lookup is sent to it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def apply(self, fn: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.calls.append(args)
        return fn(*args, **(kwargs or {}))


def test_an_ip_literal_is_resolved_without_a_thread_and_a_name_still_uses_one():
    resolver = NumericFirstResolver.__new__(NumericFirstResolver)
    resolver.pool = pool = _NoThreads()
    for host in ("127.0.0.1", "::1", "192.168.1.20"):
        got = resolver.getaddrinfo(host, 8080, 0, _socket.SOCK_STREAM)
        assert got == _socket.getaddrinfo(host, 8080, 0, _socket.SOCK_STREAM)
    assert pool.calls == []
    named = resolver.getaddrinfo("localhost", 8080, 0, _socket.SOCK_STREAM)
    assert named and len(pool.calls) == 1 and pool.calls[0][0] == "localhost"


@pytest.mark.parametrize(
    ("host", "literal"),
    [("127.0.0.1", True), ("::1", True), (b"10.0.0.1", True), ("localhost", False),
     ("api.openai.com", False), ("", False), (None, False), ("1.2.3", False)],
)  # fmt: skip
def test_is_ip_literal(host: Any, literal: bool):
    assert is_ip_literal(host) is literal
