"""Name resolution on the hub: gevent's thread resolver, but an IP address is never a lookup.

gevent's default resolver sends every ``getaddrinfo`` to a thread, even for ``127.0.0.1`` or a
LAN provider's ``192.168.1.20``, where there is nothing to look up: each new upstream connection
then pays a thread hop (and, on a busy box, a wait for the scheduler) for a numeric parse. An IP
literal is parsed inline with ``AI_NUMERICHOST`` (no network, no blocking); names still go to
the thread, so DNS never blocks the hub.
"""

from __future__ import annotations

import _socket  # the C module, never patched: what gevent's thread resolver calls too
import ipaddress
from typing import Any

from gevent.resolver.thread import Resolver as ThreadResolver

_NUMERIC = _socket.AI_NUMERICHOST


def is_ip_literal(host: Any) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address written out (no name to resolve)."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str) or not host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class NumericFirstResolver(ThreadResolver):
    """``gevent.resolver.thread.Resolver`` that answers IP literals without a thread."""

    def getaddrinfo(self, host: Any, port: Any, family: int = 0, type: int = 0,
                    proto: int = 0, flags: int = 0) -> Any:  # fmt: skip
        if is_ip_literal(host):
            return _socket.getaddrinfo(host, port, family, type, proto, flags | _NUMERIC)
        return super().getaddrinfo(host, port, family, type, proto, flags)
