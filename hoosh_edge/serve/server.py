"""Run the gateway on gevent's WSGIServer."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import time
from typing import Any, TextIO

import gevent
import gevent.event
import gevent.pool

from hoosh_edge import workers
from hoosh_edge.config import Config
from hoosh_edge.errors import ShuttingDown
from hoosh_edge.exposure import StartupError, check_exposure, check_wyoming_exposure
from hoosh_edge.serve import announce, boot, sdnotify, watchdog
from hoosh_edge.serve.connections import ConnectionLimits, GatewayServer, raise_open_file_limit
from hoosh_edge.version import __version__

__all__ = ["StartupError", "check_exposure", "make_listener", "serve"]

log = logging.getLogger("hoosh_edge")


def make_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket with TCP_NODELAY (accepted sockets inherit it on Linux).

    Without it, keep-alive clients wait out delayed ACKs: ~40 ms per request instead of ~2 ms.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _start_wyoming(config: Config, gateway: Any) -> Any:
    """The Wyoming listener on server.host when ``[wyoming] port`` is set, else None."""
    if config.wyoming.port is None:
        return None
    from hoosh_edge.doors.wyoming_tcp import start_wyoming

    listener = make_listener(config.server.host, config.wyoming.port)
    try:
        server = start_wyoming(listener, gateway)
    except BaseException:
        listener.close()
        raise
    server.announcer = announce.start_announcer(config, listener.getsockname()[1])
    return server


def _cut(servers: list[GatewayServer]) -> None:
    """End what still runs with a 503 ``shutting_down`` (an error event in a stream), so the
    pipeline books it and the client hears why; a second later, whatever is left is killed."""
    message = "The gateway is shutting down and this request had not finished; try again later."
    for srv in servers:
        for handler in list(srv.pool):
            handler.kill(ShuttingDown(message), block=False)
    for srv in servers:
        srv.pool.join(timeout=1)


def serve(config: Config, *, out: TextIO = sys.stdout) -> int:
    """Start the gateway and block until SIGTERM / SIGINT."""
    from hoosh_edge.app import create_app
    from hoosh_edge.gateway import build_gateway

    for w in config.warnings:
        log.warning("config: %s", w)
    from hoosh_edge.errors import HooshError

    # A HooshError raised in a thread of gevent's own pool (DNS and the like) is an answer the
    # calling greenlet handles, not a crash: the hub must not print its traceback too.
    hub = gevent.get_hub()
    hub.NOT_ERROR = (*hub.NOT_ERROR, HooshError)
    patched = boot.threading_warning()
    if patched:
        log.warning("%s", patched)
    s = config.server
    # Models and the books get pools of their own; the hub's pool stays gevent's (DNS lookups).
    workers.configure(inference_threads=s.inference_threads, books_threads=s.books_threads,
                      stuck_job_s=s.stuck_job_s)  # fmt: skip
    gateway = build_gateway(config)
    try:
        check_exposure(config, keys_exist=gateway.auth.keys_exist())
        check_wyoming_exposure(config)
        announce.check_zeroconf(config)
    except StartupError:
        gateway.close()
        raise
    gateway.metrics.gauge_callback(watchdog.gauges)
    app = create_app(gateway=gateway)
    gateway.start_probe(interval_s=max(1.0, config.routing.breaker_cooldown_s / 2))
    listener = make_listener(config.server.host, config.server.port)
    host, port = listener.getsockname()[:2]
    limits = ConnectionLimits.fit(config.server, raise_open_file_limit())
    # A pool (unbounded: the caps are ConnectionCounter's, and closing at accept never stalls the
    # accept loop) lets stop() wait for in-flight requests: SIGTERM drains, not drops.
    server = GatewayServer(listener, app, limits=limits, metrics=gateway.metrics, log=None,
                           error_log=logging.getLogger("hoosh_edge.wsgi"),
                           spawn=gevent.pool.Pool())  # fmt: skip

    # [ollama] port: the same app on a second port, for clients that only know Ollama's.
    servers, ollama_port = [server], None
    if config.ollama.port is not None:
        second = make_listener(config.server.host, config.ollama.port)
        ollama_port = second.getsockname()[1]
        servers.append(GatewayServer(second, app, limits=limits, metrics=gateway.metrics, log=None,
                                     error_log=logging.getLogger("hoosh_edge.wsgi"),
                                     spawn=gevent.pool.Pool()))  # fmt: skip

    try:
        wyoming = _start_wyoming(config, gateway)
    except StartupError:  # e.g. the Wyoming port is taken
        listener.close()
        for extra in servers[1:]:
            extra.socket.close()  # the [ollama] port, not started yet
        gateway.close()
        raise

    # ``drained`` is set once the drain is over; the main greenlet waits for it, not in
    # serve_forever(), which stops the pool itself as soon as the listener closes, with gevent's
    # 1 s stop_timeout, and would cut every answer still being written. ``cut``: a second signal.
    drained, cut = gevent.event.Event(), gevent.event.Event()
    drain_s = config.server.drain_timeout_s
    stopping: list[int] = []  # the signal that began the drain

    def drain_and_stop() -> None:
        try:
            for srv in servers:
                srv.close()  # no new connections, on either port
            if wyoming is not None:
                wyoming.close()
            deadline = time.monotonic() + drain_s
            while gateway.inflight > 0 and time.monotonic() < deadline and not cut.is_set():
                gevent.sleep(0.05)
            if gateway.inflight > 0:
                log.warning("drain: %d request(s) still running are cut", gateway.inflight)
                _cut(servers)
            # What is left is idle keep-alive connections (or requests that ignored the cut).
            for srv in servers:
                srv.stop(timeout=0)
            if wyoming is not None:
                wyoming.stop(timeout=0)
        finally:
            drained.set()

    def stop(signum: int) -> None:
        if stopping:
            log.info("signal %d again: ending the drain now", signum)  # a second Ctrl-C
            cut.set()
            return
        stopping.append(signum)
        sdnotify.notify_stopping()
        log.info("signal %d: stopping (draining in-flight requests for up to %g s)", signum,
                 drain_s)  # fmt: skip
        gevent.spawn(drain_and_stop)

    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, stop, sig)
    # SIGHUP re-reads the config without dropping a connection (systemctl reload).
    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(gateway.reload))

    for srv in servers:
        srv.start()
    shown = f"[{host}]" if ":" in host else host
    print(f"hoosh-edge {__version__} listening on http://{shown}:{port}", file=out)
    if ollama_port is not None:
        print(f"  Ollama's API also on http://{shown}:{ollama_port}", file=out)
    for line in gateway.describe():
        print(f"  {line}", file=out)
    if wyoming is not None:
        w_host, w_port = wyoming.socket.getsockname()[:2]
        print(f"  wyoming: tcp://{f'[{w_host}]' if ':' in w_host else w_host}:{w_port}", file=out)
    if config.source:
        print(f"  config: {config.source}", file=out)
    print(f"  connections: at most {limits.max_connections} ({limits.per_client} per client, "
          f"{limits.loopback_reserve} more for 127.0.0.1); open-file limit "
          f"{limits.open_file_limit}", file=out)  # fmt: skip
    out.flush()
    sdnotify.notify_ready(f"listening on http://{shown}:{port}")
    systemd_watchdog = sdnotify.start_watchdog(lambda: server.started)
    stuck_jobs = watchdog.start(gateway.metrics)
    try:
        drained.wait()
    finally:
        stuck_jobs.kill()
        if wyoming is not None:
            announce.stop_announcer(wyoming.announcer)
        if systemd_watchdog is not None:
            systemd_watchdog.kill()
        gateway.close()
    return 0
