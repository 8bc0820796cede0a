"""Boxes sharing the books: each holds a lease, and a dead box's reservations are booked.

On one box a dead process is known by its pid; across boxes it is not, so every gateway on a
shared database renews a row in ``boxes`` every ``lease_s / 3`` seconds. A reservation whose owner
has no lease, or one older than ``lease_s``, belongs to a box that died (``kill -9``, power cut,
a cable pulled): whichever box notices first books it at its reserved amount as ``orphaned``, as
a restart does on one box (``orphans.py``). A box cut off from the database longer than its lease
may find its reservations booked when it comes back; its commit then writes the real row too, so
the books err on the side of having spent more, never less. Leases are stamped and judged by the
database server's clock, never a box's own.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import gevent

from hoosh_edge.books.orphans import DB_NOW_US, settle_orphans
from hoosh_edge.errors import StorageUnavailable

log = logging.getLogger("hoosh_edge.books.fleet")


def renew(database: Any, me: str) -> None:
    """Write (or refresh) this box's lease."""
    with database.write() as db:
        db.execute(
            f"INSERT INTO boxes (owner, host, started_at, seen_at) "
            f"VALUES (?, ?, {DB_NOW_US}, {DB_NOW_US}) "
            "ON CONFLICT (owner) DO UPDATE SET seen_at = EXCLUDED.seen_at",
            [me, socket.gethostname()],
        )


class Lease:
    """Renews this box's lease and books dead boxes' reservations, until stopped."""

    def __init__(self, ledger: Any, me: str, lease_s: float) -> None:
        self.ledger = ledger
        self.me = me
        self.lease_s = lease_s
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Take the lease now (before any reservation), then keep it in the background."""
        renew(self.ledger.db, self.me)
        self._greenlet = gevent.spawn(self._run)

    def tick(self) -> int:
        """One renewal and one settlement; returns how many reservations were booked."""
        renew(self.ledger.db, self.me)
        settled = settle_orphans(self.ledger)
        if settled:
            log.warning("fleet: booked %d reservation(s) of a box whose lease ran out", settled)
        return settled

    def _run(self) -> None:
        while True:
            gevent.sleep(self.lease_s / 3)
            try:
                self.tick()
            except StorageUnavailable:
                pass  # the books' state says so; the next tick tries again
            except Exception:  # noqa: BLE001 - the lease must outlive one bad tick
                log.exception("fleet: lease renewal failed")

    def stop(self) -> None:
        """Stop renewing and give the lease up (a clean stop leaves no reservation behind)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
            self._greenlet = None
        try:
            with self.ledger.db.write() as db:
                db.execute("DELETE FROM boxes WHERE owner = ?", [self.me])
        except StorageUnavailable:
            pass


def open_shared_books(cfg: Any) -> Any:
    """``PgDatabase.open`` for a ``[database]`` table; a missing driver is said in one sentence."""
    try:
        from hoosh_edge.books.pg import PgDatabase
    except ImportError as e:
        raise ValueError(
            f"[database] needs the PostgreSQL driver, which is not installed ({e}): "
            "pip install 'psycopg[binary]' (the 'postgres' extra of hoosh-edge)"
        ) from None
    return PgDatabase.open(cfg.url, password=cfg.password, connect_timeout_s=cfg.connect_timeout_s,
                           lease_s=cfg.lease_s)  # fmt: skip
