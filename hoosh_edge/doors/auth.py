"""Who may do what over HTTP: the key a request carries, and which paths need the admin key.

The books (``books.keys``) store keys, hash them and compare them in constant time; this door
reads them from the headers and applies the path policy:

- No key exists at all (no ``api_keys``, no ``admin_key``, no active stored key): the gateway is
  open, every path is allowed and ``None`` is returned. Anything the client sends is ignored,
  because SDKs always send *some* key. ``exposure`` keeps such a gateway on loopback.
- Otherwise every request needs a key, as ``Authorization: Bearer KEY`` (any case of ``Bearer``)
  or ``x-api-key: KEY``: missing or unknown/revoked keys get 401.
- ``/admin/*`` needs the admin key: a valid non-admin key gets 403. With no admin key configured,
  ``/admin/*`` is reachable only while no key exists at all (the open loopback gateway); once any
  client key exists, admin calls are refused until ``server.admin_key`` is set.
- The admin key is accepted on every path.
"""

from __future__ import annotations

from collections.abc import Mapping

from hoosh_edge.books.keys import Authenticator, KeyRecord
from hoosh_edge.errors import AuthenticationError, PermissionDenied

__all__ = ["authenticate_request", "is_admin_path", "presented_key"]


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in ``Authorization: Bearer KEY`` or else ``x-api-key: KEY``; None if neither."""
    auth = _header(headers, "authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = _header(headers, "x-api-key")
    return key.strip() if key and key.strip() else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        # A plain dict is case-sensitive; Flask's headers are not.
        for k, v in headers.items():
            if k.lower() == name:
                return v
    return value


def is_admin_path(path: str) -> bool:
    """Whether ``path`` is an operator endpoint (``/admin`` and below, not ``/administer``)."""
    return path == "/admin" or path.startswith("/admin/")


def authenticate_request(
    auth: Authenticator, headers: Mapping[str, str], *, path: str
) -> KeyRecord | None:
    """The caller's key record, or None on an open gateway; raises 401 / 403."""
    if not auth.keys_exist():
        return None
    presented = presented_key(headers)
    if presented is None:
        raise AuthenticationError(
            "Missing API key: send 'Authorization: Bearer YOUR_KEY' or 'x-api-key: YOUR_KEY'.",
            code="missing_api_key",
        )
    record = auth.authenticate(presented)
    if record is None:
        raise AuthenticationError("Invalid API key: it is unknown or has been revoked.")
    if is_admin_path(path) and not record.is_admin:
        if not auth.has_admin_key:
            raise PermissionDenied(
                "Admin endpoints are disabled while client keys exist and no admin key is "
                "set: configure server.admin_key."
            )
        raise PermissionDenied(f"The API key '{record.name}' is not an admin key.")
    return record
