"""systemd's notify protocol (sd_notify) without a dependency: readiness, status and the watchdog.

Under ``Type=notify`` systemd hands the service ``$NOTIFY_SOCKET`` (a filesystem path, or an
abstract socket written with a leading ``@``) and waits for ``READY=1`` before it calls the
service started. With ``WatchdogSec=`` it also sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and
restarts the service when no ``WATCHDOG=1`` arrives within that interval.

The watchdog pings come from a gevent greenlet, so they stop by themselves when the hub is wedged
(a native call that forgot to leave the hub, an endless loop): systemd then restarts the gateway,
which is the point. Every function here is a quiet no-op outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

import gevent
from gevent import Greenlet

__all__ = [
    "notify",
    "notify_ready",
    "notify_stopping",
    "notify_status",
    "watchdog_interval_s",
    "start_watchdog",
]

log = logging.getLogger(__name__)


def _socket_address(raw: str) -> str | None:
    """The AF_UNIX address for ``$NOTIFY_SOCKET``; None for kinds we do not speak (vsock)."""
    if raw.startswith("@"):
        return "\0" + raw[1:]  # Linux abstract namespace
    if raw.startswith("/"):
        return raw
    return None


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send one notify message (e.g. ``"READY=1"``); True when it was delivered to systemd."""
    raw = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    address = _socket_address(raw) if raw else None
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as e:
        # Losing a notification must never take the gateway down; systemd's timeouts cover it.
        log.debug("sd_notify %r to %s failed: %s", state, raw, e)
        return False
    return True


def notify_ready(status: str | None = None) -> bool:
    """Tell systemd the gateway is listening (ends ``systemctl start``'s wait)."""
    return notify("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")


def notify_stopping() -> bool:
    """Tell systemd a clean shutdown (the drain) has begun."""
    return notify("STOPPING=1")


def notify_status(text: str) -> bool:
    """Set the free-form status line ``systemctl status`` shows."""
    return notify(f"STATUS={_one_line(text)}")


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment in the message.
    return " ".join(text.splitlines())


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog interval systemd expects pings within, in seconds; None when there is none."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    # A child that inherited the environment must not ping on its parent's behalf.
    if pid and pid != str(os.getpid()):
        return None
    return usec / 1_000_000


def start_watchdog(
    is_healthy: Callable[[], bool],
    *,
    interval_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> Greenlet | None:
    """Ping ``WATCHDOG=1`` at half the watchdog interval while ``is_healthy()``; None if no watchdog.

    ``interval_s`` overrides the interval read from ``WATCHDOG_USEC`` (for tests). Kill the
    returned greenlet to stop pinging.
    """
    interval = interval_s if interval_s is not None else watchdog_interval_s(env)
    if interval is None or interval <= 0:
        return None
    period = interval / 2  # systemd's own advice: ping at half the interval

    def healthy() -> bool:
        try:
            return bool(is_healthy())
        except Exception:  # noqa: BLE001 - a failing check means unhealthy, not a dead watchdog
            log.exception("watchdog health check failed")
            return False

    def loop() -> None:
        warned = False
        while True:
            if healthy():
                notify("WATCHDOG=1", env=env)
                warned = False
            elif not warned:
                log.warning("unhealthy: holding back watchdog pings; systemd will restart us")
                warned = True
            gevent.sleep(period)

    return gevent.spawn(loop)
