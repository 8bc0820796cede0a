"""The file's shape, table by table, checked by pydantic; its errors said in the config's words.

``validate(raw, src)`` returns a ``ConfigFile`` or raises ``ConfigError`` naming the file and
every bad key as it is written in TOML (``'providers[0].timeout_s' must be > 0, got 0``).
Checks that need the environment or another table (presets, ``$VAR`` secrets, alias targets)
are made in ``load``.
"""

from __future__ import annotations

import dataclasses
import re
import typing
import zoneinfo
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, Strict, TypeAdapter, ValidationError

from hoosh_edge.config.schema import (
    FORBID,
    AtLeast0,
    AtLeast1,
    ConfigError,
    Int,
    Number,
    Seconds,
    ServerConfig,
    Str,
)


def _provider_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueError(f"{value!r} may hold only letters, digits, _ . -")
    return value


def _base_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value


def _target(value: str) -> str:
    if ":" not in value:
        raise ValueError(f"target {value!r} must be 'provider:model' (or 'local:model')")
    return value


def _zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except Exception:  # noqa: BLE001 - any failure means the name is unusable
        raise ValueError(f"{value!r} is not a known IANA time zone") from None
    return value


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value  # one target needs no list


NonEmpty = Annotated[str, Strict(), Field(min_length=1)]
Targets = Annotated[tuple[Annotated[str, Strict(), AfterValidator(_target)], ...],
                    BeforeValidator(_listed)]  # fmt: skip


@dataclass(frozen=True)
class ProviderTable:
    """One ``[[providers]]`` table; what is left out comes from the preset named by ``type``."""

    __pydantic_config__ = FORBID

    type: Str  # openai, anthropic or a preset
    name: Annotated[str, Strict(), AfterValidator(_provider_name)] | None = None
    base_url: Annotated[str, Strict(), AfterValidator(_base_url)] | None = None
    api_key: Str | None = None
    models: tuple[NonEmpty, ...] | None = None
    timeout_s: Seconds = 60.0
    connect_timeout_s: Number = 5.0
    max_retries: Int = 2
    retry_max_s: Number = 30.0
    api_version: Str | None = None
    max_tokens_limit: AtLeast1 | None = None
    headers: dict[str, Str] = field(default_factory=dict)


@dataclass(frozen=True)
class _EngineTable:
    __pydantic_config__ = FORBID

    n_threads: AtLeast0 = 0  # 0 = all cores
    keep_alive_s: Number = 300.0
    max_queue: AtLeast0 = 4
    preload: tuple[Str, ...] = ()


@dataclass(frozen=True)
class LlmTable(_EngineTable):
    """``[local.llm]``; ``models`` maps a model id to a GGUF file."""

    n_ctx: Annotated[int, Strict(), Field(ge=64)] = 4096
    models: dict[str, Str] = field(default_factory=dict)


@dataclass(frozen=True)
class SttTable(_EngineTable):
    """``[local.stt]``; ``max_audio_s`` is the longest upload decoded (at most a day)."""

    max_audio_s: Annotated[float, Strict(), Field(gt=0, le=86400)] = 600.0
    models: dict[str, Str] = field(default_factory=dict)


@dataclass(frozen=True)
class TtsTable(_EngineTable):
    """``[local.tts]``; ``voices`` maps a voice id to a Piper ONNX file."""

    default_voice: Str | None = None
    max_input_chars: AtLeast1 = 4096
    voices: dict[str, Str] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalTables:
    __pydantic_config__ = FORBID

    llm: LlmTable = field(default_factory=LlmTable)
    stt: SttTable = field(default_factory=SttTable)
    tts: TtsTable = field(default_factory=TtsTable)


@dataclass(frozen=True)
class PreferCloudWhen:
    __pydantic_config__ = FORBID

    cpu_temp_c: Number | None = None
    free_ram_mb: Int | None = None
    queue_depth: Int | None = None


@dataclass(frozen=True)
class RoutingTable:
    __pydantic_config__ = FORBID

    aliases: dict[str, Targets] = field(default_factory=dict)
    strategy: Literal["priority", "round_robin", "lowest_latency"] = "priority"
    prefer_cloud_when: PreferCloudWhen = field(default_factory=PreferCloudWhen)
    breaker_cooldown_s: Seconds = 30.0


@dataclass(frozen=True)
class ConfigFile:
    """A whole config file; budgets, pricing and cache tables are checked by the books."""

    __pydantic_config__ = FORBID

    server: ServerConfig = field(default_factory=ServerConfig)
    providers: tuple[ProviderTable, ...] = ()
    local: LocalTables = field(default_factory=LocalTables)
    routing: RoutingTable = field(default_factory=RoutingTable)
    budgets: tuple[dict[str, Any], ...] = ()
    pricing: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    timezone: Annotated[str, Strict(), AfterValidator(_zone)] = "UTC"


@cache
def _adapter() -> TypeAdapter[ConfigFile]:
    return TypeAdapter(ConfigFile)  # built on first use: a few ms, once


def validate(raw: dict[str, Any], src: str) -> ConfigFile:
    """The file's tables, typed and bounded; ConfigError naming every bad key otherwise."""
    try:
        return _adapter().validate_python(raw)
    except ValidationError as e:
        raise ConfigError("\n".join(f"{src}: {_message(err)}" for err in e.errors())) from None


_KINDS = {"int_type": "int", "float_type": "int or float", "string_type": "str",
          "bool_type": "bool", "list_type": "a list", "tuple_type": "a list",
          "dict_type": "a table", "dataclass_type": "a table", "finite_number": "a finite number",
          "literal_error": "{expected}", "greater_than": "> {gt}",
          "greater_than_equal": ">= {ge}", "less_than_equal": "<= {le}",
          "string_too_short": "a non-empty string"}  # fmt: skip


def _message(err: Any) -> str:
    """One pydantic error as the config's own sentence, the key written as in TOML."""
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx") or {}
    key = _key(loc)
    if kind == "unexpected_keyword_argument":
        allowed = ", ".join(sorted(_fields(loc[:-1])))
        return f"unknown key '{key}' (allowed: {allowed})"
    if kind == "missing":
        return f"'{key}' is required"
    if kind == "value_error":
        return f"'{key}' {ctx['error']}"
    if kind in _KINDS:
        bounds = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
        return f"'{key}' must be {_KINDS[kind].format(**bounds)}, got {err['input']!r}"
    return f"'{key}': {err['msg']}"


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            out += f".{part}" if out else part
    return out


def _fields(loc: tuple) -> list[str]:
    """The keys allowed in the table at ``loc`` (for an unknown key's message)."""
    t: Any = ConfigFile
    for part in loc:
        if dataclasses.is_dataclass(t) and isinstance(part, str):
            t = typing.get_type_hints(t)[part]
        else:  # an item of a list of tables
            t = typing.get_args(t)[0]
    return [f.name for f in dataclasses.fields(t)]
