"""Persistent response cache: finished answers kept in the gateway's SQLite file.

What may be cached and under which key is ``cache_policy``; this module is the store. It keeps
only what it is handed — the pipeline hands it finished answers only (for chat the joined
``chat.completion``, see ``formats.openai_replay``).

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
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gevent.lock

from hoosh_edge.books.cache_policy import (
    CachePolicy,
    canonical_json,
    chat_key,
    embedding_key,
    speech_key,
    transcription_key,
)
from hoosh_edge.books.db import Database
from hoosh_edge.errors import HooshError
from hoosh_edge.workers import native_lock

# The policy and key builders are re-exported: callers have long found them here.
__all__ = [
    "CachePolicy",
    "CachedEntry",
    "Flight",
    "ResponseCache",
    "canonical_json",
    "chat_key",
    "embedding_key",
    "speech_key",
    "transcription_key",
]

log = logging.getLogger(__name__)

KINDS = ("chat", "speech", "transcription", "embedding")

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
        self._touch_lock = native_lock()
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
