"""The gateway's one SQLite file: opening, pragmas, serialized writes and named migrations.

Everything the gateway must remember lives in ``<data_dir>/hoosh-edge.db``. The file is opened in
WAL mode so readers never wait for the writer, and every commit is durable before ``write()``
returns: ``synchronous=FULL`` by default, because on an edge box a power cut is an ordinary event
and WAL with ``NORMAL`` only survives the death of the process, not of the machine.

Writes are serialized twice. Inside the process a real OS lock (not a gevent one: some writers run
in gevent's threadpool, which gevent locks do not guard) admits one writer at a time to the single
write connection; across processes (the CLI, a second server by mistake) ``BEGIN IMMEDIATE`` takes
SQLite's write lock up front, so a read-then-write transaction can never be overtaken between its
read and its write.

This is the boundary where storage faults get their name: a write the disk cannot take (full,
read-only, failing, damaged) leaves ``write()`` as ``StorageUnavailable`` naming the folder, and
``state`` remembers it until the next write that commits (see ``storage.py``). ``open()`` checks
the folder and an existing file first, so a damaged database stops start-up without being touched.

Migrations are append-only and named (``migrations.py``); ``_migrations`` records which ran.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.monkey
import greenlet
import sqlite_utils
from gevent._hub_local import get_hub_if_exists

from hoosh_edge.books import storage
from hoosh_edge.books.migrations import MIGRATIONS, Migration
from hoosh_edge.errors import ServiceUnavailable
from hoosh_edge.workers import native_lock

__all__ = ["DB_FILENAME", "MIGRATIONS", "Database", "Migration"]

DB_FILENAME = "hoosh-edge.db"
BUSY_TIMEOUT_S = 10.0

_get_ident = gevent.monkey.get_original("_thread", "get_ident")


def _holder() -> tuple[int, int]:
    """Identify the current writer: OS thread plus greenlet (greenlets share a thread)."""
    return (_get_ident(), id(greenlet.getcurrent()))


class Database:
    """The gateway database: one write connection behind an OS lock, one read connection."""

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.synchronous = synchronous.upper()
        # One shared connection per role, guarded by a lock, rather than one per thread: under
        # gevent, thread-locals are greenlet-locals, which would open a connection per request.
        self._wconn = self._connect()
        self.db = sqlite_utils.Database(self._wconn, execute_plugins=False)
        self.db.enable_wal()
        self._rconn = self._connect()
        self.reader = sqlite_utils.Database(self._rconn, execute_plugins=False)
        # Real OS locks even after monkey.patch_all(): writers may be greenlets or pool threads.
        self._wlock = native_lock()
        self._rlock = native_lock()
        self._writer: tuple[int, int] | None = None
        self.folder = self.path.parent.absolute()  # what messages name, whatever the cwd
        self.state = storage.StorageState(self.folder)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the driver never opens transactions behind our back; we BEGIN.
        conn = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.row_factory = sqlite3.Row
        return conn

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        migrations: list[Migration] | None = None,
        synchronous: str = "FULL",
    ) -> Database:
        """Open (creating if needed) ``<data_dir>/hoosh-edge.db`` and apply pending migrations."""
        directory = Path(data_dir).absolute()  # messages name the real folder, not "data"
        storage.prepare_data_dir(directory)
        path = directory / DB_FILENAME
        storage.check_database_file(path)
        try:
            database = cls(path, synchronous=synchronous)
        except (sqlite3.Error, OSError) as e:
            problem = storage.classify(e, directory)
            if problem is None:
                raise
            raise problem from None
        try:
            database.migrate(MIGRATIONS if migrations is None else migrations)
        except BaseException:
            database.close()
            raise
        return database

    def close(self) -> None:
        """Close both connections."""
        with self._locked(self._wlock):
            self._wconn.close()
        with self._locked(self._rlock):
            self._rconn.close()

    @contextlib.contextmanager
    def _locked(self, lock: object) -> Iterator[None]:
        """Hold ``lock`` without ever freezing the gevent hub forever."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        if not lock.acquire(False):  # type: ignore[attr-defined]
            hub = get_hub_if_exists()
            if hub is not None and greenlet.getcurrent() is not hub:
                # The holder may be another greenlet of this very thread, parked inside its
                # transaction; blocking the thread would deadlock it, so wait cooperatively.
                while not lock.acquire(False):  # type: ignore[attr-defined]
                    if time.monotonic() > deadline:
                        raise ServiceUnavailable("The database is busy; try again.")
                    gevent.sleep(0.001)
            elif not lock.acquire(True, BUSY_TIMEOUT_S):  # type: ignore[attr-defined]
                raise ServiceUnavailable("The database is busy; try again.")
        try:
            yield
        finally:
            lock.release()  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def write(self, *, durable: bool = True) -> Iterator[sqlite_utils.Database]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error.

        ``durable=False`` commits with ``synchronous=NORMAL`` (no fsync): it still survives the
        death of the process, and the next durable commit makes it safe from power loss too. For
        records that cost nothing to lose on a power cut (free on-device usage).

        A storage fault raises ``StorageUnavailable`` and marks ``state``; a commit clears it.
        """
        try:
            with self._transaction(durable) as db:
                yield db
        except (sqlite3.Error, OSError) as e:
            problem = storage.classify(e, self.folder)
            if problem is None:
                raise
            self.state.failed(problem)
            raise problem from e
        self.state.succeeded()

    @contextlib.contextmanager
    def _transaction(self, durable: bool) -> Iterator[sqlite_utils.Database]:
        me = _holder()
        if self._writer == me:
            raise RuntimeError("Database.write() is not reentrant: finish the outer transaction")
        relax = not durable and self.synchronous != "NORMAL"
        with self._locked(self._wlock):
            self._writer = me
            if relax:
                self._wconn.execute("PRAGMA synchronous = NORMAL")
            try:
                self._wconn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                except BaseException:
                    self._rollback()
                    raise
                try:
                    self._wconn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            finally:
                if relax:
                    self._wconn.execute(f"PRAGMA synchronous = {self.synchronous}")
                self._writer = None

    def _rollback(self) -> None:
        """Undo the open transaction; a failing disk must not hide the error that got us here."""
        if self._wconn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.execute("ROLLBACK")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite_utils.Database]:
        """A consistent snapshot of committed data (WAL: never waits for the writer)."""
        try:
            with self._locked(self._rlock):
                self._rconn.execute("BEGIN")
                try:
                    yield self.reader
                finally:
                    if self._rconn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._rconn.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as e:
            problem = storage.classify(e, self.folder)
            if problem is None:
                raise
            raise problem from e

    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded in ``_migrations``, in the order they ran."""
        with self.read() as db:
            if "_migrations" not in db.table_names():
                return []
            return [row["name"] for row in db.query("SELECT name FROM _migrations ORDER BY id")]

    def migrate(self, migrations: list[Migration]) -> list[str]:
        """Apply, each in its own transaction, the migrations not yet recorded; return their names."""
        names = [m.name for m in migrations]
        if len(set(names)) != len(names):
            raise ValueError("migration names must be unique")
        with self.write() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations ("
                "id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at TEXT NOT NULL)"
            )
        applied: list[str] = []
        for migration in migrations:
            with self.write() as db:
                # Checked inside the write lock, so two processes starting at once apply it once.
                done = db.execute(
                    "SELECT 1 FROM _migrations WHERE name = ?", [migration.name]
                ).fetchone()
                if done:
                    continue
                if callable(migration.step):
                    migration.step(db)
                else:
                    _execute_script(self._wconn, migration.step)
                db.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ'))",
                    [migration.name],
                )
            applied.append(migration.name)
        return applied


def _execute_script(conn: sqlite3.Connection, sql: str) -> None:
    """Run several statements inside the open transaction (``executescript`` would COMMIT first)."""
    statement = ""
    for line in sql.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        conn.execute(statement)
