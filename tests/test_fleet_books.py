"""The shared books in process, on a real PostgreSQL: migrations at once, leases, the dialect."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from hoosh_edge.books import fleet, orphans
from hoosh_edge.books.ledger import SpendLedger, Usage
from hoosh_edge.books.pg import PgDatabase
from hoosh_edge.books.pg_migrations import PG_MIGRATIONS
from hoosh_edge.books.sql import translate
from hoosh_edge.errors import StorageUnavailable

CLOUD = {"key": None, "provider": "openai", "model": "gpt-4o", "is_local": False}


def test_four_boxes_starting_at_once_apply_each_migration_once(pg_url: str) -> None:
    opened: list[PgDatabase] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            opened.append(PgDatabase.open(pg_url))
        except BaseException as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(opened) == 4
    with psycopg.connect(pg_url) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY id")]
    assert names == [m.name for m in PG_MIGRATIONS]
    assert opened[0].migrate(PG_MIGRATIONS) == []  # nothing twice
    for db in opened:
        db.close()


def insert_hold(db: PgDatabase, owner: str, request_id: str) -> None:
    with db.write() as w:
        w.execute(
            "INSERT INTO reservations (ts, pid, owner, request_id, provider, model, is_local,"
            " prompt_tokens, completion_tokens, cost_micro_usd)"
            " VALUES (0, 1, ?, ?, 'openai', 'gpt-4o', 0, 100, 50, 750)",
            [owner, request_id],
        )


def test_a_box_whose_lease_ran_out_has_its_holds_booked_and_a_live_one_keeps_them(
    pg_url: str,
) -> None:
    db = PgDatabase.open(pg_url, lease_s=5)
    try:
        ledger = SpendLedger(db)
        me = orphans.owner()
        fleet.renew(db, me)
        fleet.renew(db, "other-boot:42:alive")  # a box on another machine, renewing
        with db.write() as w:  # and one that stopped renewing 6 s ago
            stale = orphans.now_us() - 6_000_000
            w.execute("INSERT INTO boxes VALUES ('other-boot:43:dead', 'b', ?, ?)", [stale, stale])
        mine = ledger.reserve(Usage(cost_micro_usd=5), **CLOUD, request_id="mine")
        insert_hold(db, "other-boot:42:alive", "alive")
        insert_hold(db, "other-boot:43:dead", "dead")
        insert_hold(db, "other-boot:44:never", "never leased")
        # A pid check would call both other-boot boxes dead; the lease tells them apart.
        assert fleet.Lease(ledger, me, 5).tick() == 2
        with db.read() as r:
            kept = {row[0] for row in r.execute("SELECT request_id FROM reservations")}
            booked = r.execute(
                "SELECT request_id, kind, cost_micro_usd FROM ledger ORDER BY request_id"
            ).fetchall()
        assert kept == {"mine", "alive"}
        assert [tuple(b) for b in booked] == [("dead", "orphaned", 750),
                                              ("never leased", "orphaned", 750)]  # fmt: skip
        assert orphans.settle_orphans(ledger) == 0  # booked once, never twice
        ledger.commit(mine, Usage(cost_micro_usd=5))
    finally:
        db.close()


def test_a_server_that_is_not_there_is_a_storage_fault_naming_it() -> None:
    from tests.pg_server import free_port

    port = free_port()  # nothing listens there
    with pytest.raises(StorageUnavailable) as caught:
        PgDatabase.open(f"postgresql://hoosh@127.0.0.1:{port}/books", connect_timeout_s=1)
    assert f"127.0.0.1:{port}/books" in caught.value.message
    assert caught.value.status == 503 and "hoosh@" not in caught.value.message


def test_a_dropped_connection_is_opened_afresh(pg_url: str) -> None:
    db = PgDatabase.open(pg_url)
    try:
        with db.read() as r:
            pid = r.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        time.sleep(0.2)
        with pytest.raises(StorageUnavailable):
            with db.read() as r:
                r.execute("SELECT 1").fetchone()
        with db.read() as r:  # the next use reconnects
            assert r.execute("SELECT 1").fetchone()[0] == 1
    finally:
        db.close()


@pytest.mark.parametrize(
    ("sqlite", "named", "postgres"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = ?", False, "SELECT * FROM t WHERE a = %s AND b = %s"),
        ("SELECT '?', '%' FROM t WHERE a LIKE ?", False, "SELECT '?', '%%' FROM t WHERE a LIKE %s"),
        ("VALUES (:name, :prefix)", True, "VALUES (%(name)s, %(prefix)s)"),
        ("SELECT x::text, ':no' FROM t", True, "SELECT x::text, ':no' FROM t"),
        ("SELECT 'it''s ?' WHERE a = ?", False, "SELECT 'it''s ?' WHERE a = %s"),
    ],
)
def test_placeholders_are_translated_and_literals_left_alone(
    sqlite: str, named: bool, postgres: str
) -> None:
    assert translate(sqlite, named) == postgres
