"""Usage the books could not take while the disk was full, kept until it takes writes again.

When a commit (or a release) fails with ``StorageUnavailable``, the call has already been served:
its usage is queued here, in memory, and written by the next commit that succeeds — the first
sign that space is back — or at shutdown. The queue is bounded (``MAX_PENDING``); past that the
oldest record is dropped and counted (``dropped``), with a warning at the first drop and then
every thousandth. What is still queued when the process stops is lost, and the shutdown log says
how much.

A paid call's reservation stays in the database while its commit waits here, so the budget it
held stays held: the books err on the side of having spent more, never less.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any

from hoosh_edge.errors import StorageUnavailable
from hoosh_edge.workers import native_lock

log = logging.getLogger("hoosh_edge.books.storage")

MAX_PENDING = 10_000


@dataclass
class PendingEntry:
    """One commit (``actual`` set) or release (``actual`` None) the books could not take."""

    reservation: Any
    actual: Any
    provider: str
    model: str


class PendingBooks:
    """A bounded FIFO of ledger writes waiting for the disk."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self._queue: collections.deque[PendingEntry] = collections.deque()
        self._lock = native_lock()
        self.dropped = 0
        self.written = 0

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, entry: PendingEntry) -> None:
        """Queue a write; past the bound drop the oldest, with a counted warning."""
        with self._lock:
            if len(self._queue) >= self.limit:
                lost = self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("storage: %d usage record(s) dropped so far (%d wait in memory); "
                                "latest: %s:%s", self.dropped, len(self._queue), lost.provider,
                                lost.model)  # fmt: skip
            self._queue.append(entry)

    def flush(self, ledger: Any) -> int:
        """Write what waits, oldest first; stop at the first storage fault. Returns how many."""
        done = 0
        while True:
            with self._lock:
                if not self._queue:
                    break
                entry = self._queue.popleft()
            try:
                if entry.actual is None:
                    ledger.release(entry.reservation)
                else:
                    ledger.commit(entry.reservation, entry.actual)
            except StorageUnavailable:
                with self._lock:
                    self._queue.appendleft(entry)
                break
            except Exception:  # noqa: BLE001 - one bad record must not keep the others out
                log.exception("storage: a queued usage record could not be written; dropped")
                self.dropped += 1
                continue
            done += 1
        self.written += done
        if done:
            log.warning("storage: wrote %d usage record(s) that waited for the disk", done)
        return done

    def report(self) -> dict[str, int]:
        """Counts for ``/v1/health`` and ``/metrics``."""
        return {"pending_usage": len(self._queue), "dropped_usage": self.dropped}
