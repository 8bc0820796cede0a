"""What the response cache may keep, and under which key.

A key is the sha256 of a canonical form of everything that changes an answer (``chat_key``,
``speech_key``, ``transcription_key``); the resolved target is part of it, the client's alias and
its ``user``/``stream`` fields are not. ``CachePolicy`` is the ``[cache]`` table of the config:
whether a request may be cached at all, for how long, and how much the store may hold.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CachePolicy", "SemanticPolicy", "canonical_json", "chat_key", "embedding_key", "speech_key",
           "transcription_key"]  # fmt: skip

KEY_VERSION = 1  # part of every key: bump it when the stored form changes
MIB = 1024 * 1024

# ---- keys --------------------------------------------------------------------------------------


def _canon(value: Any) -> Any:
    """Plain JSON values with integral floats as ints, so 1 and 1.0 make one key."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    raise TypeError(f"cache keys take JSON values only, not {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, ASCII only, normalized numbers."""
    return json.dumps(_canon(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _digest(kind: str, parts: dict[str, Any]) -> str:
    text = canonical_json({"v": KEY_VERSION, "kind": kind, **parts})
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# Fields that name the caller or the framing, never the answer.
_NOT_IN_CHAT_KEY = frozenset({"model", "stream", "stream_options", "user", "metadata", "store"})
# Defaults every backend shares: absent and explicit-default ask for the same thing.
_CHAT_DEFAULTS = {
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "parallel_tool_calls": True,
}


def chat_key(provider: str, model: str, req: Mapping[str, Any]) -> str:
    """Key of a chat request as served by ``provider``/``model`` (the resolved target)."""
    fields = {k: v for k, v in req.items() if k not in _NOT_IN_CHAT_KEY and v is not None}
    # Either field name asks for the same limit (the newer one wins when both are sent).
    newer, older = fields.pop("max_completion_tokens", None), fields.pop("max_tokens", None)
    limit = newer if newer is not None else older
    if limit is not None:
        fields["max_tokens"] = limit
    stop = fields.pop("stop", None)
    if isinstance(stop, str):
        stop = [stop]
    if stop:
        # A set of stop sequences: order and repeats do not change where generation stops.
        fields["stop"] = sorted(set(stop)) if all(isinstance(s, str) for s in stop) else stop
    for name, default in _CHAT_DEFAULTS.items():
        if name in fields and fields[name] == default:
            del fields[name]
    return _digest("chat", {"provider": provider, "model": model, "request": fields})


def speech_key(provider: str, voice: str, model: str, text: str, fmt: str, speed: float) -> str:
    """Key of a text-to-speech request."""
    return _digest("speech", {"provider": provider, "voice": voice, "model": model, "text": text,
                              "format": fmt, "speed": float(speed)})  # fmt: skip


def transcription_key(
    provider: str, model: str, audio_sha256: str, params: Mapping[str, Any]
) -> str:
    """Key of a transcription or translation; ``params`` holds every option that shapes it."""
    fields = {k: v for k, v in params.items() if v is not None}
    if fields.get("temperature") == 0:
        del fields["temperature"]  # 0 is the default everywhere
    return _digest("transcription", {"provider": provider, "model": model,
                                     "audio": audio_sha256.lower(), "params": fields})  # fmt: skip


def embedding_key(provider: str, model: str, inputs: list[Any], params: Mapping[str, Any]) -> str:
    """Key of an embeddings request: the inputs in order, and every option that shapes them."""
    fields = {k: v for k, v in params.items() if v is not None}
    return _digest("embedding", {"provider": provider, "model": model, "inputs": inputs,
                                 "params": fields})  # fmt: skip


# ---- policy ------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KIB|MIB|GIB)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1024, "MIB": MIB, "GIB": 1024 * MIB}


def _size(name: str, value: Any) -> int:
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"[cache] {name} must be a byte count like 268435456 or '256MiB', "
                             f"not {value!r}")  # fmt: skip
        value = float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()]
        value = int(value)
    return value


@dataclass(frozen=True)
class SemanticPolicy:
    """``[cache] semantic``: which chat models may answer from a reworded question, and how alike.

    ``models`` are the names clients send (a model or an alias); ``embedding_model`` the on-device
    embedding model (None: the first one found). Requests with tools are kept out unless
    ``tools``; temperature follows the exact cache (``cache_nondeterministic``).
    """

    models: tuple[str, ...] = ()
    min_similarity: float = 0.95
    embedding_model: str | None = None
    max_entries: int = 1000
    tools: bool = False

    @classmethod
    def from_table(cls, raw: Any) -> SemanticPolicy:
        if not isinstance(raw, Mapping):
            raise ValueError("[cache] semantic must be a table: { models = [...], "
                             "min_similarity = 0.95 }")  # fmt: skip
        known = list(cls.__dataclass_fields__)
        for name in raw:
            if name not in known:
                raise ValueError(f"[cache] semantic has no setting {name!r}; known: "
                                 f"{', '.join(known)}")  # fmt: skip
        models = raw.get("models", [])
        if (
            not isinstance(models, list)
            or not models
            or not all(isinstance(m, str) and m for m in models)
        ):
            raise ValueError("[cache] semantic.models must be a non-empty list of model names")
        sim = raw.get("min_similarity", cls.min_similarity)
        if isinstance(sim, bool) or not isinstance(sim, (int, float)) or not 0 < sim <= 1:
            raise ValueError(f"[cache] semantic.min_similarity must be in (0, 1], not {sim!r}")
        emb = raw.get("embedding_model")
        if emb is not None and (not isinstance(emb, str) or not emb):
            raise ValueError("[cache] semantic.embedding_model must be a model name")
        most = raw.get("max_entries", cls.max_entries)
        if isinstance(most, bool) or not isinstance(most, int) or most < 1:
            raise ValueError(
                f"[cache] semantic.max_entries must be a whole number >= 1, not {most!r}"
            )
        tools = raw.get("tools", False)
        if not isinstance(tools, bool):
            raise ValueError("[cache] semantic.tools must be true or false")
        return cls(tuple(models), float(sim), emb, most, tools)

    def covers(self, req: Mapping[str, Any]) -> bool:
        """Whether a chat request may be answered from (and stored in) the semantic cache."""
        return req.get("model") in self.models and (self.tools or not req.get("tools"))


@dataclass(frozen=True)
class CachePolicy:
    """What may be cached and how much: the ``[cache]`` table of the config."""

    enabled: bool = True
    ttl_s: float = 86400.0
    max_entries: int = 10_000
    max_bytes: int = 256 * MIB
    cache_nondeterministic: bool = False
    semantic: SemanticPolicy | None = None  # off unless [cache] semantic names models
    shared: bool = False  # in the fleet's PostgreSQL ([database]) instead of this box's file

    def __post_init__(self) -> None:
        for name in ("enabled", "cache_nondeterministic", "shared"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"[cache] {name} must be true or false, "
                                 f"not {getattr(self, name)!r}")  # fmt: skip
        ttl = self.ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
            raise ValueError(f"[cache] ttl_s must be a number of seconds, not {ttl!r}")
        if ttl <= 0:
            raise ValueError(f"[cache] ttl_s must be more than 0, not {ttl!r}")
        for name in ("max_entries", "max_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"[cache] {name} must be a whole number, not {v!r}")
            if v < 1:
                raise ValueError(f"[cache] {name} must be at least 1, not {v!r}")

    @classmethod
    def from_config(cls, raw: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> CachePolicy:
        """Parse ``Config.cache`` (pairs) or a dict; unknown keys and bad values raise ValueError."""
        items = dict(raw.items() if isinstance(raw, Mapping) else raw or ())
        known = [f for f in cls.__dataclass_fields__]
        for name in items:
            if name not in known:
                raise ValueError(f"[cache] has no setting {name!r}; known: {', '.join(known)}")
        if "max_bytes" in items:
            items["max_bytes"] = _size("max_bytes", items["max_bytes"])
        if "semantic" in items:
            items["semantic"] = SemanticPolicy.from_table(items["semantic"])
        return cls(**items)

    def chat_cacheable(self, req: Mapping[str, Any]) -> bool:
        """Only repeatable answers by default: temperature 0 or a fixed seed."""
        if not self.enabled:
            return False
        return (self.cache_nondeterministic or req.get("temperature") == 0
                or req.get("seed") is not None)  # fmt: skip

    def embedding_cacheable(self) -> bool:
        """An encoder's vectors are deterministic: cached whenever the cache is on."""
        return self.enabled

    def speech_cacheable(self) -> bool:
        """Speech synthesis is deterministic enough to cache whenever the cache is on."""
        return self.enabled

    def transcription_cacheable(self, temperature: float = 0.0) -> bool:
        """Transcription at temperature 0 (the default) is deterministic enough to cache."""
        return self.enabled and (temperature == 0 or self.cache_nondeterministic)
