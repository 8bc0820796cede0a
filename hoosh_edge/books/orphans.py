"""What a crash leaves in the books: orphaned reservations, and the operator's corrections.

A request in flight when the process died (kill -9, power cut, OOM) may have been billed by the
upstream, and nobody is left to say how much. So its reservation, an upper bound of what it could
cost, is booked in the ledger as ``kind='orphaned'`` at the next start rather than dropped: a crash
never un-spends. An operator who knows better (the provider's dashboard) appends a
``kind='correction'`` row with ``hoosh-edge budget correct REQUEST_ID --usd X --reason "..."``;
no ledger row is ever changed or deleted.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any, Protocol

from hoosh_edge.books.db import Database
from hoosh_edge.books.money import format_usd, parse_usd
from hoosh_edge.errors import InvalidRequest, NotFound


class Ledger(Protocol):
    """What these functions need of a ``budget.SpendLedger`` (which calls them): its database."""

    db: Database


_USAGE = ("prompt_tokens", "completion_tokens", "audio_ms", "characters", "requests",
          "cost_micro_usd")  # fmt: skip
_TARGET = ("request_id", "api_key", "provider", "model", "is_local")


# ---- who owns a reservation ------------------------------------------------------------------


def _boot_id() -> str:
    """This boot of the machine (Linux), so reservations from before a power cut are known dead."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


# Who owns a reservation: this boot, this pid, and this process (a reused pid is someone else).
_OWNER = f"{_boot_id()}:{os.getpid()}:{secrets.token_hex(8)}"


def owner() -> str:
    """Who owns this process's reservations: boot id, pid, and a random tag."""
    # Recomputed after fork(): a child is not its parent.
    global _OWNER
    if _OWNER.split(":")[1] != str(os.getpid()):
        _OWNER = f"{_boot_id()}:{os.getpid()}:{secrets.token_hex(8)}"
    return _OWNER


def orphaned(pid: int, owner_id: str) -> bool:
    """Whether the process that made a reservation is gone."""
    mine = owner()
    if owner_id == mine:
        return False
    if owner_id.split(":")[0] != mine.split(":")[0] or pid == os.getpid():
        return True  # another boot, or a dead namesake of this process
    return not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def now_us() -> int:
    """Microseconds since the epoch, UTC (as ``boxes`` keeps them)."""
    return int(time.time() * 1_000_000)


# The database server's clock, in microseconds: leases are stamped and judged by one clock, so
# boxes whose own clocks disagree (no RTC, NTP not yet synced) never call each other dead.
DB_NOW_US = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT"


def dead_owners(db: Any, owners: list[str], lease_s: float, me: str) -> list[str]:
    """The owners among ``owners`` with no lease younger than ``lease_s`` (never ``me``)."""
    lease_us = int(lease_s * 1_000_000)
    alive = {
        row["owner"]
        for row in db.execute(
            f"SELECT owner FROM boxes WHERE seen_at >= {DB_NOW_US} - ?", [lease_us]
        ).fetchall()
    }
    # Leases long expired are forgotten, so the table stays as small as the fleet.
    db.execute(f"DELETE FROM boxes WHERE seen_at < {DB_NOW_US} - ?", [lease_us * 11])
    return [who for who in owners if who != me and who not in alive]


# ---- settling and correcting --------------------------------------------------------------------


def settle_orphans(ledger: Ledger) -> int:
    """Book every reservation of a dead process at its reserved amount; return how many."""
    with ledger.db.write() as db:
        owners = db.execute("SELECT DISTINCT pid, owner FROM reservations").fetchall()
        if getattr(ledger.db, "shared", False):
            # Boxes share the database: a pid means nothing on another machine, a lease does.
            dead = dead_owners(db, [who for _, who in owners], ledger.db.lease_s, owner())
        else:
            dead = [who for pid, who in owners if orphaned(pid, who)]
        settled = 0
        for who in dead:
            rows = db.execute("SELECT * FROM reservations WHERE owner = ?", [who]).fetchall()
            for row in rows:
                columns = ("ts", *_TARGET, *_USAGE)
                db.execute(
                    f"INSERT INTO ledger ({', '.join(columns)}, kind) "
                    f"VALUES ({', '.join('?' * len(columns))}, 'orphaned')",
                    [row[c] for c in columns],
                )
            db.execute("DELETE FROM reservations WHERE owner = ?", [who])
            settled += len(rows)
        if settled:
            # Booked at their start time, maybe in a period whose running total exists: re-sum.
            db.execute("DELETE FROM budget_usage")
    return settled


def correct(ledger: Ledger, request_id: str, usd: Any, reason: str) -> dict[str, Any]:
    """Append a row that makes ``request_id`` cost ``usd`` in total; return what was recorded."""
    target_micro = parse_usd(usd, "usd")
    if not reason or not reason.strip():
        raise InvalidRequest("a correction needs a reason", param="reason")
    with ledger.db.write() as db:
        rows = db.execute(
            "SELECT * FROM ledger WHERE request_id = ? ORDER BY id", [request_id]
        ).fetchall()
        if not rows:
            raise NotFound(f"No ledger entry has request id '{request_id}'.", param="request_id")
        before = sum(int(r["cost_micro_usd"]) for r in rows)
        first = rows[0]
        delta = target_micro - before
        # Dated like the entry it corrects, so it counts in the same budget period.
        columns = ("ts", *_TARGET)
        entry = db.execute(
            f"INSERT INTO ledger ({', '.join(columns)}, requests, cost_micro_usd, kind, note) "
            f"VALUES ({', '.join('?' * len(columns))}, 0, ?, 'correction', ?)",
            [*(first[c] for c in columns), delta, reason.strip()],
        ).lastrowid
        db.execute("DELETE FROM budget_usage")  # re-summed from the ledger when next read
    return {
        "entry": entry,
        "request_id": request_id,
        "was_usd": format_usd(before),
        "now_usd": format_usd(target_micro),
        "delta_usd": format_usd(delta),
        "reason": reason.strip(),
    }


def orphan_summary(ledger: Ledger) -> dict[str, Any]:
    """Orphaned entries and corrections in the ledger, for the status page."""
    with ledger.db.read() as db:
        rows = db.execute(
            "SELECT kind, COUNT(*) AS n, SUM(cost_micro_usd) AS micro FROM ledger "
            "WHERE kind != 'call' GROUP BY kind"
        ).fetchall()
        recent = db.execute(
            "SELECT request_id, provider, model, cost_micro_usd FROM ledger "
            "WHERE kind = 'orphaned' ORDER BY id DESC LIMIT 20"
        ).fetchall()
    by_kind = {r["kind"]: (r["n"], int(r["micro"] or 0)) for r in rows}
    n, micro = by_kind.get("orphaned", (0, 0))
    fixes, fixed = by_kind.get("correction", (0, 0))
    return {
        "orphaned": n,
        "orphaned_usd": format_usd(micro),
        "corrections": fixes,
        "corrections_usd": format_usd(fixed),
        "recent_orphans": [
            {
                "request_id": r["request_id"],
                "provider": r["provider"],
                "model": r["model"],
                "cost_usd": format_usd(int(r["cost_micro_usd"])),
            }  # fmt: skip
            for r in recent
        ],
    }
