"""Configuration: one TOML file plus the environment, into frozen dataclasses.

Start-up with no file at all is the quick start: 127.0.0.1:8088, local models found in
``models/``, and a cloud provider for each well-known API key in the environment. Every mistake in
a file stops start-up with a message that names the key and the file.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from hoosh_edge.presets import ENV_PROVIDERS, PRESETS


class ConfigError(Exception):
    """Invalid configuration; the message names the key and the file."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8088
    data_dir: str = "data"
    models_dir: str = "models"
    api_keys: tuple[str, ...] = ()
    admin_key: str | None = None
    allow_unauthenticated: bool = False
    max_body_bytes: int = 1024 * 1024
    max_audio_bytes: int = 25 * 1024 * 1024
    sse_keepalive_s: float = 15.0
    request_timeout_s: float = 600.0
    log_level: str = "info"
    durability: str = "full"  # full: paid spend survives a power cut; normal: a crash only
    # Connections (hoosh_edge/connections.py): how long a peer may take, how many it may hold.
    header_timeout_s: float = 10.0  # request line + headers, from the first byte
    body_timeout_s: float = 120.0  # the whole request body, from the end of the headers
    keepalive_timeout_s: float = 30.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1000  # in total (lowered to fit the open-file limit)
    max_connections_per_client: int = 64  # per client IP address
    loopback_reserve: int = 16  # kept for 127.0.0.1 / ::1 beyond max_connections
    # Browsers (hoosh_edge/browser.py): which Host names and cross-origin pages are accepted.
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    public_paths: tuple[str, ...] | None = None  # None: by listener (see PUBLIC_PATHS)
    inference_threads: int = 32  # OS threads for models and audio decoding
    books_threads: int = 2  # OS threads for the ledger and the cache, never shared with models
    stuck_job_s: float = 120.0  # a pool job this long past its expected time is logged and counted


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    type: str  # "openai" (any OpenAI-compatible API) or "anthropic"
    base_url: str
    api_key: str | None = None
    models: tuple[str, ...] = ()
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_retries: int = 2
    retry_max_s: float = 30.0
    api_version: str | None = None
    max_tokens_limit: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    disabled_reason: str | None = None  # e.g. an unresolved $ENV secret

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    def serves(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pat) for pat in self.models)


@dataclass(frozen=True)
class LocalEngineConfig:
    n_threads: int = 0
    n_ctx: int = 4096
    keep_alive_s: float = 300.0
    max_queue: int = 4
    preload: tuple[str, ...] = ()
    models: tuple[tuple[str, str], ...] = ()  # (model id, path); empty = discover in models_dir
    default_voice: str | None = None  # tts only
    max_audio_s: float = 600.0  # stt only: longest upload decoded (header and data both checked)
    max_input_chars: int = 4096  # tts only: longest text one /v1/audio/speech request may send


@dataclass(frozen=True)
class RoutingConfig:
    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()
    strategy: str = "priority"  # priority | round_robin | lowest_latency
    # Device-aware routing (opt-in): past any of these, cloud targets go before local ones.
    prefer_cloud_cpu_temp_c: float | None = None
    prefer_cloud_free_ram_mb: int | None = None
    prefer_cloud_queue_depth: int | None = None
    breaker_cooldown_s: float = 30.0  # a provider that failed 3 times in a row rests this long


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    providers: tuple[ProviderConfig, ...] = ()
    llm: LocalEngineConfig = field(default_factory=LocalEngineConfig)
    stt: LocalEngineConfig = field(default_factory=LocalEngineConfig)
    tts: LocalEngineConfig = field(default_factory=LocalEngineConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    budgets: tuple[dict[str, Any], ...] = ()
    pricing: tuple[tuple[str, dict[str, Any]], ...] = ()
    cache: tuple[tuple[str, Any], ...] = ()
    timezone: str = "UTC"
    source: str | None = None  # the file it came from, for messages
    warnings: tuple[str, ...] = ()

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


_ENV_REF = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")


def _check_keys(table: dict, allowed: set[str], where: str, src: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"{src}: unknown key '{where}{key}' (allowed: {', '.join(sorted(allowed))})"
            )


def _typed(table: dict, key: str, types: type | tuple, where: str, src: str, default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _as_tuple(types))
    if not ok:
        names = " or ".join(t.__name__ for t in _as_tuple(types))
        raise ConfigError(f"{src}: '{where}{key}' must be {names}, got {value!r}")
    return value


def _as_tuple(types: type | tuple) -> tuple:
    return types if isinstance(types, tuple) else (types,)


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


def _parse_server(t: dict, src: str, env: dict[str, str], warnings: list[str]) -> ServerConfig:
    d = ServerConfig()
    allowed = {f.name for f in dataclasses.fields(ServerConfig)}
    _check_keys(t, allowed, "server.", src)
    keys = []
    for i, k in enumerate(_typed(t, "api_keys", list, "server.", src, [])):
        if not isinstance(k, str):
            raise ConfigError(f"{src}: 'server.api_keys[{i}]' must be a string")
        value, missing = expand_secret(k, env)
        if missing:
            warnings.append(f"server.api_keys[{i}]: environment variable ${missing} is not set")
        elif value:
            keys.append(value)
    admin, missing = expand_secret(_typed(t, "admin_key", str, "server.", src, None), env)
    if missing:
        warnings.append(f"server.admin_key: environment variable ${missing} is not set")
    port = _typed(t, "port", int, "server.", src, d.port)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{src}: 'server.port' must be 0-65535, got {port}")
    return ServerConfig(
        host=_typed(t, "host", str, "server.", src, d.host),
        port=port,
        data_dir=_typed(t, "data_dir", str, "server.", src, d.data_dir),
        models_dir=_typed(t, "models_dir", str, "server.", src, d.models_dir),
        api_keys=tuple(keys),
        admin_key=admin,
        allow_unauthenticated=_typed(t, "allow_unauthenticated", bool, "server.", src, False),
        max_body_bytes=_typed(t, "max_body_bytes", int, "server.", src, d.max_body_bytes),
        max_audio_bytes=_typed(t, "max_audio_bytes", int, "server.", src, d.max_audio_bytes),
        sse_keepalive_s=float(
            _typed(t, "sse_keepalive_s", (int, float), "server.", src, d.sse_keepalive_s)
        ),
        request_timeout_s=float(
            _typed(t, "request_timeout_s", (int, float), "server.", src, d.request_timeout_s)
        ),
        log_level=_typed(t, "log_level", str, "server.", src, d.log_level),
        durability=_durability(_typed(t, "durability", str, "server.", src, d.durability), src),
        **_parse_connections(t, src, d),
        allowed_hosts=_strings(t, "allowed_hosts", src),
        cors_origins=tuple(_origin(o, src) for o in _strings(t, "cors_origins", src)),
        public_paths=_public_paths(t, src),
        inference_threads=_at_least(t, "inference_threads", 1, d.inference_threads, src),
        books_threads=_at_least(t, "books_threads", 1, d.books_threads, src),
        stuck_job_s=_positive_s(t, "stuck_job_s", d.stuck_job_s, src),
    )


# Paths that may answer without a key on a keyed gateway. /health (liveness, version only)
# always does; these are public on a loopback listener and keyed beyond it unless listed.
PUBLIC_PATHS = ("/", "/metrics", "/v1/health")


def _parse_connections(t: dict, src: str, d: ServerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
        value = float(_typed(t, key, (int, float), "server.", src, getattr(d, key)))
        if not value > 0:
            raise ConfigError(f"{src}: 'server.{key}' must be > 0, got {value}")
        out[key] = value
    for key in ("max_connections", "max_connections_per_client", "loopback_reserve"):
        value = _typed(t, key, int, "server.", src, getattr(d, key))
        if value < (0 if key == "loopback_reserve" else 1):
            raise ConfigError(f"{src}: 'server.{key}' must be >= 1, got {value}")
        out[key] = value
    return out


def _strings(t: dict, key: str, src: str) -> tuple[str, ...]:
    values = _typed(t, key, list, "server.", src, [])
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
    value = _typed(t, key, int, "server.", src, default)
    if value < low:
        raise ConfigError(f"{src}: 'server.{key}' must be at least {low}, got {value}")
    return value


def _positive_s(t: dict, key: str, default: float, src: str) -> float:
    value = float(_typed(t, key, (int, float), "server.", src, default))
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{src}: 'server.{key}' must be a positive number of seconds")
    return value


def _durability(value: str, src: str) -> str:
    if value not in ("full", "normal"):
        raise ConfigError(f'{src}: \'server.durability\' must be "full" or "normal", got {value!r}')
    return value


_PROVIDER_KEYS = {
    "name", "type", "base_url", "api_key", "models", "timeout_s", "connect_timeout_s",
    "max_retries", "retry_max_s", "api_version", "max_tokens_limit", "headers",
}  # fmt: skip


def _parse_provider(
    t: dict, i: int, src: str, env: dict[str, str], warnings: list[str]
) -> ProviderConfig:
    where = f"providers[{i}]."
    if not isinstance(t, dict):
        raise ConfigError(f"{src}: 'providers[{i}]' must be a table ([[providers]])")
    _check_keys(t, _PROVIDER_KEYS, where, src)
    ptype = _typed(t, "type", str, where, src, None)
    if ptype is None:
        raise ConfigError(f"{src}: '{where}type' is required (openai, anthropic or a preset)")
    if ptype not in PRESETS:
        raise ConfigError(
            f"{src}: '{where}type' is {ptype!r}; known types: {', '.join(sorted(PRESETS))}"
        )
    preset = PRESETS[ptype]
    name = _typed(t, "name", str, where, src, ptype)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"{src}: '{where}name' {name!r} may hold only letters, digits, _ . -")
    base_url = _typed(t, "base_url", str, where, src, preset.base_url)
    if not base_url:
        raise ConfigError(f"{src}: '{where}base_url' is required for type {ptype!r}")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{src}: '{where}base_url' must start with http:// or https://")
    models = _typed(t, "models", list, where, src, list(preset.models))
    if not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{src}: '{where}models' must be a list of model names or globs")
    raw_key = _typed(t, "api_key", str, where, src, None)
    api_key, missing = expand_secret(raw_key, env)
    disabled = None
    if missing:
        disabled = f"environment variable ${missing} is not set"
        warnings.append(f"provider '{name}': api_key refers to ${missing}, which is not set; "
                        "the provider is disabled")  # fmt: skip
    elif preset.needs_key and not api_key:
        disabled = "no api_key configured"
        warnings.append(f"provider '{name}': no api_key; the provider is disabled")
    api_version = _typed(t, "api_version", str, where, src, None)
    if ptype == "anthropic" and api_version is None:
        api_version = env.get("ANTHROPIC_API_VERSION") or preset.api_version
    headers = _typed(t, "headers", dict, where, src, {})
    for hk, hv in headers.items():
        if not isinstance(hv, str):
            raise ConfigError(f"{src}: '{where}headers.{hk}' must be a string")
    max_tokens_limit = _typed(t, "max_tokens_limit", int, where, src, None)
    if max_tokens_limit is not None and max_tokens_limit < 1:
        raise ConfigError(f"{src}: '{where}max_tokens_limit' must be >= 1")
    timeout_s = float(_typed(t, "timeout_s", (int, float), where, src, 60.0))
    if timeout_s <= 0:
        raise ConfigError(f"{src}: '{where}timeout_s' must be > 0")
    return ProviderConfig(
        name=name,
        type=preset.wire,
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        models=tuple(models),
        timeout_s=timeout_s,
        connect_timeout_s=float(_typed(t, "connect_timeout_s", (int, float), where, src, 5.0)),
        max_retries=_typed(t, "max_retries", int, where, src, 2),
        retry_max_s=float(_typed(t, "retry_max_s", (int, float), where, src, 30.0)),
        api_version=api_version,
        max_tokens_limit=max_tokens_limit,
        headers=tuple(sorted(headers.items())),
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
        out.append(
            ProviderConfig(
                name=ptype,
                type=preset.wire,
                base_url=preset.base_url,
                api_key=key,
                models=preset.models,
                api_version=api_version,
            )
        )
    return out


def _parse_local(t: dict, kind: str, src: str) -> LocalEngineConfig:
    where = f"local.{kind}."
    allowed = {"n_threads", "keep_alive_s", "max_queue", "preload", "models"}
    if kind == "llm":
        allowed |= {"n_ctx"}
    if kind == "stt":
        allowed |= {"max_audio_s"}
    if kind == "tts":
        allowed |= {"default_voice", "voices", "max_input_chars"}
        allowed.discard("models")
    _check_keys(t, allowed, where, src)
    table_key = "voices" if kind == "tts" else "models"
    models = _typed(t, table_key, dict, where, src, {})
    for mid, path in models.items():
        if not isinstance(path, str):
            raise ConfigError(f"{src}: '{where}{table_key}.{mid}' must be a file path string")
    preload = _typed(t, "preload", list, where, src, [])
    d = LocalEngineConfig()
    n_threads = _typed(t, "n_threads", int, where, src, 0)
    if n_threads < 0:
        raise ConfigError(f"{src}: '{where}n_threads' must be >= 0 (0 = all cores)")
    max_queue = _typed(t, "max_queue", int, where, src, d.max_queue)
    if max_queue < 0:
        raise ConfigError(f"{src}: '{where}max_queue' must be >= 0")
    n_ctx = _typed(t, "n_ctx", int, where, src, d.n_ctx)
    if n_ctx < 64:
        raise ConfigError(f"{src}: '{where}n_ctx' must be >= 64")
    max_audio_s = float(_typed(t, "max_audio_s", (int, float), where, src, d.max_audio_s))
    if not 0 < max_audio_s <= 86400:
        raise ConfigError(f"{src}: '{where}max_audio_s' must be > 0 and at most 86400 (a day)")
    max_input_chars = _typed(t, "max_input_chars", int, where, src, d.max_input_chars)
    if max_input_chars < 1:
        raise ConfigError(f"{src}: '{where}max_input_chars' must be >= 1")
    return LocalEngineConfig(
        n_threads=n_threads,
        n_ctx=n_ctx,
        keep_alive_s=float(_typed(t, "keep_alive_s", (int, float), where, src, d.keep_alive_s)),
        max_queue=max_queue,
        preload=tuple(str(p) for p in preload),
        models=tuple(models.items()),
        default_voice=_typed(t, "default_voice", str, where, src, None),
        max_audio_s=max_audio_s,
        max_input_chars=max_input_chars,
    )


def _parse_routing(t: dict, src: str, providers: list[ProviderConfig]) -> RoutingConfig:
    _check_keys(
        t, {"aliases", "strategy", "prefer_cloud_when", "breaker_cooldown_s"}, "routing.", src
    )
    cooldown = float(_typed(t, "breaker_cooldown_s", (int, float), "routing.", src, 30.0))
    if cooldown <= 0:
        raise ConfigError(f"{src}: 'routing.breaker_cooldown_s' must be > 0")
    when = _typed(t, "prefer_cloud_when", dict, "routing.", src, {})
    _check_keys(
        when, {"cpu_temp_c", "free_ram_mb", "queue_depth"}, "routing.prefer_cloud_when.", src
    )
    w = "routing.prefer_cloud_when."
    temp = _typed(when, "cpu_temp_c", (int, float), w, src, None)
    free = _typed(when, "free_ram_mb", int, w, src, None)
    depth = _typed(when, "queue_depth", int, w, src, None)
    strategy = _typed(t, "strategy", str, "routing.", src, "priority")
    if strategy not in ("priority", "round_robin", "lowest_latency"):
        raise ConfigError(
            f"{src}: 'routing.strategy' must be priority, round_robin or lowest_latency"
        )
    aliases = []
    for alias, targets in _typed(t, "aliases", dict, "routing.", src, {}).items():
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not all(isinstance(x, str) for x in targets):
            raise ConfigError(f"{src}: 'routing.aliases.{alias}' must be a list of targets")
        for target in targets:
            if ":" not in target:
                raise ConfigError(
                    f"{src}: 'routing.aliases.{alias}' target {target!r} must be "
                    "'provider:model' (or 'local:model')"
                )
            pname = target.split(":", 1)[0]
            if pname != "local" and not any(p.name == pname for p in providers):
                raise ConfigError(
                    f"{src}: 'routing.aliases.{alias}' names provider {pname!r}, which is not "
                    "configured"
                )
        aliases.append((alias, tuple(targets)))
    return RoutingConfig(
        aliases=tuple(aliases),
        strategy=strategy,
        prefer_cloud_cpu_temp_c=None if temp is None else float(temp),
        prefer_cloud_free_ram_mb=free,
        prefer_cloud_queue_depth=depth,
        breaker_cooldown_s=cooldown,
    )


_TOP_KEYS = {"server", "providers", "local", "routing", "budgets", "pricing", "cache", "timezone"}


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
    _check_keys(raw, _TOP_KEYS, "", src)
    warnings: list[str] = []
    server = _parse_server(_typed(raw, "server", dict, "", src, {}), src, env, warnings)
    if host is not None or port is not None:
        server = dataclasses.replace(
            server,
            host=host if host is not None else server.host,
            port=port if port is not None else server.port,
        )
    if "providers" in raw:
        plist = _typed(raw, "providers", list, "", src, [])
        providers = [_parse_provider(p, i, src, env, warnings) for i, p in enumerate(plist)]
    else:
        providers = _env_providers(env)
    names = [p.name for p in providers]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"{src}: provider name(s) used twice: {', '.join(sorted(dupes))}")
    if "local" in names:
        raise ConfigError(f"{src}: 'local' is reserved for on-device models; rename the provider")
    local = _typed(raw, "local", dict, "", src, {})
    _check_keys(local, {"llm", "stt", "tts"}, "local.", src)
    budgets = _typed(raw, "budgets", list, "", src, [])
    for i, b in enumerate(budgets):
        if not isinstance(b, dict):
            raise ConfigError(f"{src}: 'budgets[{i}]' must be a table ([[budgets]])")
    pricing = _typed(raw, "pricing", dict, "", src, {})
    for model, table in pricing.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{src}: 'pricing.\"{model}\"' must be a table")
    tz = _typed(raw, "timezone", str, "", src, "UTC")
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(tz)
    except Exception:  # noqa: BLE001 - any failure means the name is unusable
        raise ConfigError(f"{src}: 'timezone' {tz!r} is not a known IANA time zone") from None
    return Config(
        server=server,
        providers=tuple(providers),
        llm=_parse_local(_typed(local, "llm", dict, "local.", src, {}), "llm", src),
        stt=_parse_local(_typed(local, "stt", dict, "local.", src, {}), "stt", src),
        tts=_parse_local(_typed(local, "tts", dict, "local.", src, {}), "tts", src),
        routing=_parse_routing(_typed(raw, "routing", dict, "", src, {}), src, providers),
        budgets=tuple(budgets),
        pricing=tuple(pricing.items()),
        cache=tuple(_typed(raw, "cache", dict, "", src, {}).items()),
        timezone=tz,
        source=None if src == "(defaults)" else src,
        warnings=tuple(warnings),
    )


def is_loopback(host: str) -> bool:
    """True when binding ``host`` exposes the gateway to this machine only."""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
