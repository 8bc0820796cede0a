"""Stored /v1/responses answers: bounded in number and bytes, forgotten after a TTL, per key.

A record holds the response object as the client saw it, the input items of its request (for
``GET /v1/responses/{id}/input_items``) and the whole conversation up to and including its answer
in the gateway's chat form, so ``previous_response_id`` continues it without walking a chain.
The scope is the key's name (``""`` when keys are off): a key never sees another key's record,
and asking for one is the same "not found" as asking for one that never existed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from hoosh_edge.books.db import Database


@dataclass(frozen=True)
class StoredResponse:
    """One stored answer and what it was an answer to."""

    id: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    messages: list[dict[str, Any]]


def scope_of(key_name: str | None) -> str:
    """The store's scope for a caller: its key's name, or the one shared scope without keys."""
    return key_name or ""


class ResponseStore:
    """The ``stored_responses`` table: put, get and delete within a scope."""

    def __init__(self, db: Database, *, max_stored: int, ttl_s: float,
                 max_bytes: int = 256 << 20) -> None:  # fmt: skip
        self.db = db
        self.max_stored = max_stored
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes

    def put(self, scope: str, record: StoredResponse) -> None:
        """Keep ``record``; the expired, then the oldest beyond the bounds, leave in that write."""
        texts = (_dump(record.response), _dump(record.input_items), _dump(record.messages))
        size = sum(len(t.encode()) for t in texts)
        if self.max_stored <= 0 or size > self.max_bytes:
            return  # kept nowhere: a later retrieve is a plain "not found"
        now = time.time()
        # Not fsynced (a response is not money): it survives the process, and the next durable
        # write of the books makes it safe from a power cut too; the fsync would double a
        # call's time through the gateway.
        with self.db.write(durable=False) as w:
            w.execute("INSERT OR REPLACE INTO stored_responses (id, scope, created, expires, "
                      "response, input_items, messages, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (record.id, scope, now, now + self.ttl_s, *texts, size))  # fmt: skip
            w.execute("DELETE FROM stored_responses WHERE expires <= ?", [now])
            # The newest first: what is past the count or the byte bound leaves.
            w.execute(
                "DELETE FROM stored_responses WHERE id IN (SELECT id FROM (SELECT id, "
                "row_number() OVER w AS n, sum(size) OVER w AS running FROM stored_responses "
                "WINDOW w AS (ORDER BY created DESC, id)) WHERE n > ? OR running > ?)",
                [self.max_stored, self.max_bytes],
            )

    def get(self, scope: str, response_id: str) -> StoredResponse | None:
        """The live record ``response_id`` of ``scope``, or None."""
        with self.db.read() as r:
            row = r.execute(
                "SELECT id, response, input_items, messages FROM stored_responses "
                "WHERE id = ? AND scope = ? AND expires > ?",
                [response_id, scope, time.time()],
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], json.loads(row[1]), json.loads(row[2]), json.loads(row[3]))

    def delete(self, scope: str, response_id: str) -> bool:
        """Forget ``response_id`` of ``scope``; False when there was no such live record."""
        with self.db.write() as w:
            cur = w.execute(
                "DELETE FROM stored_responses WHERE id = ? AND scope = ? AND expires > ?",
                [response_id, scope, time.time()],
            )
            return cur.rowcount > 0

    def count(self) -> int:
        """Records held (expired ones included until the next write sweeps them)."""
        with self.db.read() as r:
            return r.execute("SELECT count(*) FROM stored_responses").fetchone()[0]


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
