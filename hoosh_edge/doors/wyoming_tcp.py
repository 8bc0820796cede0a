"""The Wyoming door: a gevent TCP server in the gateway process for Home Assistant's voice
pipeline (speech-to-text, text-to-speech, conversation), on the same pipeline as HTTP.

Wyoming has no authentication, so who may connect is decided at accept: a peer outside
``wyoming.allow_from`` (when set) is closed before a byte is read. Every connection is bounded —
header line, data and payload lengths (wyoming_frames.py), no complete event for
``idle_timeout_s``, the whole connection past ``session_timeout_s``, at most ``max_connections``
at once — and each violation ends that connection alone, with an ``error`` event where the peer
still reads. The session (wyoming_session.py) hands each request to the pipeline.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent.server import StreamServer
from wyoming.error import Error

from hoosh_edge.doors.wyoming_frames import write_event
from hoosh_edge.doors.wyoming_session import Session, SessionEnd
from hoosh_edge.errors import HooshError
from hoosh_edge.exposure import wyoming_peer_allowed
from hoosh_edge.pipeline.conversations import ConversationMemory

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger("hoosh_edge.wyoming")

# A refused peer is logged once a minute at most: a flood of connections from outside
# wyoming.allow_from must not flood the log (the metric counts every one).
REFUSED_LOG_S = 60.0
REFUSED_PEERS = 1024  # peers remembered for that; forgotten all at once beyond


class SessionTimeout(Exception):
    """A connection outlived ``wyoming.session_timeout_s``."""


class WyomingServer(StreamServer):
    """Accepts Wyoming peers on a listening socket and serves each in its own greenlet."""

    def __init__(self, listener: socket.socket, gateway: Gateway) -> None:
        super().__init__(listener, self.serve_peer)
        self.gateway = gateway
        self.open = 0
        self.announcer: Any = None  # the zeroconf child (serve/announce.py), if one runs
        self.memory = ConversationMemory(max_turns=gateway.config.wyoming.history_turns)
        self._refused: dict[str, list[float]] = {}  # peer -> [last logged at, refused since]
        gateway.metrics.gauge_callback(self._gauges)

    def _gauges(self) -> list[tuple[str, str, list[tuple[dict[str, str], float]]]]:
        w = self.gateway.config.wyoming
        return [
            ("hoosh_wyoming_connections_open", "Wyoming connections open now", [({}, self.open)]),
            ("hoosh_wyoming_connections_max", "Cap on Wyoming connections "
             "(wyoming.max_connections)", [({}, w.max_connections)]),
            ("hoosh_wyoming_conversations", "Voice conversations remembered (wyoming."
             "history_turns)", [({}, len(self.memory))]),
        ]  # fmt: skip

    def _log_refused(self, peer: str) -> None:
        now = time.monotonic()
        seen = self._refused.get(peer)
        if seen is not None and now - seen[0] < REFUSED_LOG_S:
            seen[1] += 1
            return
        if len(self._refused) >= REFUSED_PEERS:
            self._refused.clear()
        more = f"; {seen[1]:g} more from it not logged since" if seen and seen[1] else ""
        log.warning("wyoming: refused a connection from %s (not in wyoming.allow_from)%s",
                    peer, more)  # fmt: skip
        self._refused[peer] = [now, 0]

    def _count(self, outcome: str) -> None:
        self.gateway.metrics.inc("hoosh_wyoming_connections_total", {"outcome": outcome},
                                 help="Wyoming connections by how they ended")  # fmt: skip

    def serve_peer(self, sock: socket.socket, address: Any) -> None:
        """One connection: refused, turned away when full, or served until it ends."""
        peer = str(address[0]) if isinstance(address, tuple) else str(address)
        w = self.gateway.config.wyoming  # read per connection: a reload's allow_from applies
        if not wyoming_peer_allowed(self.gateway.config, peer):
            self._log_refused(peer)
            self._count("refused")
            _close(sock)
            return
        sock.settimeout(w.idle_timeout_s)  # reads and writes: a stalled peer times out
        wfile = sock.makefile("wb")
        if self.open >= w.max_connections:
            self._count("busy")
            _say(wfile, f"Too many Wyoming connections ({w.max_connections}, "
                        "wyoming.max_connections); try again shortly.", "busy")  # fmt: skip
            _close(sock, wfile)
            return
        self.open += 1
        rfile = sock.makefile("rb")
        outcome = "closed"
        try:
            with gevent.Timeout(w.session_timeout_s, SessionTimeout):
                Session(self.gateway, rfile, wfile, peer, self.memory).run()
        except HooshError as e:  # a ProtocolViolation: the peer broke a rule
            outcome = e.code or "protocol_error"
            log.warning("wyoming: %s: %s", peer, e.message)
            _say(wfile, e.message, outcome)
            _linger(sock)
        except SessionEnd:
            outcome = "refused_request"
            _linger(sock)  # the peer may still be sending (HA streams audio): no reset
        except SessionTimeout:
            outcome = "session_timeout"
            log.warning("wyoming: %s: connection open longer than %g s (wyoming."
                        "session_timeout_s); closing it", peer, w.session_timeout_s)  # fmt: skip
            _say(wfile, f"The connection was open longer than {w.session_timeout_s:g} s "
                        "(wyoming.session_timeout_s).", "session_timeout")  # fmt: skip
        except TimeoutError:
            outcome = "idle_timeout"
            _say(wfile, f"No complete event for {w.idle_timeout_s:g} s "
                        "(wyoming.idle_timeout_s).", "idle_timeout")  # fmt: skip
        except OSError:
            outcome = "peer_gone"  # reset or broken pipe: nobody left to tell
        except Exception:  # noqa: BLE001 - a bug ends this connection, never the server
            outcome = "server_error"
            log.exception("wyoming: the connection from %s failed", peer)
            _say(wfile, "Internal error (see the gateway's log).", "server_error")
        finally:
            self.open -= 1
            self._count(outcome)
            _close(sock, rfile, wfile)


def _say(wfile: Any, text: str, code: str) -> None:
    """A last ``error`` event, if the peer still reads (briefly: it may be the one stalling)."""
    try:
        with gevent.Timeout(1.0, False):
            write_event(Error(text=text, code=code).event(), wfile)
    except OSError:
        pass


def _linger(sock: socket.socket) -> None:
    """Let the error event reach a peer still sending: closing with its bytes unread would reset
    the connection, and a reset may drop the event from the peer's buffer before it reads it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        with gevent.Timeout(2.0, False):
            for _ in range(64):  # at most 4 MiB, two seconds (a loaded box answers slowly)
                if not sock.recv(65536):
                    break
    except OSError:
        pass


def _close(sock: socket.socket, *files: Any) -> None:
    for f in files:
        try:
            f.close()
        except OSError:
            pass
    try:
        sock.close()
    except OSError:
        pass


def start_wyoming(listener: socket.socket, gateway: Gateway) -> WyomingServer:
    """Start serving Wyoming on ``listener`` (made by serve.server.make_listener: TCP_NODELAY)."""
    server = WyomingServer(listener, gateway)
    server.start()
    return server
