"""Loading: the file (or none) and the environment into a ``Config``.

Start-up with no file at all is the quick start: 127.0.0.1:8088, local models found in
``models/``, and a cloud provider for each well-known API key in the environment. ``tables``
checks the file's types and bounds; here come what needs more than one table or the environment:
presets, ``"$VAR"`` secrets, provider names and alias targets.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from hoosh_edge.config.schema import (
    Config,
    ConfigError,
    LocalEngineConfig,
    ProviderConfig,
    RoutingConfig,
    ServerConfig,
)
from hoosh_edge.config.tables import ConfigFile, ProviderTable, RoutingTable, validate
from hoosh_edge.presets import ENV_PROVIDERS, PRESETS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

_ENV_REF = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")


def load_config(
    path: str | os.PathLike | None = None,
    *,
    env: dict[str, str] | None = None,
    host: str | None = None,
    port: int | None = None,
) -> Config:
    """Read the config file (or none) and the environment; raise ConfigError when invalid."""
    env = dict(os.environ if env is None else env)
    if path is None:
        path = env.get("HOOSH_EDGE_CONFIG") or None
    raw: dict[str, Any] = {}
    src = "(defaults)"
    if path is not None:
        src = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{src}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{src}: not valid TOML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{src}: cannot read: {e}") from None
    return parse_config(raw, src=src, env=env, host=host, port=port)


def parse_config(
    raw: dict[str, Any],
    *,
    src: str = "(config)",
    env: dict[str, str] | None = None,
    host: str | None = None,
    port: int | None = None,
) -> Config:
    """Validate a parsed TOML document into a Config."""
    env = dict(os.environ if env is None else env)
    doc = validate(raw, src)
    warnings: list[str] = []
    server = _secrets(doc.server, env, warnings)
    if host is not None or port is not None:
        server = dataclasses.replace(
            server,
            host=host if host is not None else server.host,
            port=port if port is not None else server.port,
        )
    if "providers" in raw:
        providers = [_provider(t, i, src, env, warnings) for i, t in enumerate(doc.providers)]
    else:
        providers = _env_providers(env)
    names = [p.name for p in providers]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"{src}: provider name(s) used twice: {', '.join(sorted(dupes))}")
    if "local" in names:
        raise ConfigError(f"{src}: 'local' is reserved for on-device models; rename the provider")
    return Config(
        server=server,
        providers=tuple(providers),
        **_engines(doc),
        routing=_routing(doc.routing, src, names),
        budgets=doc.budgets,
        pricing=tuple(doc.pricing.items()),
        cache=tuple(doc.cache.items()),
        timezone=doc.timezone,
        source=None if src == "(defaults)" else src,
        warnings=tuple(warnings),
    )


def expand_secret(value: str | None, env: dict[str, str]) -> tuple[str | None, str | None]:
    """Expand ``"$VAR"``; returns (value, name of the missing variable or None)."""
    if value is None:
        return None, None
    m = _ENV_REF.match(value.strip())
    if not m:
        return value, None
    var = m.group(1)
    got = env.get(var)
    return (got, None) if got else (None, var)


def _secrets(server: ServerConfig, env: dict[str, str], warnings: list[str]) -> ServerConfig:
    """The server's keys with ``"$VAR"`` expanded; an unset variable is a warning, no key."""
    keys = []
    for i, k in enumerate(server.api_keys):
        value, missing = expand_secret(k, env)
        if missing:
            warnings.append(f"server.api_keys[{i}]: environment variable ${missing} is not set")
        elif value:
            keys.append(value)
    admin, missing = expand_secret(server.admin_key, env)
    if missing:
        warnings.append(f"server.admin_key: environment variable ${missing} is not set")
    return dataclasses.replace(server, api_keys=tuple(keys), admin_key=admin)


def _provider(
    t: ProviderTable, i: int, src: str, env: dict[str, str], warnings: list[str]
) -> ProviderConfig:
    """A ``[[providers]]`` table over its preset; a missing secret disables it, with a warning."""
    where = f"providers[{i}]."
    if t.type not in PRESETS:
        raise ConfigError(
            f"{src}: '{where}type' is {t.type!r}; known types: {', '.join(sorted(PRESETS))}"
        )
    preset = PRESETS[t.type]
    name = t.name or t.type
    base_url = t.base_url or preset.base_url
    if not base_url:
        raise ConfigError(f"{src}: '{where}base_url' is required for type {t.type!r}")
    api_key, missing = expand_secret(t.api_key, env)
    disabled = None
    if missing:
        disabled = f"environment variable ${missing} is not set"
        warnings.append(f"provider '{name}': api_key refers to ${missing}, which is not set; "
                        "the provider is disabled")  # fmt: skip
    elif preset.needs_key and not api_key:
        disabled = "no api_key configured"
        warnings.append(f"provider '{name}': no api_key; the provider is disabled")
    api_version = t.api_version
    if t.type == "anthropic" and api_version is None:
        api_version = env.get("ANTHROPIC_API_VERSION") or preset.api_version
    return ProviderConfig(
        name=name,
        type=preset.wire,
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        models=preset.models if t.models is None else t.models,
        timeout_s=t.timeout_s,
        connect_timeout_s=t.connect_timeout_s,
        max_retries=t.max_retries,
        retry_max_s=t.retry_max_s,
        api_version=api_version,
        max_tokens_limit=t.max_tokens_limit,
        headers=tuple(sorted(t.headers.items())),
        disabled_reason=disabled,
    )


def _env_providers(env: dict[str, str]) -> list[ProviderConfig]:
    """A provider for each well-known API key present in the environment."""
    out = []
    for ptype, var in ENV_PROVIDERS:
        key = env.get(var)
        if not key:
            continue
        preset = PRESETS[ptype]
        api_version = None
        if ptype == "anthropic":
            api_version = env.get("ANTHROPIC_API_VERSION") or preset.api_version
        out.append(ProviderConfig(name=ptype, type=preset.wire, base_url=preset.base_url,
                                  api_key=key, models=preset.models, api_version=api_version))  # fmt: skip
    return out


def _engines(doc: ConfigFile) -> dict[str, LocalEngineConfig]:
    """``[local.llm]``, ``[local.stt]`` and ``[local.tts]`` as the engines take them."""
    common = ("n_threads", "keep_alive_s", "max_queue", "preload")
    llm, stt, tts = doc.local.llm, doc.local.stt, doc.local.tts
    return {
        "llm": LocalEngineConfig(**{k: getattr(llm, k) for k in common}, n_ctx=llm.n_ctx,
                                 models=tuple(llm.models.items())),
        "stt": LocalEngineConfig(**{k: getattr(stt, k) for k in common},
                                 max_audio_s=stt.max_audio_s, models=tuple(stt.models.items())),
        "tts": LocalEngineConfig(**{k: getattr(tts, k) for k in common},
                                 default_voice=tts.default_voice,
                                 max_input_chars=tts.max_input_chars,
                                 models=tuple(tts.voices.items())),
    }  # fmt: skip


def _routing(t: RoutingTable, src: str, providers: list[str]) -> RoutingConfig:
    """``[routing]``; every alias target must name a configured provider (or ``local``)."""
    for alias, targets in t.aliases.items():
        for target in targets:
            pname = target.split(":", 1)[0]
            if pname != "local" and pname not in providers:
                raise ConfigError(
                    f"{src}: 'routing.aliases.{alias}' names provider {pname!r}, which is not "
                    "configured"
                )
    when = t.prefer_cloud_when
    return RoutingConfig(
        aliases=tuple(t.aliases.items()),
        strategy=t.strategy,
        prefer_cloud_cpu_temp_c=when.cpu_temp_c,
        prefer_cloud_free_ram_mb=when.free_ram_mb,
        prefer_cloud_queue_depth=when.queue_depth,
        breaker_cooldown_s=t.breaker_cooldown_s,
    )
