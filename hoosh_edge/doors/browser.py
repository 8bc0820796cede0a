"""Browsers: the Host check (DNS rebinding), the Origin check (cross-site requests) and CORS.

A web page the user visits can send "simple" requests to the gateway (a form POST, or a fetch
with ``Content-Type: text/plain``) without any preflight, and a DNS-rebinding page can even read
the answers: its own name resolves to the gateway, so the browser sees one origin. Two checks
close that, before any key is looked at:

- ``Host`` must name the gateway: a loopback name or address, the configured ``server.host``,
  this machine's host name (and ``NAME.local``), a name in ``server.allowed_hosts`` (``*.lan``
  globs; ``"*"`` turns the check off, e.g. behind a reverse proxy), or any IP address literal.
  A rebinding page always sends its own *name*; a page served from an IP address has that
  address as its origin, so an IP literal in ``Host`` is never a rebinding. Else 421.
- A request with an ``Origin`` that is not the gateway's own (its host and port differ from
  ``Host``, or it is ``null``) is refused with 403 unless the origin is in ``server.cors_origins``;
  a listed origin gets CORS answers (preflight included) everywhere except ``/admin/*`` and the
  status page, which never answer cross-origin.

Requests without ``Origin`` (curl, SDKs, cross-site navigations and ``<img>`` loads, which
cannot read the answer and reach only GET routes that change nothing) are not affected.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from functools import lru_cache
from urllib.parse import urlsplit

from flask import Request, Response

from hoosh_edge.config import ServerConfig
from hoosh_edge.errors import CrossOriginRefused, MisdirectedRequest

ALLOW_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = ("Authorization", "Content-Type", "X-Api-Key", "X-Request-Id")
EXPOSE_HEADERS = ("X-Request-Id, X-Hoosh-Provider, X-Hoosh-Model, X-Hoosh-Cache, X-Hoosh-Cost-USD, "
                  "X-Hoosh-Budget-Remaining, X-Hoosh-Sample-Rate, Retry-After")  # fmt: skip
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def host_name(host: str) -> str:
    """The name in a Host header value, without port or brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1)
def _own_names() -> frozenset[str]:
    """This machine's host name (and its mDNS form), as LAN clients may call it."""
    name = socket.gethostname().lower().rstrip(".")
    short = name.partition(".")[0]
    return frozenset(n for n in (name, short, f"{short}.local") if n)


def host_allowed(server: ServerConfig, host: str) -> bool:
    """Whether the Host header ``host`` names this gateway."""
    name = host_name(host)
    if not name or _is_ip(name):
        return True  # no Host at all is no browser; see the module docstring for IP literals
    if name in _LOOPBACK_NAMES or name.endswith(".localhost") or name in _own_names():
        return True
    if name == host_name(server.host):
        return True
    return any(p == "*" or fnmatch.fnmatchcase(name, p) for p in server.allowed_hosts)


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` is the gateway's own: the same host and port the request was sent to."""
    if origin == "null":
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    netloc = parts.netloc.lower()
    for scheme, port in (("http", ":80"), ("https", ":443")):
        if parts.scheme == scheme and netloc.endswith(port):
            netloc = netloc[: -len(port)]  # browsers leave a default port out of Host
    return netloc == host.strip().lower()


def _never_cross_origin(path: str) -> bool:
    return (
        path == "/" or path.startswith("/status/") or path == "/admin" or path.startswith("/admin/")
    )


def cors_origin(server: ServerConfig, request: Request) -> str | None:
    """The request's Origin if it is a listed cross-origin that may be answered with CORS."""
    origin = request.headers.get("Origin")
    if origin is None or _same_origin(origin, request.host) or _never_cross_origin(request.path):
        return None
    listed = origin in server.cors_origins or "*" in server.cors_origins
    return origin if listed else None


def check(server: ServerConfig, request: Request) -> Response | None:
    """Refuse a foreign Host (421) or a cross-origin request (403); answer a CORS preflight."""
    host = request.headers.get("Host", "")
    if not host_allowed(server, host):
        raise MisdirectedRequest(
            f"This gateway is not known as '{host_name(host)}' (the Host header). If that name "
            "is right, add it to server.allowed_hosts."
        )
    origin = request.headers.get("Origin")
    if origin is None or _same_origin(origin, request.host):
        return None
    if cors_origin(server, request) is None:
        where = (
            "/admin and the status page never answer cross-origin"
            if _never_cross_origin(request.path)
            else "list it in server.cors_origins to allow it"
        )
        raise CrossOriginRefused(f"Cross-origin request from {origin} refused ({where}).")
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return Response(status=204)  # the headers are added by add_cors_headers
    return None


def add_cors_headers(server: ServerConfig, request: Request, resp: Response) -> None:
    """CORS headers on every answer to a listed origin, preflight and errors included."""
    if "Vary" in resp.headers:
        resp.vary.add("Origin")
    else:
        resp.headers["Vary"] = "Origin"  # what vary.add gives, without parsing a header set
    origin = cors_origin(server, request)
    if origin is None:
        return
    resp.headers["Access-Control-Allow-Origin"] = origin
    resp.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    if request.method == "OPTIONS":
        asked = request.headers.get("Access-Control-Request-Headers", "")
        extra = [h.strip() for h in asked.split(",") if h.strip() and _is_token(h.strip())]
        names = list(ALLOW_HEADERS) + [h for h in extra if h.lower() not in
                                       {a.lower() for a in ALLOW_HEADERS}]  # fmt: skip
        resp.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        resp.headers["Access-Control-Allow-Headers"] = ", ".join(names)
        resp.headers["Access-Control-Max-Age"] = "600"


def _is_token(name: str) -> bool:
    return len(name) <= 64 and all(c.isalnum() or c in "-_" for c in name)
