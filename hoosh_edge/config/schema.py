"""The config's shape: frozen dataclasses, each field with its type, default and bounds.

``ServerConfig`` is also the schema of the ``[server]`` table (validated by pydantic, see
``tables``); the other sections have a file shape of their own there. Scalars are strict: TOML's
``"8080"`` is no port and ``true`` no number, but an integer is a fine number of seconds.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, Strict

# Unknown keys are refused: a typo must not be a silent default.
FORBID = ConfigDict(extra="forbid")

# Paths that may answer without a key on a keyed gateway. /health (liveness, version only)
# always does; these are public on a loopback listener and keyed beyond it unless listed.
PUBLIC_PATHS = ("/", "/metrics", "/v1/health")


class ConfigError(Exception):
    """Invalid configuration; the message names the key and the file."""


def _name(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip().lower()


def _origin(value: str) -> str:
    """A browser origin as browsers send it: scheme://host[:port], no path."""
    if value == "*" or re.fullmatch(r"https?://[a-z0-9.\-\[\]:]+", value.rstrip("/")):
        return value.rstrip("/")
    raise ValueError(
        f"{value!r} must be an origin such as "
        '"http://192.168.1.20:3000" (scheme, host and port only) or "*"'
    )


def _public_path(value: str) -> str:
    if value not in PUBLIC_PATHS and value != "/health":
        raise ValueError(
            f"{value!r} is not one of {', '.join(PUBLIC_PATHS)} "
            "(every other path needs a key once keys exist)"
        )
    return value


Str = Annotated[str, Strict()]
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Number = Annotated[float, Strict()]  # an int is accepted (and made a float), a bool is not
Seconds = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
AtLeast0 = Annotated[int, Strict(), Field(ge=0)]
AtLeast1 = Annotated[int, Strict(), Field(ge=1)]
Name = Annotated[str, Strict(), AfterValidator(_name)]  # stripped, lower case
Origin = Annotated[str, Strict(), AfterValidator(_origin)]
PublicPath = Annotated[str, Strict(), AfterValidator(_name), AfterValidator(_public_path)]


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: the listener, keys, limits, connections and browsers."""

    __pydantic_config__ = FORBID

    host: Str = "127.0.0.1"
    port: Annotated[int, Strict(), Field(ge=0, le=65535)] = 8088
    data_dir: Str = "data"
    models_dir: Str = "models"
    api_keys: tuple[Str, ...] = ()  # "$VAR" entries are expanded after validation
    admin_key: Str | None = None
    allow_unauthenticated: Bool = False
    max_body_bytes: Int = 1024 * 1024
    max_audio_bytes: Int = 25 * 1024 * 1024
    sse_keepalive_s: Number = 15.0
    request_timeout_s: Number = 600.0
    log_level: Str = "info"
    # full: paid spend survives a power cut; normal: a crash only
    durability: Literal["full", "normal"] = "full"
    # Connections (serve/connections.py): how long a peer may take, how many it may hold.
    header_timeout_s: Seconds = 10.0  # request line + headers, from the first byte
    body_timeout_s: Seconds = 120.0  # the whole request body, from the end of the headers
    keepalive_timeout_s: Seconds = 30.0  # an idle keep-alive connection is closed after this
    max_connections: AtLeast1 = 1000  # in total (lowered to fit the open-file limit)
    max_connections_per_client: AtLeast1 = 64  # per client IP address
    loopback_reserve: AtLeast0 = 16  # kept for 127.0.0.1 / ::1 beyond max_connections
    # Browsers (doors/browser.py): which Host names and cross-origin pages are accepted.
    allowed_hosts: tuple[Name, ...] = ()
    cors_origins: tuple[Origin, ...] = ()
    public_paths: tuple[PublicPath, ...] | None = None  # None: by listener (see PUBLIC_PATHS)
    inference_threads: AtLeast1 = 32  # OS threads for models and audio decoding
    books_threads: AtLeast1 = 2  # OS threads for the ledger and the cache, never shared with models
    stuck_job_s: Seconds = (
        120.0  # a pool job this long past its expected time is logged and counted
    )


@dataclass(frozen=True)
class ProviderConfig:
    """One cloud (or LAN) provider, its preset filled in and its secret resolved."""

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
    """One on-device engine (``[local.llm]``, ``[local.stt]`` or ``[local.tts]``)."""

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
    """``[routing]``: aliases, strategy, device-aware preference and the breaker."""

    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()
    strategy: str = "priority"  # priority | round_robin | lowest_latency
    # Device-aware routing (opt-in): past any of these, cloud targets go before local ones.
    prefer_cloud_cpu_temp_c: float | None = None
    prefer_cloud_free_ram_mb: int | None = None
    prefer_cloud_queue_depth: int | None = None
    breaker_cooldown_s: float = 30.0  # a provider that failed 3 times in a row rests this long


@dataclass(frozen=True)
class Config:
    """The whole configuration, and the warnings met while reading it."""

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


def is_loopback(host: str) -> bool:
    """True when binding ``host`` exposes the gateway to this machine only."""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
