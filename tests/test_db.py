"""The gateway database: pragmas, named migrations, and serialized, all-or-nothing writes."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import gevent
import pytest

from hoosh_edge.books.db import DB_FILENAME, MIGRATIONS, Database, Migration

FIXTURES = Path(__file__).parent / "fixtures"

LEDGER_COLUMNS = [
    ("id", "INTEGER", 0, None, 1),
    ("ts", "INTEGER", 1, None, 0),
    ("request_id", "TEXT", 0, None, 0),
    ("api_key", "TEXT", 0, None, 0),
    ("provider", "TEXT", 1, None, 0),
    ("model", "TEXT", 1, None, 0),
    ("is_local", "INTEGER", 1, None, 0),
    ("prompt_tokens", "INTEGER", 1, "0", 0),
    ("completion_tokens", "INTEGER", 1, "0", 0),
    ("audio_ms", "INTEGER", 1, "0", 0),
    ("characters", "INTEGER", 1, "0", 0),
    ("requests", "INTEGER", 1, "1", 0),
    ("cost_micro_usd", "INTEGER", 1, "0", 0),
]

EXPECTED_SCHEMA = {
    "tables": {
        "_migrations": [
            ("id", "INTEGER", 0, None, 1),
            ("name", "TEXT", 1, None, 0),
            ("applied_at", "TEXT", 1, None, 0),
        ],
        "budget_rules": [
            ("name", "TEXT", 0, None, 1),
            ("scope", "TEXT", 1, None, 0),
            ("metric", "TEXT", 1, None, 0),
            ("limit_value", "INTEGER", 1, None, 0),
            ("period", "TEXT", 1, None, 0),
            ("action", "TEXT", 1, None, 0),
            ("source", "TEXT", 1, "'api'", 0),
            ("created_at", "TEXT", 1, None, 0),
            ("updated_at", "TEXT", 1, None, 0),
        ],
        "budget_usage": [
            ("rule", "TEXT", 1, None, 1),
            ("period_start", "INTEGER", 1, None, 2),
            ("used", "INTEGER", 1, None, 0),
        ],
        "ledger": LEDGER_COLUMNS + [("kind", "TEXT", 1, "'call'", 0), ("note", "TEXT", 0, None, 0)],
        "budget_closures": [
            ("rule", "TEXT", 1, None, 1),
            ("period_start", "INTEGER", 1, None, 2),
            ("ts", "INTEGER", 1, None, 0),
            ("request_id", "TEXT", 0, None, 0),
            ("reason", "TEXT", 1, None, 0),
        ],
        "reservations": LEDGER_COLUMNS[:2]
        + [("pid", "INTEGER", 1, None, 0), ("owner", "TEXT", 1, None, 0)]
        + [c for c in LEDGER_COLUMNS[2:]],
        "api_keys": [
            ("name", "TEXT", 0, None, 1),
            ("prefix", "TEXT", 1, None, 0),
            ("key_hash", "TEXT", 1, None, 0),
            ("allowed_models", "TEXT", 0, None, 0),
            ("rpm", "INTEGER", 0, None, 0),
            ("max_concurrent", "INTEGER", 0, None, 0),
            ("budget_usd", "TEXT", 0, None, 0),
            ("created_at", "TEXT", 1, None, 0),
            ("last_used_at", "TEXT", 0, None, 0),
            ("revoked_at", "TEXT", 0, None, 0),
        ],
        "response_cache": [
            ("key", "TEXT", 1, None, 1),
            ("kind", "TEXT", 1, None, 0),
            ("provider", "TEXT", 1, None, 0),
            ("model", "TEXT", 1, None, 0),
            ("body", "BLOB", 1, None, 0),
            ("meta", "TEXT", 1, None, 0),
            ("size", "INTEGER", 1, None, 0),
            ("checksum", "TEXT", 1, None, 0),
            ("created", "REAL", 1, None, 0),
            ("last_used", "REAL", 1, None, 0),
        ],
        "response_cache_totals": [
            ("id", "INTEGER", 0, None, 1),
            ("entries", "INTEGER", 1, None, 0),
            ("bytes", "INTEGER", 1, None, 0),
        ],
        "semantic_cache": [
            ("id", "INTEGER", 0, None, 1),
            ("scope", "TEXT", 1, None, 0),
            ("answer_key", "TEXT", 1, None, 0),
            ("model", "TEXT", 1, None, 0),
            ("vector", "BLOB", 1, None, 0),
            ("created", "REAL", 1, None, 0),
            ("last_used", "REAL", 1, None, 0),
        ],
        "stored_responses": [
            ("id", "TEXT", 1, None, 1),
            ("scope", "TEXT", 1, None, 0),
            ("created", "REAL", 1, None, 0),
            ("expires", "REAL", 1, None, 0),
            ("response", "TEXT", 1, None, 0),
            ("input_items", "TEXT", 1, None, 0),
            ("messages", "TEXT", 1, None, 0),
            ("size", "INTEGER", 1, None, 0),
        ],
    },
    "indexes": {
        "response_cache_lru": ("response_cache", ("last_used",), 0),
        "response_cache_created": ("response_cache", ("created",), 0),
        "ledger_ts": ("ledger", ("ts",), 0),
        "ledger_request_id": ("ledger", ("request_id",), 0),
        "semantic_cache_scope": ("semantic_cache", ("scope",), 0),
        "semantic_cache_lru": ("semantic_cache", ("last_used",), 0),
        "stored_responses_created": ("stored_responses", ("created",), 0),
        "stored_responses_expires": ("stored_responses", ("expires",), 0),
    },
}


def schema_of(path: Path) -> dict:
    """Tables with their columns and named indexes with their columns, straight from SQLite."""
    conn = sqlite3.connect(path)
    try:
        tables = {}
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ):
            tables[name] = [
                (r[1], r[2], r[3], r[4], r[5]) for r in conn.execute(f"PRAGMA table_info({name})")
            ]
        indexes = {}
        for name, table in conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ):
            cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))
            unique = conn.execute(
                "SELECT [unique] FROM pragma_index_list(?) WHERE name = ?", [table, name]
            ).fetchone()[0]
            indexes[name] = (table, cols, unique)
        return {"tables": tables, "indexes": indexes}
    finally:
        conn.close()


@pytest.fixture
def database(tmp_path: Path):
    db = Database.open(tmp_path)
    yield db
    db.close()


def test_blank_database_reaches_the_exact_schema(tmp_path: Path) -> None:
    db = Database.open(tmp_path)
    assert db.applied_migrations() == [m.name for m in MIGRATIONS]
    db.close()
    assert schema_of(tmp_path / DB_FILENAME) == EXPECTED_SCHEMA


def test_old_schema_fixture_is_brought_up_to_date_keeping_its_data(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / DB_FILENAME)
    old.executescript((FIXTURES / "schema_0001.sql").read_text())
    old.close()

    db = Database.open(tmp_path)
    assert db.applied_migrations() == [m.name for m in MIGRATIONS]
    with db.read() as r:
        rows = r.execute("SELECT request_id, cost_micro_usd FROM ledger ORDER BY id").fetchall()
        assert [tuple(row) for row in rows] == [("req-1", 360), ("req-2", 0)]
        assert r.execute("SELECT limit_value FROM budget_rules").fetchone()[0] == 2_000_000
    db.close()
    assert schema_of(tmp_path / DB_FILENAME) == EXPECTED_SCHEMA


def test_reopening_applies_nothing_twice_and_a_new_migration_once(tmp_path: Path) -> None:
    Database.open(tmp_path).close()
    calls = []

    def add_notes(db) -> None:
        calls.append(1)
        db["notes"].create({"id": int, "text": str}, pk="id")

    extended = [*MIGRATIONS, Migration("0100_notes", add_notes)]
    db = Database.open(tmp_path, migrations=extended)
    assert db.migrate(extended) == []
    db.close()
    db = Database.open(tmp_path, migrations=extended)
    assert calls == [1]
    assert db.applied_migrations()[-1] == "0100_notes"
    with db.read() as r:
        assert "notes" in r.table_names()
    db.close()


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    def half_done(db) -> None:
        db.execute("CREATE TABLE half (id INTEGER)")
        db.execute("INSERT INTO half VALUES (1)")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        Database.open(tmp_path, migrations=[*MIGRATIONS, Migration("0100_half", half_done)])
    db = Database.open(tmp_path)
    with db.read() as r:
        assert "half" not in r.table_names()
    assert "0100_half" not in db.applied_migrations()
    db.close()


def test_duplicate_migration_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Database.open(tmp_path, migrations=[*MIGRATIONS, MIGRATIONS[0]])


def test_pragmas(database: Database) -> None:
    conn = database.db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_write_is_all_or_nothing(database: Database) -> None:
    with database.write() as db:
        db.execute("CREATE TABLE t (v INTEGER)")
    with pytest.raises(ZeroDivisionError):
        with database.write() as db:
            db.execute("INSERT INTO t VALUES (1)")
            db.execute("INSERT INTO t VALUES (2)")
            1 / 0  # noqa: B018
    with database.write() as db:
        db.execute("INSERT INTO t VALUES (3)")
    with database.read() as r:
        assert [row[0] for row in r.execute("SELECT v FROM t")] == [3]


def test_nested_write_is_refused_rather_than_deadlocking(database: Database) -> None:
    with database.write():
        with pytest.raises(RuntimeError, match="reentrant"):
            with database.write():
                pass
    with database.write() as db:  # the lock was released
        db.execute("SELECT 1")


def test_read_sees_only_committed_data(database: Database) -> None:
    with database.write() as db:
        db.execute("CREATE TABLE t (v INTEGER)")
    with database.write() as db:
        db.execute("INSERT INTO t VALUES (1)")
        with database.read() as r:
            assert r.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    with database.read() as r:
        assert r.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1


def test_os_threads_writing_at_once_lose_no_update(database: Database) -> None:
    with database.write() as db:
        db.execute("CREATE TABLE counter (n INTEGER)")
        db.execute("INSERT INTO counter VALUES (0)")
    start = threading.Barrier(8)

    def bump() -> None:
        start.wait()
        for _ in range(50):
            with database.write() as db:
                # Read then write: only safe if no other writer can slip in between.
                n = db.execute("SELECT n FROM counter").fetchone()[0]
                db.execute("UPDATE counter SET n = ?", [n + 1])

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with database.read() as r:
        assert r.execute("SELECT n FROM counter").fetchone()[0] == 400


def test_greenlet_parked_inside_a_write_does_not_freeze_other_greenlets(database: Database) -> None:
    with database.write() as db:
        db.execute("CREATE TABLE log (who TEXT)")
    order = []

    def slow() -> None:
        with database.write() as db:
            db.execute("INSERT INTO log VALUES ('slow')")
            gevent.sleep(0.05)  # yields to the hub while holding the write lock
            order.append("slow")

    def fast() -> None:
        with database.write() as db:
            db.execute("INSERT INTO log VALUES ('fast')")
            order.append("fast")

    def pool_writer() -> None:
        with database.write() as db:
            db.execute("INSERT INTO log VALUES ('pool')")

    greenlets = [gevent.spawn(slow), gevent.spawn(fast)]
    pooled = gevent.get_hub().threadpool.spawn(pool_writer)
    gevent.joinall(greenlets, timeout=30, raise_error=True)
    pooled.get(timeout=30)
    assert order == ["slow", "fast"]
    with database.read() as r:
        assert sorted(row[0] for row in r.execute("SELECT who FROM log")) == [
            "fast",
            "pool",
            "slow",
        ]


def test_a_second_process_connection_waits_for_the_write_lock(database: Database) -> None:
    with database.write() as db:
        db.execute("CREATE TABLE t (v INTEGER)")
    other = sqlite3.connect(database.path, timeout=0.05, isolation_level=None)
    try:
        with database.write() as db:
            db.execute("INSERT INTO t VALUES (1)")
            # BEGIN IMMEDIATE took SQLite's write lock: nobody else may start writing now.
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
