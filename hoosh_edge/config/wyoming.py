"""The ``[wyoming]`` table: the Wyoming listener, who may connect, its models and its bounds."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from hoosh_edge.config.schema import ConfigError, WyomingConfig, check_keys, typed

_W = "wyoming."


def parse_wyoming(t: dict, src: str) -> WyomingConfig:
    """``[wyoming]``; every network in ``allow_from`` must parse, every bound be positive."""
    d = WyomingConfig()
    check_keys(t, {f.name for f in dataclasses.fields(WyomingConfig)}, _W, src)
    port = typed(t, "port", int, _W, src, None)
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"{src}: 'wyoming.port' must be 0-65535, got {port}")
    out: dict[str, Any] = {"port": port, "allow_from": _networks(t, src)}
    for key in ("allow_unauthenticated", "zeroconf"):
        out[key] = typed(t, key, bool, _W, src, getattr(d, key))
    for key in ("stt_model", "tts_model", "cloud_voice", "system_prompt"):
        out[key] = typed(t, key, str, _W, src, getattr(d, key))
        if not out[key].strip():
            raise ConfigError(f"{src}: 'wyoming.{key}' must not be empty")
    for key in ("voice", "chat_model", "zeroconf_name"):
        out[key] = typed(t, key, str, _W, src, None) or None
    for key in ("max_tokens", "max_line_bytes", "max_data_bytes", "max_payload_bytes",
                "max_connections"):  # fmt: skip
        out[key] = typed(t, key, int, _W, src, getattr(d, key))
        if out[key] < 1:
            raise ConfigError(f"{src}: 'wyoming.{key}' must be >= 1, got {out[key]}")
    out["history_turns"] = typed(t, "history_turns", int, _W, src, d.history_turns)
    if not 0 <= out["history_turns"] <= 100:
        raise ConfigError(
            f"{src}: 'wyoming.history_turns' must be 0-100, got {out['history_turns']}"
        )
    for key in ("idle_timeout_s", "session_timeout_s"):
        out[key] = float(typed(t, key, (int, float), _W, src, getattr(d, key)))
        if not out[key] > 0:
            raise ConfigError(f"{src}: 'wyoming.{key}' must be > 0, got {out[key]}")
    return WyomingConfig(**out)


def _networks(t: dict, src: str) -> tuple[str, ...]:
    """``allow_from`` as normalized networks (``192.168.1.7`` is ``192.168.1.7/32``)."""
    raw = typed(t, "allow_from", list, _W, src, [])
    out = []
    for i, value in enumerate(raw):
        if not isinstance(value, str):
            raise ConfigError(f"{src}: 'wyoming.allow_from[{i}]' must be a string")
        try:
            out.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise ConfigError(
                f"{src}: 'wyoming.allow_from[{i}]' {value!r} is not an address or network "
                '(e.g. "192.168.1.0/24")'
            ) from None
    return tuple(out)
