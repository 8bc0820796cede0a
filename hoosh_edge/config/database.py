"""``[database]``: where the books live when several boxes share them (PostgreSQL).

No ``[database]`` table keeps the books in ``<data_dir>/hoosh-edge.db`` (SQLite), as always. A
``url`` of the form ``postgresql://user@host:port/dbname`` puts the ledger, the budget rules and
the API keys in that PostgreSQL database; the password never sits in the file itself but comes
from the environment (``password = "$HOOSH_DB_PASSWORD"``), like the providers' API keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from hoosh_edge.config.schema import ConfigError, check_keys, expand_secret, typed

_KEYS = {"url", "password", "lease_s", "connect_timeout_s"}


@dataclass(frozen=True)
class DatabaseConfig:
    """The shared books' database; ``url`` None keeps the local SQLite file."""

    url: str | None = None
    password: str | None = None  # from $ENV, never from the file
    lease_s: float = 30.0  # a box silent this long is dead: its reservations are booked
    connect_timeout_s: float = 3.0


def parse_database(t: dict, src: str, env: dict[str, str]) -> DatabaseConfig:
    """Check ``[database]``; a password written out in the file is refused."""
    check_keys(t, _KEYS, "database.", src)
    url = typed(t, "url", str, "database.", src, None)
    if url is None:
        if t:
            raise ConfigError(f"{src}: '[database]' needs 'url' (postgresql://user@host:port/db)")
        return DatabaseConfig()
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigError(
            f"{src}: 'database.url' must look like postgresql://user@host:port/dbname, got {url!r}"
        )
    if parts.password is not None:
        raise ConfigError(
            f"{src}: 'database.url' holds a password; put it in the environment and write "
            'password = "$VARIABLE" instead'
        )
    raw = typed(t, "password", str, "database.", src, None)
    if raw is not None and not raw.strip().startswith("$"):
        raise ConfigError(
            f"{src}: 'database.password' must name an environment variable (\"$VARIABLE\")"
        )
    password, missing = expand_secret(raw, env)
    if missing:
        raise ConfigError(f"{src}: 'database.password' refers to ${missing}, which is not set")
    lease = float(typed(t, "lease_s", (int, float), "database.", src, 30.0))
    timeout = float(typed(t, "connect_timeout_s", (int, float), "database.", src, 3.0))
    if not 5.0 <= lease <= 3600.0:
        raise ConfigError(f"{src}: 'database.lease_s' must be between 5 and 3600 seconds")
    if not 0.5 <= timeout <= 60.0:
        raise ConfigError(f"{src}: 'database.connect_timeout_s' must be between 0.5 and 60")
    return DatabaseConfig(url=url, password=password, lease_s=lease, connect_timeout_s=timeout)
