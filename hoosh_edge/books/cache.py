"""Persistent response cache: exact-key answers kept in the gateway's SQLite file.

A key is the sha256 of a canonical form of everything that changes an answer (``chat_key``,
``speech_key``, ``transcription_key``); the resolved target is part of it, the client's alias and
its ``user``/``stream`` fields are not. ``ResponseCache`` stores only what it is handed — the API
layer hands it finished answers only: for chat the joined ``chat.completion`` (``ChatRecorder``
turns a stream into one only if the stream ended cleanly), which ``replay_chunks`` turns back into
chunks, so a streamed request can hit an answer stored by a non-streamed one and vice versa.

Entries live in the WAL database, so every ``put`` that returned survives ``kill -9``. Each row
carries a checksum of its body and meta; a row that fails it (or any other check) is dropped and
logged, never served. Bounds (entries, bytes) evict least-recently-used rows in the ``put``
transaction; hits record their last use in memory and write it out in batches, because a write
transaction per hit would cost more than the hit itself (see ``benchmarks/cache.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gevent.lock
import gevent.monkey

from hoosh_edge.books.db import Database
from hoosh_edge.errors import HooshError
from hoosh_edge.formats.openai import join_chunks, max_tokens_of

__all__ = [
    "CachePolicy",
    "CachedEntry",
    "ChatRecorder",
    "Flight",
    "ResponseCache",
    "canonical_json",
    "chat_key",
    "directives",
    "replay_chunks",
    "speech_key",
    "transcription_key",
]

log = logging.getLogger(__name__)

KINDS = ("chat", "speech", "transcription")
KEY_VERSION = 1  # part of every key: bump it when the stored form changes
MIB = 1024 * 1024
_allocate_lock = gevent.monkey.get_original("_thread", "allocate_lock")

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
_CHAT_DEFAULTS = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0}


def chat_key(provider: str, model: str, req: Mapping[str, Any]) -> str:
    """Key of a chat request as served by ``provider``/``model`` (the resolved target)."""
    fields = {k: v for k, v in req.items() if k not in _NOT_IN_CHAT_KEY and v is not None}
    fields.pop("max_completion_tokens", None)
    fields.pop("max_tokens", None)
    limit = max_tokens_of(dict(req))
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
class CachePolicy:
    """What may be cached and how much: the ``[cache]`` table of the config."""

    enabled: bool = True
    ttl_s: float = 86400.0
    max_entries: int = 10_000
    max_bytes: int = 256 * MIB
    cache_nondeterministic: bool = False

    def __post_init__(self) -> None:
        for name in ("enabled", "cache_nondeterministic"):
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
        return cls(**items)

    def chat_cacheable(self, req: Mapping[str, Any]) -> bool:
        """Only repeatable answers by default: temperature 0 or a fixed seed."""
        if not self.enabled:
            return False
        return (self.cache_nondeterministic or req.get("temperature") == 0
                or req.get("seed") is not None)  # fmt: skip

    def speech_cacheable(self) -> bool:
        """Speech synthesis is deterministic enough to cache whenever the cache is on."""
        return self.enabled

    def transcription_cacheable(self, temperature: float = 0.0) -> bool:
        """Transcription at temperature 0 (the default) is deterministic enough to cache."""
        return self.enabled and (temperature == 0 or self.cache_nondeterministic)


def directives(header_value: str | None) -> tuple[bool, bool]:
    """``(lookup, store)`` from a request's Cache-Control header."""
    lookup = store = True
    for part in (header_value or "").split(","):
        name, _, arg = part.strip().lower().partition("=")
        name = name.strip()
        if name == "no-cache" or (name == "max-age" and arg.strip().strip('"') == "0"):
            lookup = False  # the client wants a fresh answer (which may still be stored)
        elif name == "no-store":
            store = False
    return lookup, store


# ---- chat stream helpers -----------------------------------------------------------------------


class ChatRecorder:
    """Collect one streamed answer's chunks; give its completion only if it ended cleanly."""

    def __init__(self) -> None:
        self._chunks: list[dict[str, Any]] = []
        self._finished = False
        self._failed = False

    def add(self, chunk: dict[str, Any]) -> None:
        """Record a chunk as the client saw it (an error chunk spoils the answer)."""
        if not isinstance(chunk, dict) or "error" in chunk:
            self._failed = True
            return
        self._chunks.append(chunk)
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self._finished = True

    def fail(self) -> None:
        """Mark the answer unusable (the stream broke or the client left)."""
        self._failed = True

    def completion(self) -> dict[str, Any] | None:
        """The joined ``chat.completion``, or None when the stream did not finish cleanly."""
        if self._failed or not self._finished:
            return None
        return join_chunks(self._chunks)


def replay_chunks(doc: Mapping[str, Any], piece_chars: int = 512) -> list[dict[str, Any]]:
    """Turn a stored ``chat.completion`` back into OpenAI chunk dicts (without id/created)."""
    choice = doc["choices"][0]
    msg = choice.get("message") or {}
    model = doc.get("model")

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                            "logprobs": None}]}  # fmt: skip
        if model:
            out["model"] = model
        return out

    chunks = []
    content = msg.get("content")
    first: dict[str, Any] = {"role": "assistant"}
    if isinstance(content, str):
        step = max(1, piece_chars)
        pieces = [content[i : i + step] for i in range(0, len(content), step)] or [""]
        first["content"] = pieces[0]
        chunks.append(chunk(first))
        chunks.extend(chunk({"content": p}) for p in pieces[1:])
    else:
        chunks.append(chunk(first))
    if isinstance(choice.get("logprobs"), dict):
        chunks[0]["choices"][0]["logprobs"] = choice["logprobs"]  # every token's, in one chunk
    if isinstance(msg.get("refusal"), str):
        chunks.append(chunk({"refusal": msg["refusal"]}))
    for i, call in enumerate(msg.get("tool_calls") or ()):
        fn = call.get("function") or {}
        chunks.append(chunk({"tool_calls": [{
            "index": i, "id": call.get("id"), "type": call.get("type") or "function",
            "function": {"name": fn.get("name") or "", "arguments": fn.get("arguments") or ""},
        }]}))  # fmt: skip
    chunks.append(chunk({}, choice.get("finish_reason") or "stop"))
    if isinstance(choice.get("stop_reason"), str):
        chunks[-1]["choices"][0]["stop_reason"] = choice["stop_reason"]
    if doc.get("usage"):
        tail: dict[str, Any] = {"choices": [], "usage": doc["usage"]}
        if model:
            tail["model"] = model
        chunks.append(tail)
    return chunks


# ---- the cache ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedEntry:
    """One stored answer."""

    key: str
    kind: str
    body: bytes
    meta: dict[str, Any]
    created: float
    doc: dict[str, Any] | None = field(default=None, compare=False)  # parsed body, chat only


def _checksum(body: bytes, meta: bytes) -> str:
    h = hashlib.blake2b(body, digest_size=16)
    h.update(b"\0")
    h.update(meta)
    return h.hexdigest()


def _decode(key: str, row: sqlite3.Row) -> CachedEntry | str:
    """The entry a row holds, or why it cannot be trusted."""
    kind, body, meta_text, checksum, created = row
    if kind not in KINDS:
        return f"unknown kind {kind!r}"
    if not isinstance(body, bytes):
        return f"body is {type(body).__name__}, not bytes"
    if not isinstance(meta_text, str) or not isinstance(created, (int, float)):
        return "meta or created has the wrong type"
    if checksum != _checksum(body, meta_text.encode()):
        return "checksum mismatch"
    try:
        meta = json.loads(meta_text)
        doc = json.loads(body) if kind == "chat" else None
    except ValueError as e:
        return f"bad JSON: {e}"
    if not isinstance(meta, dict):
        return "meta is not an object"
    if kind == "chat" and not _is_completion(doc):
        return "chat body is not a finished completion"
    return CachedEntry(key, kind, body, meta, float(created), doc)


def _is_completion(doc: Any) -> bool:
    try:
        choice = doc["choices"][0]
        return isinstance(choice["message"], dict) and isinstance(choice["finish_reason"], str)
    except (KeyError, IndexError, TypeError):
        return False


class Flight:
    """A turn at computing one key: identical requests queue and then find the stored answer."""

    def __init__(self, cache: ResponseCache, key: str, timeout_s: float) -> None:
        self._cache = cache
        self.key = key
        self.timeout_s = timeout_s
        self.waited = False  # another request held the key first
        self._held = False
        self._done = False

    def acquire(self) -> Flight:
        """Wait (cooperatively, at most ``timeout_s``) until no identical request is running."""
        slot = self._cache._flights.setdefault(self.key, [gevent.lock.Semaphore(), 0])
        slot[1] += 1
        self.waited = slot[0].locked()
        try:
            # On timeout go ahead anyway: a stuck leader must not stall every follower forever.
            self._held = slot[0].acquire(timeout=self.timeout_s)
        except BaseException:  # killed while waiting: leave no slot behind
            self.release()
            raise
        return self

    def release(self) -> None:
        """Let the next identical request look the key up; safe to call twice."""
        if self._done:
            return
        self._done = True
        slot = self._cache._flights.get(self.key)
        if slot is None:
            return
        if self._held:
            slot[0].release()
        slot[1] -= 1
        if slot[1] <= 0:
            self._cache._flights.pop(self.key, None)

    def __enter__(self) -> Flight:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class ResponseCache:
    """Exact-key answers in SQLite: TTL, LRU bounds, integrity checks, hit statistics."""

    def __init__(
        self,
        db: Database,
        policy: CachePolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        touch_interval_s: float = 30.0,
    ) -> None:
        self.db = db
        self.policy = policy or CachePolicy()
        self._clock = clock
        # Last-use times of hits wait here and go out in one write at most this often (or with the
        # next put, which evicts): LRU order within that window is approximate across restarts only.
        self.touch_interval_s = touch_interval_s
        self._touches: dict[str, float] = {}
        self._touch_lock = _allocate_lock()
        self._last_flush = clock()
        self._flights: dict[str, list[Any]] = {}
        self.hits = self.misses = self.stores = self.evictions = self.dropped = 0

    # -- reading --

    def _lookup(self, key: str) -> CachedEntry | None:
        try:
            with self.db.read() as r:
                row = r.execute(
                    "SELECT kind, body, meta, checksum, created FROM response_cache WHERE key = ?",
                    [key],
                ).fetchone()
        except (sqlite3.Error, HooshError) as e:
            log.warning("cache lookup failed: %s", e)
            return None
        if row is None:
            return None
        entry = _decode(key, row)
        if isinstance(entry, str):
            self._drop(key, row["checksum"], entry)
            return None
        now = self._clock()
        if now - entry.created >= self.policy.ttl_s:
            return None  # expired: the next put sweeps it
        self._touch(key, now)
        return entry

    def get(self, key: str) -> CachedEntry | None:
        """The stored answer for ``key``, or None (missing, expired, corrupt, cache off)."""
        if not self.policy.enabled:
            return None
        entry = self._lookup(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def get_chat(self, key: str) -> dict[str, Any] | None:
        """A stored ``chat.completion`` (a fresh dict: stamp id and created on it), or None."""
        entry = self.get(key)
        return entry.doc if entry is not None and entry.kind == "chat" else None

    def inflight(self, key: str, timeout_s: float = 300.0) -> Flight:
        """Context manager: one greenlet at a time computes ``key``; the others then hit."""
        return Flight(self, key, timeout_s)

    # -- writing --

    def put(self, key: str, kind: str, body: bytes, meta: Mapping[str, Any]) -> bool:
        """Store a finished answer; False when the cache is off, it is too big, or the write failed."""
        if kind not in KINDS:
            raise ValueError(f"cache kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"cache body must be bytes, not {type(body).__name__}")
        if not self.policy.enabled:
            return False
        body = bytes(body)
        meta_text = json.dumps(dict(meta), sort_keys=True, separators=(",", ":"))
        meta_bytes = meta_text.encode()
        size = len(body) + len(meta_bytes)
        if size > self.policy.max_bytes:
            log.info("cache: a %d-byte %s answer is larger than max_bytes; not stored", size, kind)
            return False
        now = self._clock()
        row = [key, kind, str(meta.get("provider") or ""), str(meta.get("model") or ""), body,
               meta_text, size, _checksum(body, meta_bytes), now, now]  # fmt: skip
        try:
            with self.db.write() as w:
                self._flush_touches(w)
                w.execute(
                    "DELETE FROM response_cache WHERE created <= ?", [now - self.policy.ttl_s]
                )
                w.execute(
                    "INSERT INTO response_cache (key, kind, provider, model, body, meta, size, "
                    "checksum, created, last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, "
                    "provider = excluded.provider, model = excluded.model, body = excluded.body, "
                    "meta = excluded.meta, size = excluded.size, checksum = excluded.checksum, "
                    "created = excluded.created, last_used = excluded.last_used",
                    row,
                )
                evicted = self._evict(w, key)
        except (sqlite3.Error, HooshError) as e:
            log.warning("cache store failed: %s", e)
            return False
        self.stores += 1
        self.evictions += evicted
        return True

    def put_chat(
        self, key: str, doc: Mapping[str, Any] | None, *, provider: str, model: str
    ) -> bool:
        """Store a finished ``chat.completion`` (None or an unfinished answer is ignored)."""
        if doc is None or "error" in doc or not _is_completion(doc):
            return False
        stored = {k: v for k, v in doc.items() if k not in ("id", "created")}
        usage = stored.get("usage")
        if isinstance(usage, dict) and "cost_usd" in usage:
            # What the first call cost is bookkeeping, not part of the answer: a hit costs nothing.
            stored["usage"] = {k: v for k, v in usage.items() if k != "cost_usd"}
        text = json.dumps(stored, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        try:
            body = text.encode()
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape: not worth keeping
            return False
        meta = {"provider": provider, "model": model, "content_type": "application/json",
                "usage": stored.get("usage")}  # fmt: skip
        return self.put(key, "chat", body, meta)

    def _evict(self, w: Any, keep: str) -> int:
        """Delete least-recently-used rows (never ``keep``) until both bounds hold."""
        entries, total = w.execute(
            "SELECT entries, bytes FROM response_cache_totals WHERE id = 1"
        ).fetchone()
        max_entries, max_bytes = self.policy.max_entries, self.policy.max_bytes
        if entries <= max_entries and total <= max_bytes:
            return 0
        victims = []
        cur = w.execute(
            "SELECT key, size FROM response_cache WHERE key != ? ORDER BY last_used, rowid", [keep]
        )
        for victim, size in cur:
            if entries <= max_entries and total <= max_bytes:
                break
            victims.append((victim,))
            entries -= 1
            total -= size
        cur.close()
        w.conn.executemany("DELETE FROM response_cache WHERE key = ?", victims)
        return len(victims)

    def _touch(self, key: str, now: float) -> None:
        with self._touch_lock:
            self._touches[key] = now
            # A clock set back (no RTC, then NTP) must not postpone the flush until it catches up.
            due = not 0 <= now - self._last_flush < self.touch_interval_s
        if due:
            try:
                with self.db.write() as w:
                    self._flush_touches(w)
            except (sqlite3.Error, HooshError) as e:
                log.warning("cache: recording last use failed: %s", e)

    def _flush_touches(self, w: Any) -> None:
        with self._touch_lock:
            pending, self._touches = self._touches, {}
            self._last_flush = self._clock()
        if pending:
            w.conn.executemany(
                "UPDATE response_cache SET last_used = ? WHERE key = ? AND last_used < ?",
                [(t, k, t) for k, t in pending.items()],
            )

    def _drop(self, key: str, checksum: Any, reason: str) -> None:
        log.warning("cache entry %s… dropped: %s", key[:16], reason)
        self.dropped += 1
        try:
            with self.db.write() as w:
                # Only the row we judged: a fresh put may have replaced it meanwhile.
                w.execute(
                    "DELETE FROM response_cache WHERE key = ? AND checksum IS ?", [key, checksum]
                )
        except (sqlite3.Error, HooshError) as e:
            log.warning("cache: dropping a bad entry failed: %s", e)

    # -- admin --

    def stats(self) -> dict[str, Any]:
        """Entries, bytes and per-kind counts on disk; hits and misses since this process started."""
        cutoff = self._clock() - self.policy.ttl_s
        with self.db.read() as r:
            entries, total = r.execute(
                "SELECT entries, bytes FROM response_cache_totals WHERE id = 1"
            ).fetchone()
            expired = r.execute(
                "SELECT COUNT(*) FROM response_cache WHERE created <= ?", [cutoff]
            ).fetchone()[0]
            kinds = {k: {"entries": n, "bytes": b} for k, n, b in r.execute(
                "SELECT kind, COUNT(*), SUM(size) FROM response_cache GROUP BY kind")}  # fmt: skip
        looked = self.hits + self.misses
        return {
            "enabled": self.policy.enabled,
            "entries": entries,
            "bytes": total,
            "expired": expired,
            "by_kind": kinds,
            "max_entries": self.policy.max_entries,
            "max_bytes": self.policy.max_bytes,
            "ttl_s": self.policy.ttl_s,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / looked, 4) if looked else 0.0,
            "stores": self.stores,
            "evictions": self.evictions,
            "dropped": self.dropped,
        }

    def clear(self, model: str | None = None) -> int:
        """Delete every entry, or those of one model (``name`` or ``provider/name``); the count."""
        with self.db.write() as w:
            self._flush_touches(w)
            if model is None:
                cur = w.execute("DELETE FROM response_cache")
            else:
                cur = w.execute(
                    "DELETE FROM response_cache WHERE model = ? OR provider || '/' || model = ?",
                    [model, model],
                )
            return cur.rowcount

    def flush(self) -> None:
        """Write out pending last-use times (at shutdown; they only order eviction)."""
        with self.db.write() as w:
            self._flush_touches(w)
