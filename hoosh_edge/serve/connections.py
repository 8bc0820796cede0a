"""Bounded connections: timeouts for slow peers, caps per client and in total, the file limit.

One LAN host must not be able to lock everyone out. Without bounds, idle keep-alive connections
and clients that send their headers a byte at a time stay open forever, and enough of them use up
the process's file descriptors: then even ``/health`` fails. So:

- ``header_timeout_s``: the request line and headers must arrive within this, counted from the
  first byte (from the accept on a new connection); then 408 and close.
- ``body_timeout_s``: the whole request body must arrive within this after the headers; the app
  sees a 408 ``RequestTimeout`` and the connection closes.
- ``keepalive_timeout_s``: a kept-alive connection with no next request is closed after this.
- ``max_connections_per_client`` and ``max_connections``: a connection over either cap is closed
  at accept (with a short 503 if the socket takes it), never queued. ``loopback_reserve`` more
  are kept for 127.0.0.1 and ::1, so the operator's ``/health``, ``/metrics`` and admin calls
  from the box itself get through while the LAN has used up its share.
- The soft ``RLIMIT_NOFILE`` is raised to the hard limit at start-up, and ``max_connections`` is
  lowered if it would not fit: each connection may hold a second descriptor (its upstream call),
  and ``FD_HEADROOM`` stay free for the database, model files, logs and provider pools.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer

from hoosh_edge.config import ServerConfig
from hoosh_edge.errors import RequestTimeout

log = logging.getLogger("hoosh_edge")
wsgi_log = logging.getLogger("hoosh_edge.wsgi")
_MALFORMED_SEEN: dict[str, float] = {}  # peer -> when its last non-HTTP bytes were logged at INFO

FD_HEADROOM = 128  # descriptors never given to client connections
RESERVED_CLIENTS = frozenset({"127.0.0.1", "::1"})  # the box itself: the operator, the CLI


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, e)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass(frozen=True)
class ConnectionLimits:
    """The caps and timeouts in force (max_connections already fitted to the file limit)."""

    max_connections: int
    per_client: int
    loopback_reserve: int
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    open_file_limit: int

    @classmethod
    def fit(cls, server: ServerConfig, open_file_limit: int) -> ConnectionLimits:
        """The configured limits, with max_connections lowered to fit ``open_file_limit``."""
        reserve = server.loopback_reserve
        fits = max(1, (open_file_limit - FD_HEADROOM) // 2 - reserve)
        total = server.max_connections
        if total > fits:
            log.warning(
                "server.max_connections = %d does not fit the open-file limit of %d "
                "(2 per connection + %d spare + the loopback reserve of %d); using %d. "
                "Raise LimitNOFILE (systemd) or ulimit -n to allow more.",
                total, open_file_limit, FD_HEADROOM, reserve, fits,
            )  # fmt: skip
            total = fits
        return cls(
            max_connections=total,
            per_client=min(server.max_connections_per_client, total),
            loopback_reserve=reserve,
            header_timeout_s=server.header_timeout_s,
            body_timeout_s=server.body_timeout_s,
            keepalive_timeout_s=server.keepalive_timeout_s,
            open_file_limit=open_file_limit,
        )


def client_ip(address: Any) -> str:
    """The peer's IP address as a string (IPv4-mapped IPv6 as plain IPv4)."""
    ip = str(address[0]) if isinstance(address, tuple) else str(address)
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


class ConnectionCounter:
    """Open connections per client address and in total; decides admission at accept."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.by_client: Counter[str] = Counter()
        self.total = 0

    def admit(self, ip: str) -> str | None:
        """Count a new connection from ``ip``; or return why it is refused ('per_client', 'total')."""
        lim = self.limits
        extra = lim.loopback_reserve if ip in RESERVED_CLIENTS else 0
        if self.by_client[ip] >= lim.per_client + extra:
            return "per_client"
        if self.total >= lim.max_connections + extra:
            return "total"
        self.by_client[ip] += 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.by_client[ip] -= 1
        if self.by_client[ip] <= 0:
            del self.by_client[ip]


def _canned(status: str, message: str, code: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "server_error" if status[0] == "5"
                                 else "invalid_request_error", "param": None, "code": code}})  # fmt: skip
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
            f"\r\nConnection: close\r\n\r\n{body}").encode()  # fmt: skip


_HEADER_TIMEOUT = _canned("408 Request Timeout", "The request headers did not arrive in time.",
                          "request_timeout")  # fmt: skip


class _Expired(Exception):
    """Raised into a handler greenlet by its own timer; never seen outside this module."""


class _TimedInput:
    """``wsgi.input`` with one deadline for the whole body; past it, 408 and close."""

    def __init__(self, inner: Any, handler: GatewayHandler, timeout_s: float) -> None:
        self._inner = inner
        self._handler = handler
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._expired = False

    def _timed(self, fn: Any, *args: Any) -> Any:
        remaining = self._deadline - time.monotonic()
        if not self._expired and remaining > 0:
            expired = _Expired()
            try:
                with gevent.Timeout(remaining, expired):
                    return fn(*args)
            except _Expired as e:
                if e is not expired:
                    raise
        if not self._expired:
            self._expired = True
            self._handler.timed_out("body")
        raise RequestTimeout(
            f"The request body did not arrive within {self._timeout_s:g} s (server.body_timeout_s)."
        )

    def read(self, length: int | None = None) -> bytes:
        return self._timed(self._inner.read, length)

    def readline(self, size: int | None = None) -> bytes:
        return self._timed(self._inner.readline, size)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return self._timed(self._inner.readlines, hint)

    def __iter__(self) -> _TimedInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def _discard(self) -> None:
        """Read what the app left of the body (to reach the next request), within the deadline."""
        inner = self._inner
        if self._expired or (inner.position >= (inner.content_length or 0)
                             and not inner.chunked_input):  # fmt: skip
            return  # the app read it all (pywsgi's own test): no timer for nothing to read
        try:
            self._timed(inner._discard)
        except RequestTimeout:
            pass  # timed_out() has marked the connection for closing


class GatewayHandler(WSGIHandler):
    """pywsgi's handler with header, body and keep-alive timeouts."""

    server: GatewayServer
    _served = 0
    _header_timer: Any = None

    def timed_out(self, phase: str) -> None:
        """Count a timeout; the connection closes after it."""
        self.close_connection = True
        self.server.metrics.inc("hoosh_connection_timeouts_total", {"phase": phase},
                                help="Connections closed for a slow or idle peer, by phase")  # fmt: skip

    def handle_one_request(self) -> Any:
        lim = self.server.limits
        if self._served and not self._next_request_arrives(lim.keepalive_timeout_s):
            return None
        self._served += 1
        expired = _Expired()
        timer = self._header_timer = gevent.Timeout(lim.header_timeout_s, expired)
        timer.start()
        try:
            return super().handle_one_request()
        except _Expired as e:
            if e is not expired:
                raise
            self.timed_out("header")
            return ("408", _HEADER_TIMEOUT)
        finally:
            timer.close()
            self._header_timer = None

    def _next_request_arrives(self, timeout_s: float) -> bool:
        """Wait for the first byte of the next request on a kept-alive connection."""
        expired = _Expired()
        try:
            with gevent.Timeout(timeout_s, expired):
                return bool(self.rfile.peek(1))
        except _Expired as e:
            if e is not expired:
                raise
            self.timed_out("idle")
        except OSError:
            pass  # the peer went away
        return False

    def read_request(self, raw_requestline: str) -> Any:
        ok = super().read_request(raw_requestline)
        if self._header_timer is not None:
            self._header_timer.cancel()  # the headers are in; the body has its own clock
        return ok

    def log_error(self, msg: str, *args: Any) -> None:
        """A peer that does not speak HTTP (a TLS hello, a Wyoming client, a scanner).

        Not the gateway's error: one INFO line per peer a minute (DEBUG in between), counted
        in ``hoosh_malformed_requests_total``; never the socket's repr, never at ERROR.
        """
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg!r} {args!r}"
        peer = self.client_address[0] if isinstance(self.client_address, tuple) else "?"
        self.server.metrics.inc("hoosh_malformed_requests_total", {},
                                help="Connections that did not speak HTTP")  # fmt: skip
        now = time.monotonic()
        seen = _MALFORMED_SEEN
        level = logging.DEBUG if now - seen.get(peer, -1e9) < 60 else logging.INFO
        if level == logging.INFO:
            if len(seen) > 1024:
                seen.clear()  # a bound, not a history: a flood of peers costs no memory
            seen[peer] = now
        text = text.replace(f"(from {self.client_address}) ", "")
        wsgi_log.log(level, "not HTTP from %s: %.200s", peer, text)

    def _handle_client_error(self, ex: BaseException) -> Any:
        if isinstance(ex, _Expired):
            raise ex  # our header timer fired inside read_request: handled above
        return super()._handle_client_error(ex)

    def get_environ(self) -> dict[str, Any]:
        env = super().get_environ()
        if env.get("wsgi.input") is self.wsgi_input:
            timed = _TimedInput(self.wsgi_input, self, self.server.limits.body_timeout_s)
            self.wsgi_input = env["wsgi.input"] = timed
        return env


class GatewayServer(WSGIServer):
    """WSGIServer that caps connections per client and in total, closing the excess at accept."""

    handler_class = GatewayHandler

    def __init__(self, listener: Any, application: Any, *, limits: ConnectionLimits,
                 metrics: Any, **kw: Any) -> None:  # fmt: skip
        super().__init__(listener, application, **kw)
        self.limits = limits
        self.metrics = metrics
        self.counter = ConnectionCounter(limits)
        metrics.gauge_callback(self._gauges)

    def _gauges(self) -> list[tuple[str, str, list[tuple[dict[str, str], float]]]]:
        return [
            ("hoosh_connections_open", "Client connections open now", [({}, self.counter.total)]),
            ("hoosh_connections_max", "Cap on client connections (server.max_connections)",
             [({}, self.limits.max_connections)]),
            ("hoosh_connection_clients", "Client addresses with a connection open",
             [({}, len(self.counter.by_client))]),
        ]  # fmt: skip

    def do_handle(self, sock: Any, address: Any) -> None:
        ip = client_ip(address)
        reason = self.counter.admit(ip)
        if reason is None:
            super().do_handle(sock, address)  # its do_close releases the slot
            return
        self.metrics.inc("hoosh_connections_refused_total", {"reason": reason},
                         help="Connections closed at accept: over a cap")  # fmt: skip
        lim = self.limits
        message = (
            f"Too many connections from {ip} (server.max_connections_per_client = "
            f"{lim.per_client})." if reason == "per_client" else
            f"Too many connections (server.max_connections = {lim.max_connections})."
        )  # fmt: skip
        try:
            sock.settimeout(0)  # best effort: a peer that is not reading gets only the close
            sock.send(_canned("503 Service Unavailable", message, "too_many_connections"))
        except OSError:
            pass
        finally:
            sock.close()

    def do_close(self, sock: Any, address: Any) -> None:  # type: ignore[override]
        self.counter.release(client_ip(address))
        super().do_close(sock, address)
