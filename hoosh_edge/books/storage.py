"""What the data folder can take: storage faults named, checked at start-up, and remembered.

A write the disk cannot take (full, read-only, failing, a damaged file) is not a bug in the
gateway, so it never becomes a 500 with a traceback: ``classify`` turns the ``sqlite3`` or OS
error into ``StorageUnavailable`` (503 ``storage_unavailable``) naming the folder and what to do,
and ``StorageState`` remembers it for ``/v1/health`` until the next write that succeeds.

``prepare_data_dir`` and ``check_database_file`` run before the database is opened for writing:
a folder or file that is wrong stops start-up with one sentence, and a damaged file is only ever
read (its bytes and its mtime stay as they were): the header and length first, then
``PRAGMA quick_check`` on a read-only connection, for at most ``QUICK_CHECK_S``.
``integrity_problems`` is the doctor's full check, on a read-only connection too.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from hoosh_edge.errors import StorageUnavailable

log = logging.getLogger("hoosh_edge.books.storage")

SQLITE_MAGIC = b"SQLite format 3\x00"
# Start-up reads the whole file (quick_check) only while that stays quick: most boxes' files
# pass in well under a second; a larger one is left to ``hoosh-edge doctor``.
QUICK_CHECK_S = 3.0

# Primary SQLite result code -> (what happened, what to do).
_FULL = ("the disk is full", "free some space there")
_READONLY = ("it is read-only", "make it writable (is the disk mounted read-only?)")
_IOERR = ("the disk reported an I/O error", "check the disk (dmesg) and run 'hoosh-edge doctor'")
_CANTOPEN = ("a file there cannot be opened or created",
             "check that the folder exists and belongs to the user running hoosh-edge")  # fmt: skip
_DAMAGED = ("the database file is damaged",
            "stop the gateway and run 'hoosh-edge doctor', which explains the recovery")  # fmt: skip
_DENIED = (
    "permission denied",
    "make the folder and its files belong to the user running hoosh-edge",
)
_SQLITE_CODES = {
    13: _FULL,  # SQLITE_FULL
    8: _READONLY,  # SQLITE_READONLY
    10: _IOERR,  # SQLITE_IOERR
    14: _CANTOPEN,  # SQLITE_CANTOPEN
    11: _DAMAGED,  # SQLITE_CORRUPT
    26: _DAMAGED,  # SQLITE_NOTADB
    3: _DENIED,  # SQLITE_PERM
}
# The same, by message, for Pythons older than 3.11 (no sqlite_errorcode attribute).
_SQLITE_MESSAGES = {
    "database or disk is full": _FULL,
    "readonly database": _READONLY,
    "disk i/o error": _IOERR,
    "unable to open database file": _CANTOPEN,
    "database disk image is malformed": _DAMAGED,
    "file is not a database": _DAMAGED,
}
_ERRNOS = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: ("the disk quota is used up", "free some space there"),
    errno.EROFS: _READONLY,
    errno.EIO: _IOERR,
    errno.EACCES: _DENIED,
    errno.EPERM: _DENIED,
}


def _kind(exc: BaseException) -> tuple[str, str] | None:
    """(what happened, what to do) for a storage fault; None for anything else."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            return _SQLITE_CODES.get(code & 0xFF)
        text = str(exc).lower()
        return next((kind for msg, kind in _SQLITE_MESSAGES.items() if msg in text), None)
    if isinstance(exc, OSError):
        return _ERRNOS.get(exc.errno) if exc.errno is not None else None
    return None


def _no_space(directory: Path) -> bool:
    """Whether the disk under ``directory`` has no block left for us."""
    try:
        return os.statvfs(directory).f_bavail == 0
    except OSError:
        return False


def _kind_here(exc: BaseException, directory: Path) -> tuple[str, str] | None:
    kind = _kind(exc)
    # SQLite reports a -shm or -wal it could not grow as an I/O error; the disk says why.
    if kind is _IOERR and _no_space(directory):
        return _FULL
    return kind


def classify(exc: BaseException, directory: Path) -> StorageUnavailable | None:
    """The ``StorageUnavailable`` a sqlite3 or OS error means, or None if it is no storage fault."""
    kind = _kind_here(exc, directory)
    if kind is None:
        return None
    what, fix = kind
    return StorageUnavailable(
        f"The gateway cannot write to its data folder {directory} ({what}: {exc}); {fix}."
    )


class StorageState:
    """Whether the data folder takes writes: set by a failed write, cleared by the next success."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.error: str | None = None
        self.since: float | None = None
        self.failed_writes = 0  # since the state went bad

    @property
    def ok(self) -> bool:
        return self.error is None

    def failed(self, err: StorageUnavailable) -> None:
        """A write could not be made: say so once, then count quietly."""
        self.failed_writes += 1
        if self.error is None:
            self.since = time.time()
            log.warning(
                "storage: %s Paid calls are refused until a write succeeds; free on-device "
                "calls go on (their usage waits in memory).",
                err.message,
            )
        self.error = err.message

    def succeeded(self) -> None:
        """A write went through: the folder takes writes again."""
        if self.error is None:
            return
        log.warning("storage: %s takes writes again after %d failed write(s)",
                    self.directory, self.failed_writes)  # fmt: skip
        self.error = self.since = None
        self.failed_writes = 0

    def report(self) -> dict[str, Any]:
        """The ``storage`` object of ``/v1/health``."""
        return {
            "state": "ok" if self.error is None else "unavailable",
            "data_dir": str(self.directory),
            "error": self.error,
            "since": self.since,
            "failed_writes": self.failed_writes,
        }


# ---- start-up ----------------------------------------------------------------------------------


def _refuse(message: str) -> StorageUnavailable:
    return StorageUnavailable(message)


def prepare_data_dir(directory: Path) -> None:
    """Create the data folder if needed; refuse one that is not a folder or not ours to write."""
    if directory.exists() and not directory.is_dir():
        raise _refuse(
            f"data_dir {directory} is not a folder; set server.data_dir to a folder (or move "
            f"{directory} out of the way)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _refuse(
            f"cannot create data_dir {directory} ({e.strerror or e}); create it and make it "
            "writable by the user running hoosh-edge, or set server.data_dir"
        ) from None
    if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
        how = "read-only" if _read_only_mount(directory) else "not readable and writable"
        raise _refuse(
            f"data_dir {directory} is {how} for this user (uid {os.getuid()}); make it writable "
            f"(chown the folder to the user running hoosh-edge) or set server.data_dir"
        )


def _read_only_mount(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _damaged(path: Path, what: str) -> StorageUnavailable:
    what = " ".join(what.split())  # SQLite's report spans lines; the refusal is one line
    return _refuse(
        f"the database {path} is damaged ({what}); it was left untouched. Run 'hoosh-edge "
        f"doctor' for how to recover it, or move it away to start with an empty one"
    )


def check_database_file(path: Path) -> None:
    """Refuse a database file that cannot be read or is visibly damaged, without writing to it."""
    if not path.exists():
        return  # a new installation: the database is created
    if not path.is_file():
        raise _refuse(f"the database {path} is not a file; move it out of the way")
    try:
        with path.open("rb") as f:
            header = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise _refuse(
            f"cannot read the database {path} ({e.strerror or e}); make it readable and writable "
            "by the user running hoosh-edge (chown it)"
        ) from None
    if size == 0:
        return  # SQLite's own view: an empty file is an empty database
    problem = header_problem(header, size)
    if problem is not None:
        raise _damaged(path, problem)
    try:
        conn = _read_only(path)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            found = _quick_check(conn, QUICK_CHECK_S)
        finally:
            conn.close()
    except sqlite3.Error as e:
        kind = _kind_here(e, path.parent)
        if kind is _DAMAGED:
            raise _damaged(path, str(e)) from None
        what, fix = kind or (str(e), "run 'hoosh-edge doctor'")
        raise _refuse(f"cannot open the database {path} ({what}: {e}); {fix}") from None
    if found is None:
        log.info("database %s: too large to check in %.0f s at start; 'hoosh-edge doctor' "
                 "checks it all", path, QUICK_CHECK_S)  # fmt: skip
    elif found:
        raise _damaged(path, "; ".join(found[:2]))


def _quick_check(conn: sqlite3.Connection, budget_s: float) -> list[str] | None:
    """``PRAGMA quick_check`` within ``budget_s``: its findings ([] when sound), None if cut off."""
    deadline = time.monotonic() + budget_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        rows = conn.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.OperationalError as e:
        if "interrupt" in str(e).lower():
            return None
        raise
    finally:
        conn.set_progress_handler(None, 0)
    found = [str(r[0]) for r in rows]
    return [] if found == ["ok"] else found


def header_problem(header: bytes, size: int) -> str | None:
    """What is wrong with a database file's first 100 bytes and its length, or None."""
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        return "it does not start with the SQLite header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header names a page size of {page_size}"
    pages = int.from_bytes(header[28:32], "big")
    # The page count in the header is valid only when the change counter matches it.
    if pages and header[24:28] == header[92:96] and size < pages * page_size:
        return f"it is {size} bytes long, but its header says {pages * page_size}: truncated"
    if size % page_size:
        return f"its length, {size} bytes, is not a whole number of {page_size}-byte pages"
    return None


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that can never write the file (``mode=ro``)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def integrity_problems(path: Path, limit: int = 10) -> list[str]:
    """``PRAGMA integrity_check`` on a read-only connection: [] when the database is sound."""
    conn = _read_only(path)
    try:
        rows = conn.execute(f"PRAGMA integrity_check({int(limit)})").fetchall()
    except sqlite3.Error as e:
        return [str(e)]
    finally:
        conn.close()
    found = [str(r[0]) for r in rows]
    return [] if found == ["ok"] else found
