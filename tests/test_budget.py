"""Budget rules and the spend ledger: reservations, limits, periods, actions, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hoosh_edge.books import orphans
from hoosh_edge.books.db import DB_FILENAME, Database
from hoosh_edge.books.ledger import SpendLedger, Usage, period_bounds
from hoosh_edge.errors import BudgetExceeded, InvalidRequest, NotFound

ROOT = Path(__file__).resolve().parent.parent
CLOUD = {"key": "laptop", "provider": "openai", "model": "gpt-4o-mini", "is_local": False}
LOCAL = {"key": "laptop", "provider": "local", "model": "qwen2.5-0.5b", "is_local": True}


class Clock:
    """A frozen clock the test moves by hand."""

    def __init__(self, when: datetime) -> None:
        self.now = when

    def __call__(self) -> datetime:
        return self.now


def rule(name: str, **kw) -> dict:
    base = {
        "name": name,
        "scope": "all",
        "metric": "usd",
        "limit": "1",
        "period": "day",
        "action": "block",
    }
    return {**base, **kw}


@pytest.fixture
def database(books_db):
    """Each test on both engines: the SQLite file and PostgreSQL (conftest.books_db)."""
    return books_db


@pytest.fixture
def sqlite_database(tmp_path: Path):
    """SQLite only: what a pid tells on one box (leases across boxes: test_fleet_books.py)."""
    db = Database.open(tmp_path)
    yield db
    db.close()


@pytest.fixture
def ledger(database: Database) -> SpendLedger:
    return SpendLedger(database)


def spend(ledger: SpendLedger, usage: Usage, target: dict = CLOUD) -> int:
    return ledger.commit(ledger.reserve(usage, **target), usage)


# ---- concurrency and durability ------------------------------------------------------------


def test_fifty_os_threads_never_overspend_a_hard_limit(ledger: SpendLedger) -> None:
    ledger.create_rule(rule("cent", scope="cloud", limit="0.01"))
    start = threading.Barrier(50)
    admitted, refused, other = [], [], []

    def request(i: int) -> None:
        estimate = Usage(prompt_tokens=500, completion_tokens=500, cost_micro_usd=700)
        start.wait()
        try:
            reservation = ledger.reserve(estimate, **CLOUD, request_id=f"r{i}")
        except BudgetExceeded as e:
            refused.append(e)
            return
        except Exception as e:  # anything else is a bug, reported below
            other.append(e)
            return
        time.sleep(0.001)  # the upstream call: let the others pile up meanwhile
        actual = 400 + (i * 37) % 301  # at most the estimate
        ledger.commit(reservation, Usage(prompt_tokens=400, cost_micro_usd=actual))
        admitted.append(actual)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert other == []
    assert len(admitted) + len(refused) == 50
    with ledger.db.read() as r:
        committed = r.execute("SELECT SUM(cost_micro_usd), COUNT(*) FROM ledger").fetchone()
        assert r.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
    assert committed[0] == sum(admitted) <= 10_000
    assert committed[1] == len(admitted) >= 14  # 14 worst cases of 700 fit in 10 000
    assert refused and all("cent" in e.message and "0.01" in e.message for e in refused)
    print(
        f"\nconcurrency: tried 50, admitted {len(admitted)}, refused {len(refused)}, "
        f"committed {committed[0]} of 10000 micro-USD"
    )


CHILD = textwrap.dedent(
    """
    import sys
    from hoosh_edge.books.ledger import SpendLedger, Usage
    from hoosh_edge.books.db import Database
    ledger = SpendLedger(Database.open(sys.argv[1]))
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        r = ledger.reserve(Usage(prompt_tokens=10, cost_micro_usd=3), key="k", provider="openai",
                           model="gpt-4o-mini", is_local=False, request_id=f"req-{i}")
        entry = ledger.commit(r, Usage(prompt_tokens=10, completion_tokens=i, cost_micro_usd=3))
        print(entry, r.request_id, flush=True)
        # An open reservation is always in flight when the kill lands somewhere here.
        ledger.reserve(Usage(cost_micro_usd=1), key="k", provider="openai", model="gpt-4o-mini",
                       is_local=False, request_id="dangling")
    """
)


def test_every_entry_committed_before_kill_9_survives(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        printed = []
        while len(printed) < 300:
            printed.append(child.stdout.readline().split())
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        # Lines written before the kill are still in the pipe: each was printed after commit().
        for line in child.stdout.read().splitlines():
            if line.endswith(tuple("0123456789")) and len(line.split()) == 2:
                printed.append(line.split())
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()

    db = Database.open(tmp_path)
    with db.read() as r:
        assert r.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = {row[0]: row[1] for row in r.execute("SELECT id, request_id FROM ledger")}
        held = r.execute("SELECT COUNT(*), SUM(cost_micro_usd) FROM reservations").fetchone()
        spent = r.execute("SELECT SUM(cost_micro_usd) FROM ledger").fetchone()[0]
    assert held[0] >= 1
    for entry, request_id in printed:
        assert rows.get(int(entry)) == request_id
    # The dead child's reservations are booked at what they held: a crash never un-spends.
    ledger = SpendLedger(db)
    assert ledger.orphans_settled == held[0]
    with db.read() as r:
        assert r.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
        orphans = r.execute(
            "SELECT COUNT(*), SUM(cost_micro_usd) FROM ledger WHERE kind = 'orphaned'"
        ).fetchone()
    assert tuple(orphans) == tuple(held)
    total = ledger.usage_summary("total", "provider")[0]
    assert total["requests"] == len(rows) + held[0]
    assert total["cost_micro_usd"] == spent + held[1]
    assert total["orphaned"] == held[0]
    db.close()


# ---- reserve / commit / release ------------------------------------------------------------


def test_commit_records_the_actual_usage_and_ends_the_reservation(ledger: SpendLedger) -> None:
    ledger.create_rule(rule("day", limit="0.001"))
    reservation = ledger.reserve(Usage(cost_micro_usd=800), **CLOUD, request_id="abc")
    with pytest.raises(BudgetExceeded):  # 800 reserved + 800 > 1000
        ledger.reserve(Usage(cost_micro_usd=800), **CLOUD)
    entry = ledger.commit(
        reservation,
        Usage(
            prompt_tokens=7,
            completion_tokens=3,
            audio_seconds=1.5,
            characters=11,
            cost_micro_usd=150,
        ),
    )
    with ledger.db.read() as r:
        row = r.execute("SELECT * FROM ledger WHERE id = ?", [entry]).fetchone()
        assert r.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
    assert dict(row) | {"ts": 0} == {
        "id": entry,
        "ts": 0,
        "request_id": "abc",
        "api_key": "laptop",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "is_local": 0,
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "audio_ms": 1500,
        "characters": 11,
        "requests": 1,
        "cost_micro_usd": 150,
        "kind": "call",
        "note": None,
    }
    ledger.reserve(Usage(cost_micro_usd=800), **CLOUD)  # 150 + 800 fits now
    with pytest.raises(RuntimeError):
        ledger.commit(reservation, Usage(cost_micro_usd=150))


def test_release_gives_the_budget_back(ledger: SpendLedger) -> None:
    ledger.create_rule(rule("day", limit="0.001"))
    first = ledger.reserve(Usage(cost_micro_usd=900), **CLOUD)
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Usage(cost_micro_usd=200), **CLOUD)
    ledger.release(first)
    ledger.release(first)  # twice is harmless
    ledger.reserve(Usage(cost_micro_usd=1000), **CLOUD)


def test_reservations_of_dead_processes_are_booked_at_start(sqlite_database: Database) -> None:
    database = sqlite_database
    ledger = SpendLedger(database)
    live = ledger.reserve(Usage(cost_micro_usd=5), **CLOUD, request_id="live")
    boot = orphans.owner().split(":")[0]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    parent = os.getppid()
    rows = [
        (gone.pid, f"{boot}:{gone.pid}:aa", "dead process"),
        (os.getpid(), f"{boot}:{os.getpid()}:bb", "earlier process with my pid"),
        (parent, f"another-boot:{parent}:cc", "before the last power cut"),
        (parent, f"{boot}:{parent}:dd", "a live process"),
    ]
    with database.write() as db:
        for pid, owner, note in rows:
            db.execute(
                "INSERT INTO reservations (ts, pid, owner, request_id, provider, model, is_local,"
                " prompt_tokens, completion_tokens, cost_micro_usd)"
                " VALUES (0, ?, ?, ?, 'openai', 'gpt-4o', 0, 100, 50, 750)",
                [pid, owner, note],
            )
    SpendLedger(database)  # a second ledger in this process must not drop the first's holds
    with database.read() as r:
        kept = {row[0] for row in r.execute("SELECT request_id FROM reservations")}
        booked = r.execute(
            "SELECT request_id, kind, prompt_tokens, completion_tokens, cost_micro_usd, ts "
            "FROM ledger ORDER BY request_id"
        ).fetchall()
    assert kept == {"live", "a live process"}
    # Never dropped: the upstream may have billed them, so they count at what they held.
    assert [tuple(row) for row in booked] == [
        ("before the last power cut", "orphaned", 100, 50, 750, 0),
        ("dead process", "orphaned", 100, 50, 750, 0),
        ("earlier process with my pid", "orphaned", 100, 50, 750, 0),
    ]
    assert SpendLedger(database).orphans_settled == 0  # booked once, never twice
    ledger.commit(live, Usage(cost_micro_usd=5))


def test_local_calls_cost_nothing_but_count_volume(ledger: SpendLedger) -> None:
    ledger.create_rule(rule("tok", metric="tokens", limit=100, period="total"))
    spend(ledger, Usage(prompt_tokens=60, cost_micro_usd=999), LOCAL)
    with pytest.raises(BudgetExceeded, match="never resets") as caught:
        ledger.reserve(Usage(prompt_tokens=30, completion_tokens=20), **LOCAL)
    assert caught.value.retry_after is None
    summary = ledger.usage_summary("total", "provider")
    assert summary[0]["cost_micro_usd"] == 0 and summary[0]["prompt_tokens"] == 60


# ---- actions and scopes --------------------------------------------------------------------


def test_cloud_scope_ignores_local_calls(ledger: SpendLedger) -> None:
    ledger.create_rule(rule("cloud-req", scope="cloud", metric="requests", limit=1))
    spend(ledger, Usage(), LOCAL)
    spend(ledger, Usage(), LOCAL)
    spend(ledger, Usage(cost_micro_usd=1), CLOUD)
    assert ledger.check(**LOCAL).allowed
    decision = ledger.check(**CLOUD)
    assert not decision.allowed and decision.rule.name == "cloud-req"
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Usage(), **CLOUD)


def test_local_only_rule_refuses_cloud_and_serves_local(ledger: SpendLedger) -> None:
    ledger.create_rule(rule("tokens-local-only", metric="tokens", limit=1000, action="local_only"))
    spend(ledger, Usage(prompt_tokens=600, cost_micro_usd=10), CLOUD)
    assert ledger.check(**CLOUD).allowed  # 600 < 1000: not yet
    with pytest.raises(BudgetExceeded, match="tokens-local-only"):
        ledger.reserve(Usage(prompt_tokens=300, completion_tokens=200), **CLOUD)
    local = ledger.reserve(Usage(prompt_tokens=300, completion_tokens=200), **LOCAL)
    assert [hit.rule.name for hit in local.fired] == ["tokens-local-only"]
    ledger.commit(local, Usage(prompt_tokens=300, completion_tokens=200))
    decision = ledger.check(**CLOUD)
    assert not decision.allowed and decision.rule.action == "local_only"
    assert isinstance(decision.error(), BudgetExceeded)
    assert ledger.check(**LOCAL).allowed


def test_warn_rule_reports_but_admits(ledger: SpendLedger) -> None:
    ledger.create_rule(rule("heads-up", limit="0.000010", action="warn"))
    first = ledger.reserve(Usage(cost_micro_usd=8), **CLOUD)
    assert first.fired == []
    second = ledger.reserve(Usage(cost_micro_usd=8), **CLOUD)
    assert len(second.warnings) == 1 and "heads-up" in second.warnings[0]
    assert ledger.check(**CLOUD).allowed


def test_scopes_by_provider_model_glob_and_key(ledger: SpendLedger) -> None:
    ledger.create_rule(rule("anthropic", scope="provider:anthropic", metric="requests", limit=0))
    ledger.create_rule(rule("minis", scope="model:gpt-4*-mini", metric="requests", limit=0))
    ledger.create_rule(rule("kid", scope="key:tablet", metric="requests", limit=0))
    ok = {"key": "laptop", "provider": "openai", "model": "gpt-4o", "is_local": False}
    assert ledger.check(**ok).allowed
    for change, name in (
        (("provider", "anthropic"), "anthropic"),
        (("model", "gpt-4.1-mini"), "minis"),
        (("key", "tablet"), "kid"),
    ):
        decision = ledger.check(**(ok | dict([change])))
        assert not decision.allowed and decision.rule.name == name


def test_unpriced_cloud_model_is_refused_under_a_usd_rule(ledger: SpendLedger) -> None:
    unknown = CLOUD | {"model": "mystery-9000"}
    ledger.create_rule(rule("req", metric="requests", limit=100))
    ledger.reserve(Usage(), **unknown, price_known=False)  # no usd rule in scope yet
    ledger.create_rule(rule("usd", scope="cloud", limit="5"))
    with pytest.raises(BudgetExceeded, match=r'\[pricing."mystery-9000"\]') as caught:
        ledger.reserve(Usage(), **unknown, price_known=False)
    assert caught.value.code == "price_unknown"
    assert ledger.check(**unknown, price_known=False).code == "price_unknown"
    ledger.reserve(Usage(), **LOCAL, price_known=False)  # local is free whatever its price


def test_audio_seconds_limit(ledger: SpendLedger) -> None:
    ledger.create_rule(rule("stt", metric="audio_seconds", limit=60, period="hour"))
    spend(ledger, Usage(audio_seconds=30.5, cost_micro_usd=3050))
    with pytest.raises(BudgetExceeded, match="30.5 used"):
        ledger.reserve(Usage(audio_seconds=30), **CLOUD)
    ledger.reserve(Usage(audio_seconds=29.5), **CLOUD)


def test_remaining_names_the_tightest_limiting_rule(ledger: SpendLedger) -> None:
    ledger.create_rule(rule("big", limit="10"))
    ledger.create_rule(rule("small", metric="requests", limit=4))
    ledger.create_rule(rule("noisy", limit="0.000001", action="warn"))
    spend(ledger, Usage(cost_micro_usd=1_000_000))
    spend(ledger, Usage(cost_micro_usd=1_000_000))
    found, left = ledger.remaining(**CLOUD)
    assert (found.name, left) == ("small", 2)  # 2 of 4 left beats 8 of 10
    ledger.delete_rule("small")
    found, left = ledger.remaining(**CLOUD)
    assert (found.name, found.format_amount(left)) == ("big", "8")
    ledger.delete_rule("big")
    assert ledger.remaining(**CLOUD) is None  # a warn rule never stops anything


# ---- periods -------------------------------------------------------------------------------


def test_day_rolls_over_at_local_midnight_not_utc(database: Database) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    clock = Clock(datetime(2025, 1, 15, 23, 30, tzinfo=berlin))
    ledger = SpendLedger(database, timezone="Europe/Berlin", clock=clock)
    ledger.create_rule(rule("day", limit="0.01"))
    spend(ledger, Usage(cost_micro_usd=10_000))
    with pytest.raises(BudgetExceeded) as caught:
        ledger.reserve(Usage(cost_micro_usd=1), **CLOUD)
    assert caught.value.retry_after == 1800
    assert "2025-01-16T00:00:00+01:00" in caught.value.message
    clock.now = datetime(2025, 1, 16, 0, 10, tzinfo=berlin)  # still 2025-01-15 in UTC
    ledger.reserve(Usage(cost_micro_usd=10_000), **CLOUD)


@pytest.mark.parametrize(
    ("period", "spent_at", "still_blocked_at", "free_at"),
    [
        ("hour", (2025, 3, 3, 10, 5), (2025, 3, 3, 10, 59), (2025, 3, 3, 11, 0)),
        ("week", (2025, 3, 3, 0, 0), (2025, 3, 9, 23, 59), (2025, 3, 10, 0, 0)),  # Mon..Sun
        ("month", (2025, 1, 31, 12, 0), (2025, 1, 31, 23, 59), (2025, 2, 1, 0, 0)),
        ("month", (2024, 12, 31, 23, 0), (2024, 12, 31, 23, 59), (2025, 1, 1, 0, 0)),
    ],
)
def test_period_rollover(database, period, spent_at, still_blocked_at, free_at) -> None:
    tz = ZoneInfo("America/New_York")
    clock = Clock(datetime(*spent_at, tzinfo=tz))
    ledger = SpendLedger(database, timezone="America/New_York", clock=clock)
    ledger.create_rule(rule("r", metric="requests", limit=1, period=period))
    spend(ledger, Usage())
    clock.now = datetime(*still_blocked_at, tzinfo=tz)
    assert not ledger.check(**CLOUD).allowed
    clock.now = datetime(*free_at, tzinfo=tz)
    assert ledger.check(**CLOUD).allowed
    assert ledger.usage_summary(period, "provider") == []
    assert ledger.usage_summary("total", "provider")[0]["requests"] == 1


def test_dst_days_are_23_and_25_hours_long() -> None:
    ny, berlin = ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin")
    start, end = period_bounds("day", datetime(2025, 3, 9, 12, tzinfo=ny), ny)
    assert end - start == timedelta(hours=23)
    start, end = period_bounds("day", datetime(2025, 10, 26, 12, tzinfo=berlin), berlin)
    assert end - start == timedelta(hours=25)
    start, end = period_bounds("week", datetime(2025, 10, 22, tzinfo=berlin), berlin)
    assert end - start == timedelta(days=7, hours=1)
    # The repeated 01:00 hour of a fall-back night is two different hours.
    first = period_bounds("hour", datetime(2025, 11, 2, 1, 30, fold=0, tzinfo=ny), ny)
    second = period_bounds("hour", datetime(2025, 11, 2, 1, 30, fold=1, tzinfo=ny), ny)
    assert first[1] == second[0] and second[1] - second[0] == timedelta(hours=1)
    # Hours in a half-hour zone start at half past in UTC.
    kolkata = ZoneInfo("Asia/Kolkata")
    start, _ = period_bounds("hour", datetime(2025, 5, 1, 10, 20, tzinfo=kolkata), kolkata)
    assert (start.hour, start.minute) == (4, 30)


def test_spend_on_a_dst_day_counts_until_local_midnight(database: Database) -> None:
    ny = ZoneInfo("America/New_York")
    clock = Clock(datetime(2025, 3, 9, 0, 30, tzinfo=ny))  # the 23-hour day
    ledger = SpendLedger(database, timezone="America/New_York", clock=clock)
    ledger.create_rule(rule("day", metric="requests", limit=1))
    spend(ledger, Usage())
    clock.now = datetime(2025, 3, 9, 23, 59, tzinfo=ny)
    decision = ledger.check(**CLOUD)
    assert not decision.allowed and decision.hit.retry_after == 60
    clock.now = datetime(2025, 3, 10, 0, 0, tzinfo=ny)
    assert ledger.check(**CLOUD).allowed


# ---- usage summary and rules -----------------------------------------------------------------


def test_usage_summary_groups_by_provider_model_and_key(ledger: SpendLedger) -> None:
    spend(ledger, Usage(prompt_tokens=10, cost_micro_usd=100), CLOUD)
    spend(ledger, Usage(prompt_tokens=5, cost_micro_usd=250), CLOUD | {"model": "gpt-4o"})
    spend(ledger, Usage(prompt_tokens=7, characters=9), LOCAL | {"key": "tablet"})
    by_provider = ledger.usage_summary("day", "provider")
    assert [(r["provider"], r["requests"], r["cost_usd"]) for r in by_provider] == [
        ("openai", 2, "0.00035"),
        ("local", 1, "0"),
    ]
    by_model = ledger.usage_summary("day", "model")
    assert [(r["model"], r["prompt_tokens"]) for r in by_model] == [
        ("gpt-4o", 5),
        ("gpt-4o-mini", 10),
        ("qwen2.5-0.5b", 7),
    ]
    by_key = {r["key"]: r for r in ledger.usage_summary("month", "key")}
    assert by_key["laptop"]["cost_micro_usd"] == 350 and by_key["tablet"]["characters"] == 9
    with pytest.raises(InvalidRequest) as caught:
        ledger.usage_summary("day", "colour")
    assert caught.value.param == "group_by"


def test_rule_crud_and_exact_limits(ledger: SpendLedger) -> None:
    created = ledger.create_rule(rule("r1", limit=0.1))  # a float, read as the decimal 0.1
    assert created.limit == 100_000 and created.to_dict()["limit"] == "0.1"
    assert ledger.get_rule("r1").source == "api"
    updated = ledger.update_rule("r1", {"limit": "2.5", "action": "warn"})
    assert (updated.limit, updated.action, updated.period) == (2_500_000, "warn", "day")
    assert [r.name for r in ledger.list_rules()] == ["r1"]
    with pytest.raises(InvalidRequest) as caught:
        ledger.create_rule(rule("r1"))
    assert caught.value.param == "name"
    with pytest.raises(InvalidRequest):
        ledger.update_rule("r1", {"name": "r2"})
    ledger.delete_rule("r1")
    with pytest.raises(NotFound):
        ledger.get_rule("r1")
    with pytest.raises(NotFound):
        ledger.delete_rule("r1")


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"limit": "0.0000001"}, "limit"),  # finer than a micro-dollar
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": True}, "limit"),
        ({"metric": "tokens", "limit": 1.5}, "limit"),
        ({"scope": "provider:"}, "scope"),
        ({"scope": "region:eu"}, "scope"),
        ({"metric": "euros"}, "metric"),
        ({"period": "fortnight"}, "period"),
        ({"action": "shout"}, "action"),
        ({"name": "has space"}, "name"),
        ({"colour": "red"}, "colour"),
        ({"limit": None}, "limit"),
    ],
)
def test_invalid_rules_name_the_field(ledger: SpendLedger, changes: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ledger.create_rule(rule("bad") | changes)
    assert caught.value.param == param


def test_seeding_makes_config_rules_true_and_keeps_api_rules(ledger: SpendLedger) -> None:
    config = [
        rule("cfg-daily", scope="cloud", limit="2"),
        rule("cfg-old", metric="requests", limit=9),
    ]
    ledger.seed_rules(config)
    ledger.create_rule(rule("mine", metric="tokens", limit=5000))
    ledger.update_rule("cfg-daily", {"limit": "50"})  # a live edit of a config rule
    ledger.seed_rules([config[0]])  # restart with cfg-old removed from the file
    rules = {r.name: r for r in ledger.list_rules()}
    assert set(rules) == {"cfg-daily", "mine"}
    assert rules["cfg-daily"].limit == 2_000_000 and rules["cfg-daily"].source == "config"
    assert rules["mine"].source == "api"
    with pytest.raises(InvalidRequest):
        ledger.seed_rules([config[0], config[0]])
    assert {r.name for r in ledger.list_rules()} == {"cfg-daily", "mine"}  # nothing half-applied


def test_database_file_is_a_plain_sqlite_file(tmp_path: Path) -> None:
    ledger = SpendLedger(Database.open(tmp_path))
    spend(ledger, Usage(cost_micro_usd=42))
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    assert conn.execute("SELECT SUM(cost_micro_usd) FROM ledger").fetchone()[0] == 42
    conn.close()


def test_running_totals_agree_with_the_ledger(ledger: SpendLedger) -> None:
    for _ in range(3):
        spend(ledger, Usage(prompt_tokens=100), CLOUD)
    spend(ledger, Usage(prompt_tokens=40), LOCAL)
    # A rule created after the spend still sees it (its total is summed from the ledger).
    ledger.create_rule(rule("tok", metric="tokens", limit=1000))
    assert ledger.remaining(**CLOUD)[1] == 1000 - 340
    spend(ledger, Usage(prompt_tokens=5, completion_tokens=5), LOCAL)  # kept in step on commit
    assert ledger.remaining(**CLOUD)[1] == 1000 - 350
    ledger.update_rule("tok", {"scope": "cloud"})  # a new scope: summed afresh
    assert ledger.remaining(**CLOUD)[1] == 1000 - 300
    with ledger.db.read() as r:
        stored = r.execute("SELECT used FROM budget_usage WHERE rule = 'tok'").fetchone()[0]
        cloud = r.execute(
            "SELECT SUM(prompt_tokens + completion_tokens) FROM ledger WHERE is_local = 0"
        ).fetchone()[0]
    assert stored == cloud == 300
    ledger.delete_rule("tok")
    with ledger.db.read() as r:
        assert r.execute("SELECT COUNT(*) FROM budget_usage").fetchone()[0] == 0


def test_a_correction_is_appended_and_counted_on_both_engines(ledger: SpendLedger) -> None:
    r = ledger.reserve(Usage(cost_micro_usd=900), **CLOUD, request_id="req-1")
    ledger.commit(r, Usage(cost_micro_usd=700))
    ledger.create_rule(rule("all-usd", scope="all", metric="usd", limit="1", period="total"))
    fixed = orphans.correct(ledger, "req-1", "0.0005", "invoice says less")
    assert fixed["was_usd"] == "0.0007" and fixed["now_usd"] == "0.0005" and fixed["entry"] > 0
    state = next(s for s in ledger.rule_states() if s.rule.name == "all-usd")
    assert state.used == 500  # the rule's total follows the correction
    summary = orphans.orphan_summary(ledger)
    assert summary["corrections"] == 1 and summary["corrections_usd"] == "-0.0002"
    with pytest.raises(NotFound):
        orphans.correct(ledger, "no-such-request", "0.1", "typo")
