"""The LAN exposure rule, at start-up and at every moment after, and which paths need a key.

The rule: a gateway that listens beyond loopback must have a key (``server.api_keys``,
``server.admin_key`` or an active stored key) unless ``server.allow_unauthenticated`` is set.
A loopback client of a ``0.0.0.0`` listener does not make it a loopback gateway: what counts is
where the gateway listens, since anyone on the LAN can reach that listener too.

- Start-up and reload: ``check_exposure`` refuses the config.
- Revoking the last stored key through ``/admin/keys`` or ``hoosh-edge keys revoke`` is refused
  (409 / an error) while it would leave such a gateway with no key (``must_keep_a_key``).
- The CLI works on the database directly and may not know the running gateway's address, so the
  gateway re-checks on every request (``Exposure.check``): with no key left it answers every
  request but ``/health`` with 503 and logs it once — it fails closed rather than open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hoosh_edge.config import PUBLIC_PATHS, Config, ServerConfig, is_loopback
from hoosh_edge.errors import ServiceUnavailable

log = logging.getLogger("hoosh_edge")


class StartupError(Exception):
    """The gateway must not start as configured; the message says why and what to do."""


def exposed(server: ServerConfig) -> bool:
    """Whether the rule applies: a listener beyond loopback, and no explicit opt-out."""
    return not is_loopback(server.host) and not server.allow_unauthenticated


def check_exposure(config: Config, keys_exist: bool = False) -> None:
    """Refuse to serve the LAN without keys unless the operator said so."""
    s = config.server
    if not exposed(s) or s.api_keys or s.admin_key or keys_exist:
        return
    raise StartupError(
        f"refusing to listen on {s.host} without API keys: anyone on the network could use "
        "(and spend through) this gateway. Set [server] api_keys (or create keys with "
        "'hoosh-edge keys create'), or set server.allow_unauthenticated = true if you really mean it."
    )


def must_keep_a_key(server: ServerConfig) -> bool:
    """Whether the last stored key must not be revoked (no config key would be left)."""
    return exposed(server) and not server.api_keys and not server.admin_key


def last_key_message(server: ServerConfig, name: str) -> str:
    """Why revoking ``name`` is refused, and what to do instead."""
    return (
        f"'{name}' is the last API key, and this gateway listens on {server.host}: revoking it "
        "would open the gateway (admin API included) to the whole network. Create another key "
        "first, or set server.admin_key, or listen on 127.0.0.1."
    )


def public_paths(server: ServerConfig) -> tuple[str, ...]:
    """The paths (besides /health) that answer without a key once keys exist."""
    if server.public_paths is not None:
        return server.public_paths
    return PUBLIC_PATHS if is_loopback(server.host) else ()


def needs_key(server: ServerConfig, path: str) -> bool:
    """Whether ``path`` needs a key on a keyed gateway."""
    if path == "/health":
        return False  # liveness: the version and nothing else
    page = "/" if path.startswith("/status/") else path  # the page's own script and stylesheet
    if page in PUBLIC_PATHS:
        return page not in public_paths(server)
    return path.startswith(("/v1/", "/admin", "/api/"))


class Exposure:
    """The per-request backstop: fail closed when a LAN gateway finds itself with no key."""

    def __init__(self) -> None:
        self.refusing = False

    def check(self, server: ServerConfig, keys_exist: Callable[[], bool], path: str) -> None:
        """Raise 503 on an exposed gateway that has no key left (``/health`` still answers)."""
        if not exposed(server) or server.api_keys or server.admin_key or keys_exist():
            if self.refusing:
                log.warning("an API key exists again: serving requests")
                self.refusing = False
            return
        if not self.refusing:
            log.error(
                "no API key is left and this gateway listens on %s: refusing every request "
                "(but /health) until a key exists ('hoosh-edge keys create NAME') or the "
                "gateway listens on loopback.",
                server.host,
            )
            self.refusing = True
        if path != "/health":
            raise ServiceUnavailable(
                "This gateway listens beyond loopback and has no API key left, so it serves "
                "no one. The operator must create a key ('hoosh-edge keys create NAME').",
                code="no_api_keys",
            )


def check_wyoming_exposure(config: Config) -> None:
    """Refuse a Wyoming listener beyond loopback unless the operator named who may connect.

    Wyoming has no authentication: whoever reaches the port may transcribe, speak and chat (and
    spend through a provider), so keys on the HTTP side do not cover it.
    """
    w, host = config.wyoming, config.server.host
    if w.port is None or is_loopback(host) or w.allow_from or w.allow_unauthenticated:
        return
    raise StartupError(
        f"refusing to serve Wyoming on {host}:{w.port} to anyone: the protocol has no "
        'authentication. Name who may connect ([wyoming] allow_from = ["192.168.1.0/24"]), or '
        "set wyoming.allow_unauthenticated = true if you really mean it."
    )


def wyoming_peer_allowed(config: Config, peer: str) -> bool:
    """Whether a Wyoming peer at ``peer`` may connect: in ``allow_from`` when it is set."""
    import ipaddress

    w = config.wyoming
    if not w.allow_from:
        return True  # loopback listener, or beyond it with allow_unauthenticated (checked at start)
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:192.168.1.7 on a dual-stack socket
    address = mapped or address
    return any(address in ipaddress.ip_network(net) for net in w.allow_from)
