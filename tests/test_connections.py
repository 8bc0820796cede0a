"""Bounded connections, through the gateway process: timeouts, caps per client and in total.

Loopback aliases (127.0.0.2, 127.0.0.3, ...) are different clients to the gateway: the tests bind
their sockets' source address to them and connect to the gateway on 127.0.0.1.
"""

from __future__ import annotations

import re
import resource
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

from hoosh_edge.config import ConfigError, ServerConfig, parse_config
from hoosh_edge.serve.connections import ConnectionLimits
from tests.conftest import ROOT, GatewayProcess, openai_provider_toml


def addr(gw: GatewayProcess) -> tuple[str, int]:
    u = urlsplit(gw.url)
    return "127.0.0.1", u.port or 80


def connect(gw: GatewayProcess, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(addr(gw), timeout=5, source_address=(source, 0))


def metric(gw: GatewayProcess, line_start: str) -> float:
    for line in requests.get(gw.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the peer closes; (closed in time, what arrived)."""
    sock.settimeout(seconds)
    got = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                return True, got
            got += chunk
    except ConnectionResetError:
        return True, got
    except TimeoutError:
        return False, got
    return False, got


def health_ms(gw: GatewayProcess, source: str = "127.0.0.1") -> float:
    """Time of a fresh-connection GET /health from ``source``, in ms; asserts it answers 200."""
    started = time.monotonic()
    sock = connect(gw, source)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        ok, got = closed_within(sock, 5)
    finally:
        sock.close()
    assert ok and got.startswith(b"HTTP/1.1 200"), got[:200]
    return (time.monotonic() - started) * 1000


def assert_clean_log(gw: GatewayProcess) -> None:
    assert "Traceback" not in gw.log, gw.log[-3000:]
    assert "Too many open files" not in gw.log


@pytest.fixture(autouse=True)
def enough_files():
    """This test process holds 1,000+ sockets at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_thousand_idle_sockets_from_one_address_do_not_lock_others_out(gateway_factory):
    gw = gateway_factory("[server]\n")  # the defaults: 64 connections per client
    flood = [connect(gw, "127.0.0.2") for _ in range(1000)]
    try:
        # Everything past the per-client cap is closed at accept, none of it left hanging.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if metric(gw, 'hoosh_connections_refused_total{reason="per_client"}') >= 936:
                break
            time.sleep(0.2)
        assert metric(gw, 'hoosh_connections_refused_total{reason="per_client"}') == 936
        closed = sum(closed_within(s, 0.05)[0] for s in flood[64:])
        assert closed == 936
        assert all(not closed_within(s, 0.01)[0] for s in flood[:64])  # these are served
        # Another client and the box itself still get answers at once.
        assert health_ms(gw, "127.0.0.3") < 500
        assert health_ms(gw, "127.0.0.1") < 500
        assert metric(gw, "hoosh_connection_clients") >= 1
    finally:
        for s in flood:
            s.close()
    assert_clean_log(gw)


def test_the_total_cap_closes_at_accept_and_keeps_a_reserve_for_the_box(gateway_factory):
    gw = gateway_factory("[server]\nmax_connections = 20\nmax_connections_per_client = 10\n")
    held = [connect(gw, f"127.0.0.{2 + i // 10}") for i in range(20)]
    try:
        # All 20 accepted before the late one comes (a loaded box accepts slowly); /metrics is
        # read through the loopback reserve and counts its own connection: 21.
        deadline = time.monotonic() + 10
        while metric(gw, "hoosh_connections_open") < 21 and time.monotonic() < deadline:
            time.sleep(0.05)
        late = connect(gw, "127.0.0.9")
        ok, got = closed_within(late, 3)
        late.close()
        assert ok, "a connection over the total cap must be closed, not left waiting"
        assert b"503" in got.split(b"\r\n", 1)[0] and b"too_many_connections" in got
        # The operator's own connections use the loopback reserve.
        assert health_ms(gw, "127.0.0.1") < 500
        assert metric(gw, 'hoosh_connections_refused_total{reason="total"}') == 1
        assert metric(gw, "hoosh_connections_max") == 20
    finally:
        for s in held:
            s.close()
    assert_clean_log(gw)


def _small_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_the_caps_fit_under_the_open_file_limit(gateway_factory, fake_openai):
    gw = gateway_factory(openai_provider_toml(fake_openai), preexec_fn=_small_file_limit)
    # (256 - 128 spare) / 2 per connection - 16 for the loopback reserve = 48.
    assert any("at most 48 " in line for line in gw.banner), gw.banner
    assert "does not fit the open-file limit of 256" in gw.log
    held = [connect(gw, f"127.0.0.{2 + i // 50}") for i in range(300)]
    try:
        assert health_ms(gw, "127.0.0.1") < 500
        deadline = time.monotonic() + 10

        def refused() -> float:
            # 127.0.0.2 loses 2 of its 50 to the per-client cap (lowered to 48 too), the rest
            # lose theirs to the total.
            return sum(metric(gw, f'hoosh_connections_refused_total{{reason="{r}"}}')
                       for r in ("per_client", "total"))  # fmt: skip

        while refused() < 300 - 48 and time.monotonic() < deadline:
            time.sleep(0.2)  # the gateway accepts the backlog in batches
        assert refused() == 300 - 48
        assert metric(gw, "hoosh_connections_open") == 48 + 1  # + this scrape, from the reserve
        # A call that needs a second file (its upstream connection) still goes through.
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert requests.post(gw.url + "/v1/chat/completions", json=chat, timeout=10).ok
    finally:
        for s in held:
            s.close()
    assert_clean_log(gw)


def test_headers_dribbled_in_are_cut_off_after_the_header_timeout(gateway_factory):
    gw = gateway_factory("[server]\nheader_timeout_s = 1\n")
    sock = connect(gw)
    started = time.monotonic()
    sock.settimeout(0.5)
    answer = b""
    try:
        for ch in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40:
            sock.sendall(bytes([ch]))
            time.sleep(0.1)
            try:
                answer += sock.recv(4096)
                break  # the gateway gave up on us
            except TimeoutError:
                continue
    except (BrokenPipeError, ConnectionResetError):
        pass
    ok, rest = closed_within(sock, 3)
    elapsed = time.monotonic() - started
    sock.close()
    assert ok and (answer + rest).startswith(b"HTTP/1.1 408"), answer + rest
    assert 0.9 < elapsed < 3, elapsed
    # A client that connects and sends nothing at all is closed too.
    silent = connect(gw)
    assert closed_within(silent, 3)[0]
    silent.close()
    assert metric(gw, 'hoosh_connection_timeouts_total{phase="header"}') == 2
    assert_clean_log(gw)


def _read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if
                  h.lower().startswith(b"content-length:"))  # fmt: skip
    while len(body) < length:
        body += _recv(sock)
    return head


def _recv(sock: socket.socket) -> bytes:
    """The next bytes; a close before the response is whole fails the test (never a spin)."""
    chunk = sock.recv(4096)
    assert chunk, "the gateway closed the connection before a whole response"
    return chunk


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(gateway_factory):
    gw = gateway_factory("[server]\nkeepalive_timeout_s = 1\n")
    sock = connect(gw)
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    sock.sendall(request)
    assert _read_response(sock).startswith(b"HTTP/1.1 200")
    time.sleep(0.5)  # within the idle timeout the connection still serves
    sock.sendall(request)
    assert _read_response(sock).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    ok, got = closed_within(sock, 4)
    sock.close()
    assert ok and got == b""
    assert 0.9 < time.monotonic() - started < 3
    assert metric(gw, 'hoosh_connection_timeouts_total{phase="idle"}') == 1
    assert_clean_log(gw)


def test_a_kept_alive_connection_restarts_its_timers_for_every_request(gateway_factory):
    """Each connection's header and idle timers serve request after request: none fires late."""
    gw = gateway_factory("[server]\nheader_timeout_s = 1\nkeepalive_timeout_s = 1\n")
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    sock = connect(gw)
    for _ in range(5):  # 2 s in all, twice either timeout: each request starts them afresh
        sock.sendall(request)
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(0.4)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers that never end
    ok, got = closed_within(sock, 5)
    sock.close()
    assert ok and got.startswith(b"HTTP/1.1 408"), got
    idle = connect(gw)
    for _ in range(3):
        idle.sendall(request)
        assert _read_response(idle).startswith(b"HTTP/1.1 200")
    ok, got = closed_within(idle, 5)  # and then says nothing
    idle.close()
    assert ok and got == b""
    assert metric(gw, 'hoosh_connection_timeouts_total{phase="header"}') == 1
    assert metric(gw, 'hoosh_connection_timeouts_total{phase="idle"}') == 1
    assert_clean_log(gw)


def test_a_body_that_does_not_arrive_gets_408_and_a_close(gateway_factory):
    gw = gateway_factory("[server]\nbody_timeout_s = 1\n")
    sock = connect(gw)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"model\": ")  # fmt: skip
    started = time.monotonic()
    ok, got = closed_within(sock, 5)
    sock.close()
    assert ok and got.startswith(b"HTTP/1.1 408"), got
    assert b'"code":"request_timeout"' in got and b"server.body_timeout_s" in got
    assert b"Connection: close" in got
    assert 0.9 < time.monotonic() - started < 3
    assert metric(gw, 'hoosh_connection_timeouts_total{phase="body"}') == 1
    assert health_ms(gw) < 500
    assert_clean_log(gw)


def test_the_unit_file_limit_fits_the_default_caps():
    unit = (ROOT / "systemd" / "hoosh-edge.service").read_text()
    nofile = int(
        next(ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("LimitNOFILE="))
    )
    limits = ConnectionLimits.fit(ServerConfig(), nofile)
    assert limits.max_connections == ServerConfig().max_connections == 1000


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"header_timeout_s": 0}, "'server.header_timeout_s' must be > 0"),
        ({"max_connections_per_client": 0}, "'server.max_connections_per_client' must be >= 1"),
        ({"body_timeout_s": "soon"}, "'server.body_timeout_s' must be int or float"),
        ({"cors_origins": ["http://app.example/path"]}, "must be an origin such as"),
        ({"public_paths": ["/v1/models"]}, "is not one of /, /metrics, /v1/health"),
    ],
)
def test_bad_connection_and_browser_keys_name_themselves(server, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"server": server}, src="t.toml", env={})


def test_bytes_that_are_not_http_are_logged_quietly_once_a_minute(gateway_factory):
    """A TLS hello or a Wyoming client on the HTTP port is the peer's mistake, not an ERROR."""
    gw = gateway_factory('[server]\nheader_timeout_s = 1\nlog_level = "debug"\n')
    for payload in (b'{"type": "describe"}\n', b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",
                    b"GARBAGE\r\n\r\n", b'{"type": "describe"}\n'):  # fmt: skip
        sock = connect(gw, "127.0.0.5")
        sock.sendall(payload)
        ok, got = closed_within(sock, 5)
        sock.close()
        assert ok and (got == b"" or got.startswith(b"HTTP/1.1 400")), got
    assert health_ms(gw) < 2000  # and everyone else is served
    time.sleep(0.3)
    lines = [x for x in gw.log.splitlines() if "not HTTP from 127.0.0.5" in x]
    assert len(lines) == 4 and " ERROR " not in gw.log and "socket at 0x" not in gw.log
    assert [(" INFO " in x) for x in lines] == [True, False, False, False]  # once per peer a minute
    assert metric(gw, "hoosh_malformed_requests_total") == 4
    assert_clean_log(gw)
