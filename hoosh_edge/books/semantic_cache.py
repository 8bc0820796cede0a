"""The semantic cache's store: a vector per stored chat answer, found again by similarity.

A row ties the embedding of a request's last user message to the ``response_cache`` row that
holds its answer, under a *scope*: the exact hash of everything else in the request (the target,
the other messages, every option) and of the embedding model. A lookup compares the new vector
with the scope's rows only (cosine of unit vectors: a dot product), so a hit can differ from the
earlier request in the last user message's wording and nowhere else. The answer itself stays in
the response cache, with its TTL, bounds and integrity checks; a row whose answer is gone is
dropped when met. Rows are bounded by ``[cache] semantic.max_entries`` (least recently used go).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hoosh_edge.books.cache_policy import CachePolicy
from hoosh_edge.books.db import Database
from hoosh_edge.errors import HooshError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SemanticMatch:
    """The closest earlier request in a scope: its row, its answer's key and how alike it is."""

    row_id: int
    answer_key: str
    similarity: float


def _unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype="<f4").ravel()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


class SemanticCache:
    """Vectors in SQLite, compared in numpy; the policy is read live from the response cache."""

    def __init__(self, db: Database, policy: Callable[[], CachePolicy],
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.db = db
        self._policy = policy
        self._clock = clock
        self.hits = self.misses = self.stores = 0

    def best(self, scope: str, vector: np.ndarray) -> SemanticMatch | None:
        """The most similar row of ``scope`` at or above ``min_similarity`` (within the TTL)."""
        policy = self._policy()
        if policy.semantic is None or not policy.enabled:
            return None
        v = _unit(vector)
        cutoff = self._clock() - policy.ttl_s
        try:
            with self.db.read() as r:
                rows = r.execute(
                    "SELECT id, answer_key, vector FROM semantic_cache WHERE scope = ? "
                    "AND created > ?", [scope, cutoff]).fetchall()  # fmt: skip
        except (sqlite3.Error, HooshError) as e:
            log.warning("semantic cache lookup failed: %s", e)
            return None
        rows = [row for row in rows if isinstance(row[2], bytes) and len(row[2]) == v.nbytes]
        if not rows:
            self.misses += 1
            return None
        matrix = np.frombuffer(b"".join(row[2] for row in rows), dtype="<f4").reshape(len(rows), -1)
        sims = matrix @ v
        i = int(np.argmax(sims))
        if float(sims[i]) < policy.semantic.min_similarity:
            self.misses += 1
            return None
        self.hits += 1
        return SemanticMatch(int(rows[i][0]), str(rows[i][1]), float(sims[i]))

    def used(self, match: SemanticMatch) -> None:
        """Record that a match was served (it orders eviction)."""
        try:
            with self.db.write() as w:
                w.execute("UPDATE semantic_cache SET last_used = ? WHERE id = ?",
                          [self._clock(), match.row_id])  # fmt: skip
        except (sqlite3.Error, HooshError) as e:
            log.warning("semantic cache: recording a hit failed: %s", e)

    def forget(self, match: SemanticMatch) -> None:
        """Drop a row whose answer the response cache no longer holds."""
        try:
            with self.db.write() as w:
                w.execute("DELETE FROM semantic_cache WHERE id = ?", [match.row_id])
        except (sqlite3.Error, HooshError) as e:
            log.warning("semantic cache: dropping a stale row failed: %s", e)

    def put(self, scope: str, vector: np.ndarray, answer_key: str, model: str) -> bool:
        """Keep the vector of a stored answer; evict past ``max_entries``. False if not kept."""
        policy = self._policy()
        if policy.semantic is None or not policy.enabled:
            return False
        now = self._clock()
        blob = _unit(vector).tobytes()
        try:
            with self.db.write() as w:
                w.execute("DELETE FROM semantic_cache WHERE scope = ? AND answer_key = ?",
                          [scope, answer_key])  # fmt: skip
                w.execute("DELETE FROM semantic_cache WHERE created <= ?", [now - policy.ttl_s])
                w.execute(
                    "INSERT INTO semantic_cache (scope, answer_key, model, vector, created, "
                    "last_used) VALUES (?, ?, ?, ?, ?, ?)", [scope, answer_key, model, blob, now, now])  # fmt: skip
                count = w.execute("SELECT COUNT(*) FROM semantic_cache").fetchone()[0]
                extra = count - policy.semantic.max_entries
                if extra > 0:
                    w.execute(
                        "DELETE FROM semantic_cache WHERE id IN (SELECT id FROM semantic_cache "
                        "ORDER BY last_used, id LIMIT ?)", [extra])  # fmt: skip
        except (sqlite3.Error, HooshError) as e:
            log.warning("semantic cache store failed: %s", e)
            return False
        self.stores += 1
        return True

    def stats(self) -> dict[str, object]:
        """Rows on disk and the bound; hits, misses and stores since this process started."""
        policy = self._policy().semantic
        with self.db.read() as r:
            entries = int(r.execute("SELECT COUNT(*) FROM semantic_cache").fetchone()[0])
        return {"enabled": policy is not None, "entries": entries,
                "max_entries": policy.max_entries if policy else None,
                "min_similarity": policy.min_similarity if policy else None,
                "hits": self.hits, "misses": self.misses, "stores": self.stores}  # fmt: skip

    def clear(self) -> int:
        """Delete every row; the count."""
        with self.db.write() as w:
            return w.execute("DELETE FROM semantic_cache").rowcount
