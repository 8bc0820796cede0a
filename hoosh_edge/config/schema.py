"""The config's shape (frozen dataclasses) and how a TOML table's values are checked.

Every check raises ``ConfigError`` with a message that names the file and the key
(``t.toml: 'server.port' must be int, got 'eighty'``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any


class ConfigError(Exception):
    """Invalid configuration; the message names the key and the file."""


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: the listener, keys, limits, connections and browsers."""

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
    drain_timeout_s: float = 10.0  # SIGTERM: requests in flight may finish for this long
    responses_max_stored: int = 10000  # stored /v1/responses answers kept (oldest leave first)
    responses_ttl_s: float = 30 * 86400.0  # a stored response is forgotten after this
    responses_max_mb: int = 256  # ... and all of them together take at most this much


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
    responses_api: bool = False  # /v1/responses is forwarded as it came (OpenAI's own API)

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    def serves(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pat) for pat in self.models)


# [local.tts] phonemizer: what turns text into Piper's phonemes (backends/engines/phonemizer.py).
PHONEMIZERS = ("auto", "piper-phonemize", "espeak-ng")


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
    prompt_cache_mb: int = 256  # llm only: RAM for saved prompt states (0 = off)
    prompt_cache_disk_mb: int = 1024  # llm only: their files under data_dir (0 = RAM only)
    phonemizer: str = "auto"  # tts only: auto | piper-phonemize | espeak-ng
    # tts only: the espeak-ng data the espeak-ng path reads (None: models_dir/espeak-ng-data when
    # pulled, else the system's); backends/engines/phonemizer.py espeak_data()
    espeak_data: str | None = None
    truncate: bool = True  # embeddings only: cut an input at the model's limit (False: a 400)
    runtime: str = "auto"  # embeddings only: auto | onnxruntime | numpy (engines/embeddings.py)


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
class OllamaConfig:
    """``[ollama]``: Ollama's API is on the main port; ``port`` adds a second listener for it."""

    port: int | None = None  # e.g. 11434, Ollama's own; on server.host, off when unset


@dataclass(frozen=True)
class WyomingConfig:
    """``[wyoming]``: Home Assistant's voice pipeline over TCP (doors/wyoming_tcp.py); off by default."""

    port: int | None = None  # None: no Wyoming listener; 0: any free port (tests)
    allow_from: tuple[str, ...] = ()  # who may connect (CIDR networks); () = anyone on loopback
    allow_unauthenticated: bool = False  # beyond loopback with no allow_from: anyone may connect
    stt_model: str = "whisper-1"  # transcribe without a name: the first local whisper model
    tts_model: str = "tts-1"  # what synthesis is routed as (local Piper, then providers)
    voice: str | None = None  # synthesize without a voice: local.tts.default_voice
    cloud_voice: str = "alloy"  # the voice a provider gets when the asked one is a Piper voice
    chat_model: str | None = None  # conversation (``handle``); None: not offered
    system_prompt: str = ("You are a voice assistant in a home. Answer in one or two short "
                          "sentences, in plain words that read well aloud.")  # fmt: skip
    max_tokens: int = 200  # the longest answer a conversation turn may write
    history_turns: int = 6  # turns of a conversation (by conversation_id) sent again; 0 = none
    zeroconf: bool = False  # announce _wyoming._tcp.local. (the zeroconf package)
    zeroconf_name: str | None = None
    # Bounds on a peer: each violation ends that connection with an error event.
    max_line_bytes: int = 8192  # one JSON header line
    max_data_bytes: int = 262144  # data_length
    max_payload_bytes: int = 1048576  # payload_length (one audio chunk)
    idle_timeout_s: float = 30.0  # no complete event for this long
    session_timeout_s: float = 300.0  # a connection's whole life
    max_connections: int = 64


@dataclass(frozen=True)
class Config:
    """The whole configuration, and the warnings met while reading it."""

    server: ServerConfig = field(default_factory=ServerConfig)
    providers: tuple[ProviderConfig, ...] = ()
    llm: LocalEngineConfig = field(default_factory=LocalEngineConfig)
    stt: LocalEngineConfig = field(default_factory=LocalEngineConfig)
    tts: LocalEngineConfig = field(default_factory=LocalEngineConfig)
    embeddings: LocalEngineConfig = field(default_factory=LocalEngineConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    ollama: OllamaConfig = field(default_factory=OllamaConfig)
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)
    budgets: tuple[dict[str, Any], ...] = ()
    pricing: tuple[tuple[str, dict[str, Any]], ...] = ()
    cache: tuple[tuple[str, Any], ...] = ()
    timezone: str = "UTC"
    database: Any = None  # config.database.DatabaseConfig; None: the books stay in SQLite
    source: str | None = None  # the file it came from, for messages
    warnings: tuple[str, ...] = ()

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


# Paths that may answer without a key on a keyed gateway. /health (liveness, version only)
# always does; these are public on a loopback listener and keyed beyond it unless listed.
PUBLIC_PATHS = ("/", "/metrics", "/v1/health")


def is_loopback(host: str) -> bool:
    """True when binding ``host`` exposes the gateway to this machine only."""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


_ENV_REF = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")


def check_keys(table: dict, allowed: set[str], where: str, src: str) -> None:
    """Refuse a key the table may not hold (a typo must not be a silent default)."""
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"{src}: unknown key '{where}{key}' (allowed: {', '.join(sorted(allowed))})"
            )


def typed(table: dict, key: str, types: type | tuple, where: str, src: str, default: Any) -> Any:
    """``table[key]`` if it has one of ``types`` (a bool is no int), ``default`` when absent."""
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
