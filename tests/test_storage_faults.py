"""Storage faults in process: which errors are storage faults, and the bounded usage queue."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from hoosh_edge.books.db import Database
from hoosh_edge.books.ledger import Reservation, SpendLedger, Usage
from hoosh_edge.books.pending import PendingBooks, PendingEntry
from hoosh_edge.books.storage import StorageState, classify
from hoosh_edge.errors import StorageUnavailable

DIR = Path("/srv/hoosh")


def test_sqlite_and_os_errors_that_are_storage_faults():
    full = sqlite3.OperationalError("database or disk is full")  # as Python 3.10 raises it
    assert "the disk is full" in classify(full, DIR).message
    assert str(DIR) in classify(full, DIR).message
    assert "read-only" in classify(OSError(errno.EROFS, "Read-only file system"), DIR).message
    assert "full" in classify(OSError(errno.ENOSPC, "No space left on device"), DIR).message
    damaged = sqlite3.DatabaseError("database disk image is malformed")
    assert "hoosh-edge doctor" in classify(damaged, DIR).message
    assert isinstance(classify(damaged, DIR), StorageUnavailable)


def test_errors_that_are_not_storage_faults_stay_what_they_are():
    assert classify(sqlite3.OperationalError("no such table: ledger"), DIR) is None
    assert classify(sqlite3.IntegrityError("UNIQUE constraint failed"), DIR) is None
    assert classify(OSError(errno.ENOENT, "No such file"), DIR) is None
    assert classify(ValueError("x"), DIR) is None


def test_a_write_to_a_read_only_database_is_a_storage_fault(tmp_path):
    Database.open(tmp_path).close()
    db = Database(tmp_path / "hoosh-edge.db")
    db._wconn.execute("PRAGMA query_only = 1")  # the same refusal a read-only file gives
    with pytest.raises(StorageUnavailable) as caught:
        with db.write() as w:
            w.execute("DELETE FROM ledger")
    assert str(tmp_path) in caught.value.message and caught.value.status == 503
    assert not db.state.ok and db.state.failed_writes == 1
    db._wconn.execute("PRAGMA query_only = 0")
    with db.write() as w:
        w.execute("DELETE FROM ledger")
    assert db.state.ok and db.state.report()["state"] == "ok"
    db.close()


def test_state_says_it_once_and_clears_on_success(caplog):
    state = StorageState(DIR)
    err = classify(OSError(errno.ENOSPC, "No space left on device"), DIR)
    for _ in range(5):
        state.failed(err)
    assert state.report()["failed_writes"] == 5 and state.report()["state"] == "unavailable"
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1
    state.succeeded()
    assert state.ok and state.report()["error"] is None


def test_the_usage_queue_is_bounded_and_written_oldest_first(tmp_path, caplog):
    db = Database.open(tmp_path)
    ledger = SpendLedger(db)
    books = PendingBooks(limit=2)
    for tokens in (1, 2, 3):
        hold = Reservation(-1, f"r{tokens}", None, "local", "tiny", True, Usage())
        books.add(PendingEntry(hold, Usage(prompt_tokens=tokens), "local", "tiny"))
    assert books.report() == {"pending_usage": 2, "dropped_usage": 1}
    assert any("dropped" in r.getMessage() for r in caplog.records)
    assert books.flush(ledger) == 2 and len(books) == 0
    with db.read() as r:
        kept = [row[0] for row in r.execute("SELECT prompt_tokens FROM ledger ORDER BY id")]
    assert kept == [2, 3]
    db.close()
