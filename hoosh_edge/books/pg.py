"""The books in PostgreSQL, for several boxes sharing one ledger, one rulebook and one set of keys.

``PgDatabase`` keeps the interface of ``db.Database`` (``write()``, ``read()``, ``state``,
``migrate()``), so the stores run unchanged on either engine; ``sql.py`` turns their SQLite
dialect into PostgreSQL's. Every write transaction first takes one transaction-level advisory
lock, the same guarantee ``BEGIN IMMEDIATE`` gives on SQLite: a read-then-write (a reservation
checking its rules' room) can never be overtaken by another box between its read and its write,
so concurrent calls on different gateways never together cross a ``block`` rule. A commit
returns only once PostgreSQL has made it durable (``synchronous_commit`` left on).

An unreachable or failing server is a storage fault like a full disk: ``StorageUnavailable``
(503, paid calls refused, free on-device calls served), remembered in ``state`` until a write
succeeds again. A broken connection is dropped and opened afresh on the next use, so the box
recovers without a restart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import psycopg.waiting
from gevent._hub_local import get_hub_if_exists

from hoosh_edge.books import storage
from hoosh_edge.books.db import Database
from hoosh_edge.books.migrations import Migration
from hoosh_edge.books.pg_migrations import PG_MIGRATIONS
from hoosh_edge.books.sql import PgSession
from hoosh_edge.errors import StorageUnavailable
from hoosh_edge.workers import native_lock

# The one lock every write transaction of the books holds (an arbitrary constant, "hoosh"), and
# the shared cache's own (its writes never wait behind a reservation, nor a reservation on them).
WRITE_LOCK = 0x686F6F7368
CACHE_LOCK = 0x686F6F7369
STATEMENT_TIMEOUT_MS = 10_000


class _Connection(psycopg.Connection):
    """A connection that waits in C on threads with no gevent hub (the books pool's).

    Under monkey-patching psycopg waits through gevent everywhere, which a greenlet on the hub's
    thread needs; an OS thread of the books pool has nothing to yield to, and the C wait costs
    it a fraction of the CPU.
    """

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if _wait_c is not None and get_hub_if_exists() is None:
            return _wait_c(gen, self.pgconn.socket, interval=interval, timeout=timeout)
        return super().wait(gen, interval=interval, timeout=timeout)


_wait_c = getattr(psycopg.waiting, "wait_c", None)  # only with the binary or C build


def _where(url: str) -> str:
    """``host:port/db`` of a URL, for messages (never the user or a password)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


class PgDatabase:
    """The shared books: one write and one read connection, each behind an OS lock."""

    shared = True
    synchronous = "FULL"  # what the Accountant asks: commits are durable

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        connect_timeout_s: float = 3.0,
        lease_s: float = 30.0,
        lock_key: int = WRITE_LOCK,
    ) -> None:
        self.url = url
        self.lock_key = lock_key
        self.lease_s = lease_s  # a box silent this long is dead (fleet.py)
        self.password = password
        self.connect_timeout_s = connect_timeout_s
        self.where = _where(url)
        self.folder = f"PostgreSQL {self.where}"  # what storage messages name
        self.state = storage.StorageState(self.folder)  # type: ignore[arg-type]
        self._wlock = native_lock()
        self._rlock = native_lock()
        self._wconn: psycopg.Connection | None = None
        self._rconn: psycopg.Connection | None = None

    _locked = Database._locked  # the same cooperative wait for the in-process lock

    @classmethod
    def open(
        cls,
        url: str,
        *,
        password: str | None = None,
        connect_timeout_s: float = 3.0,
        lease_s: float = 30.0,
        migrations: list[Migration] | None = None,
    ) -> PgDatabase:
        """Connect and apply pending migrations (two boxes starting at once apply each once)."""
        database = cls(url, password=password, connect_timeout_s=connect_timeout_s,
                       lease_s=lease_s)  # fmt: skip
        try:
            database.migrate(PG_MIGRATIONS if migrations is None else migrations)
        except BaseException:
            database.close()
            raise
        return database

    def _connect(self) -> psycopg.Connection:
        kwargs: dict[str, Any] = {
            "autocommit": True,  # transactions are ours: conn.transaction() below
            "connect_timeout": max(1, round(self.connect_timeout_s)),
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            "application_name": "hoosh-edge",
        }
        if self.password is not None:
            kwargs["password"] = self.password
        return _Connection.connect(self.url, **kwargs)

    def _fault(self, exc: BaseException) -> StorageUnavailable:
        """The error a caller sees when the server cannot be used."""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StorageUnavailable(
            f"The books' database ({self.folder}) cannot be used: {reason}. Paid calls are "
            "refused until it answers again; check that the server runs and is reachable."
        )

    @contextlib.contextmanager
    def _session(
        self, role: str, lock: Any, *, write: bool, durable: bool = True
    ) -> Iterator[PgSession]:
        with self._locked(lock):
            conn = getattr(self, role)
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                    setattr(self, role, conn)
                with conn.transaction():
                    session = PgSession(conn)
                    if write:
                        session.execute("SELECT pg_advisory_xact_lock(?)", [self.lock_key])
                        if not durable:
                            # Free on-device usage: safe from the death of a box, and flushed
                            # by the server within a fraction of a second; no wait for it here.
                            session.execute("SET LOCAL synchronous_commit = off")
                    else:
                        session.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    yield session
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                # The connection may be half dead: drop it, the next use opens a new one.
                with contextlib.suppress(Exception):
                    conn.close()  # type: ignore[union-attr]
                setattr(self, role, None)
                raise self._fault(e) from e

    @contextlib.contextmanager
    def write(self, *, durable: bool = True) -> Iterator[PgSession]:
        """One transaction holding the books' write lock: committed on success, else rolled back.

        ``durable=False`` (free on-device usage) does not wait for the server's disk, as on SQLite.
        """
        try:
            with self._session("_wconn", self._wlock, write=True, durable=durable) as session:
                yield session
        except StorageUnavailable as problem:
            self.state.failed(problem)
            raise
        self.state.succeeded()

    @contextlib.contextmanager
    def read(self) -> Iterator[PgSession]:
        """A consistent snapshot of committed data (never waits for a writer).

        A server that cannot be read cannot be written either: the state says so at once, so
        a paid call is not admitted on the strength of an earlier success.
        """
        try:
            with self._session("_rconn", self._rlock, write=False) as session:
                yield session
        except StorageUnavailable as problem:
            self.state.failed(problem)
            raise

    def close(self) -> None:
        """Close both connections."""
        for role, lock in (("_wconn", self._wlock), ("_rconn", self._rlock)):
            with self._locked(lock):
                conn = getattr(self, role)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                setattr(self, role, None)

    def sibling(self, lock_key: int) -> PgDatabase:
        """The same database on connections of its own, writing under another lock (the cache)."""
        return PgDatabase(self.url, password=self.password, connect_timeout_s=self.connect_timeout_s,
                          lease_s=self.lease_s, lock_key=lock_key)  # fmt: skip

    def ping(self) -> float:
        """Seconds one round trip takes (for the doctor and tests)."""
        start = time.monotonic()
        with self.read() as db:
            db.execute("SELECT 1").fetchone()
        return time.monotonic() - start

    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded in ``_migrations``, in the order they ran."""
        with self.read() as db:
            if not db.execute("SELECT to_regclass('_migrations') IS NOT NULL").fetchone()[0]:
                return []
            return [row["name"] for row in db.execute("SELECT name FROM _migrations ORDER BY id")]

    def migrate(self, migrations: list[Migration]) -> list[str]:
        """Apply, each in its own transaction under the write lock, those not yet recorded."""
        names = [m.name for m in migrations]
        if len(set(names)) != len(names):
            raise ValueError("migration names must be unique")
        with self.write() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (id BIGSERIAL PRIMARY KEY, "
                "name TEXT NOT NULL UNIQUE, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
        applied: list[str] = []
        for migration in migrations:
            with self.write() as db:
                # Checked under the advisory lock: a second box starting now waits, then skips.
                if db.execute(
                    "SELECT 1 FROM _migrations WHERE name = ?", [migration.name]
                ).fetchone():
                    continue
                if callable(migration.step):
                    migration.step(db)  # type: ignore[arg-type]
                else:
                    db.raw(migration.step)
                db.execute("INSERT INTO _migrations (name) VALUES (?)", [migration.name])
            applied.append(migration.name)
        return applied
