"""Zeroconf for the Wyoming listener: ``_wyoming._tcp.local.`` so Home Assistant discovers the box.

``[wyoming] zeroconf = true`` starts ``python -m hoosh_edge.serve.announce`` beside the gateway:
the ``zeroconf`` package (the optional ``zeroconf`` extra) runs its own asyncio loop and threads,
which stay out of the gateway's gevent hub that way, and a crash in it cannot take serving down.
The child unregisters on SIGTERM and exits by itself when the gateway is gone. A listener on
loopback is not announced: no other machine could reach it.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from hoosh_edge.config import Config, is_loopback
from hoosh_edge.exposure import StartupError

log = logging.getLogger("hoosh_edge")

SERVICE = "_wyoming._tcp.local."


def check_zeroconf(config: Config) -> None:
    """Refuse ``wyoming.zeroconf`` before anything listens when the package is missing."""
    if config.wyoming.port is None or not config.wyoming.zeroconf:
        return
    if importlib.util.find_spec("zeroconf") is None:
        raise StartupError("wyoming.zeroconf = true needs the zeroconf package: "
                           "pip install 'hoosh-edge[zeroconf]' (or set zeroconf = false)")  # fmt: skip


def start_announcer(config: Config, port: int) -> subprocess.Popen | None:
    """The announcing child for a Wyoming listener on ``port``, or None when not wanted."""
    w, host = config.wyoming, config.server.host
    if not w.zeroconf:
        return None
    if is_loopback(host):
        log.warning("wyoming.zeroconf: not announcing a listener on %s, which no other machine "
                    "can reach (set server.host)", host)  # fmt: skip
        return None
    name = w.zeroconf_name or f"hoosh-edge-{socket.gethostname()}"
    argv = [sys.executable, "-m", "hoosh_edge.serve.announce", "--port", str(port),
            "--name", name, "--host", host, "--parent", str(os.getpid())]  # fmt: skip
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)


def stop_announcer(child: subprocess.Popen | None) -> None:
    if child is None or child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        child.kill()


def _address(host: str) -> str:
    """The address to announce: the listener's, or for a wildcard the one with the default route."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("224.0.0.251", 5353))  # no packet is sent: this only picks a route
        return probe.getsockname()[0]
    finally:
        probe.close()


def main(argv: list[str] | None = None) -> int:
    """Register the service, wait for SIGTERM or the gateway's end, unregister."""
    from zeroconf import ServiceInfo, Zeroconf

    ap = argparse.ArgumentParser(prog="hoosh_edge.serve.announce")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--parent", type=int, required=True)
    args = ap.parse_args(argv)
    address = _address(args.host)
    info = ServiceInfo(SERVICE, f"{args.name}.{SERVICE}", port=args.port,
                       addresses=[socket.inet_pton(socket.AF_INET6 if ":" in address
                                                   else socket.AF_INET, address)])  # fmt: skip
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    zc = Zeroconf()
    try:
        zc.register_service(info)
        print(f"wyoming: announced {args.name} at {address}:{args.port}", file=sys.stderr)
        while not stopping and os.getppid() == args.parent:
            time.sleep(1)
        zc.unregister_service(info)
    finally:
        zc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
