"""The ``[server]`` table: listener, keys, limits, connections and browsers."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from hoosh_edge.config.schema import (
    PUBLIC_PATHS,
    ConfigError,
    ServerConfig,
    check_keys,
    expand_secret,
    typed,
)


def parse_server(t: dict, src: str, env: dict[str, str], warnings: list[str]) -> ServerConfig:
    """``[server]``, its ``"$VAR"`` keys expanded (an unset one is a warning, not a key)."""
    d = ServerConfig()
    allowed = {f.name for f in dataclasses.fields(ServerConfig)}
    check_keys(t, allowed, "server.", src)
    keys = []
    for i, k in enumerate(typed(t, "api_keys", list, "server.", src, [])):
        if not isinstance(k, str):
            raise ConfigError(f"{src}: 'server.api_keys[{i}]' must be a string")
        value, missing = expand_secret(k, env)
        if missing:
            warnings.append(f"server.api_keys[{i}]: environment variable ${missing} is not set")
        elif value:
            keys.append(value)
    admin, missing = expand_secret(typed(t, "admin_key", str, "server.", src, None), env)
    if missing:
        warnings.append(f"server.admin_key: environment variable ${missing} is not set")
    port = typed(t, "port", int, "server.", src, d.port)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{src}: 'server.port' must be 0-65535, got {port}")
    return ServerConfig(
        host=typed(t, "host", str, "server.", src, d.host),
        port=port,
        data_dir=typed(t, "data_dir", str, "server.", src, d.data_dir),
        models_dir=typed(t, "models_dir", str, "server.", src, d.models_dir),
        api_keys=tuple(keys),
        admin_key=admin,
        allow_unauthenticated=typed(t, "allow_unauthenticated", bool, "server.", src, False),
        max_body_bytes=typed(t, "max_body_bytes", int, "server.", src, d.max_body_bytes),
        max_audio_bytes=typed(t, "max_audio_bytes", int, "server.", src, d.max_audio_bytes),
        sse_keepalive_s=float(
            typed(t, "sse_keepalive_s", (int, float), "server.", src, d.sse_keepalive_s)
        ),
        request_timeout_s=float(
            typed(t, "request_timeout_s", (int, float), "server.", src, d.request_timeout_s)
        ),
        log_level=typed(t, "log_level", str, "server.", src, d.log_level),
        durability=_durability(typed(t, "durability", str, "server.", src, d.durability), src),
        **_parse_connections(t, src, d),
        allowed_hosts=_strings(t, "allowed_hosts", src),
        cors_origins=tuple(_origin(o, src) for o in _strings(t, "cors_origins", src)),
        public_paths=_public_paths(t, src),
        inference_threads=_at_least(t, "inference_threads", 1, d.inference_threads, src),
        books_threads=_at_least(t, "books_threads", 1, d.books_threads, src),
        stuck_job_s=_positive_s(t, "stuck_job_s", d.stuck_job_s, src),
        drain_timeout_s=_positive_s(t, "drain_timeout_s", d.drain_timeout_s, src),
        responses_max_stored=_at_least(t, "responses_max_stored", 0, d.responses_max_stored, src),
        responses_ttl_s=_positive_s(t, "responses_ttl_s", d.responses_ttl_s, src),
        responses_max_mb=_at_least(t, "responses_max_mb", 1, d.responses_max_mb, src),
    )


def _parse_connections(t: dict, src: str, d: ServerConfig) -> dict[str, Any]:
    """The connection timeouts (> 0) and caps (>= 1; the loopback reserve may be 0)."""
    out: dict[str, Any] = {}
    for key in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
        value = float(typed(t, key, (int, float), "server.", src, getattr(d, key)))
        if not value > 0:
            raise ConfigError(f"{src}: 'server.{key}' must be > 0, got {value}")
        out[key] = value
    for key in ("max_connections", "max_connections_per_client", "loopback_reserve"):
        value = typed(t, key, int, "server.", src, getattr(d, key))
        low = 0 if key == "loopback_reserve" else 1
        if value < low:
            raise ConfigError(f"{src}: 'server.{key}' must be >= {low}, got {value}")
        out[key] = value
    return out


def _strings(t: dict, key: str, src: str) -> tuple[str, ...]:
    values = typed(t, key, list, "server.", src, [])
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise ConfigError(f"{src}: 'server.{key}' must be a list of non-empty strings")
    return tuple(v.strip().lower() for v in values)


def _origin(value: str, src: str) -> str:
    """A browser origin as browsers send it: scheme://host[:port], no path."""
    if value == "*" or re.fullmatch(r"https?://[a-z0-9.\-\[\]:]+", value.rstrip("/")):
        return value.rstrip("/")
    raise ConfigError(
        f"{src}: 'server.cors_origins' entry {value!r} must be an origin such as "
        '"http://192.168.1.20:3000" (scheme, host and port only) or "*"'
    )


def _public_paths(t: dict, src: str) -> tuple[str, ...] | None:
    if "public_paths" not in t:
        return None
    paths = _strings(t, "public_paths", src)
    for p in paths:
        if p not in PUBLIC_PATHS and p != "/health":
            raise ConfigError(
                f"{src}: 'server.public_paths' entry {p!r} is not one of "
                f"{', '.join(PUBLIC_PATHS)} (every other path needs a key once keys exist)"
            )
    return paths


def _at_least(t: dict, key: str, low: int, default: int, src: str) -> int:
    value = typed(t, key, int, "server.", src, default)
    if value < low:
        raise ConfigError(f"{src}: 'server.{key}' must be at least {low}, got {value}")
    return value


def _positive_s(t: dict, key: str, default: float, src: str) -> float:
    value = float(typed(t, key, (int, float), "server.", src, default))
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{src}: 'server.{key}' must be a positive number of seconds")
    return value


def _durability(value: str, src: str) -> str:
    if value not in ("full", "normal"):
        raise ConfigError(f'{src}: \'server.durability\' must be "full" or "normal", got {value!r}')
    return value
