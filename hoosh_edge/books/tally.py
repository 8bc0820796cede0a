"""A rule's state in its current period: committed use, open reservations, what is left.

This is the one place that computes a rule's figures; the gate (``SpendLedger.reserve`` and
``check``), the ``X-Hoosh-Budget-Remaining`` header, ``/admin/budgets``, the status page, the
``hoosh_budget_remaining`` gauge and ``hoosh-edge budget list`` all read ``RuleState``.

``used`` is committed use only (ledger rows of the period, kept as a running total in
``budget_usage``); open reservations are ``reserved``, apart, and count in full whatever their
start, because they commit in this period. ``remaining`` subtracts both, because the gate does: a
reservation is spend that may still come. A rule an upstream overran is ``closed`` for the rest
of its period and has nothing left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hoosh_edge.books.pricing import Usage
from hoosh_edge.books.rules import Rule, period_bounds, scope_matches, to_us

TOTALS = (
    "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
    "SUM(audio_ms) AS audio_ms, SUM(characters) AS characters, SUM(requests) AS requests, "
    "SUM(cost_micro_usd) AS cost_micro_usd"
)


@dataclass(frozen=True)
class RuleState:
    """A rule in its current period: the one read model of the gate, admin, status, metrics, CLI."""

    rule: Rule
    used: int  # committed, in the rule's measured unit (Rule.measured_limit)
    reserved: int  # open reservations in scope
    resets_at: datetime | None  # in the ledger's timezone; None for period 'total'
    closed: str | None = None  # why the rule is shut for the rest of its period, if it is

    @property
    def held(self) -> int:
        """What the gate counts: committed plus reserved, and the whole limit once closed."""
        held = self.used + self.reserved
        return max(held, self.rule.measured_limit) if self.closed else held

    @property
    def remaining(self) -> int:
        """What a new request may still reserve (>= 0)."""
        return max(0, self.rule.measured_limit - self.held)

    def figures(self) -> dict[str, str]:
        """``used``, ``reserved`` and ``remaining`` as exact decimal strings in the rule's unit."""
        fmt = self.rule.format_amount
        return {"used": fmt(self.used), "reserved": fmt(self.reserved),
                "remaining": fmt(self.remaining)}  # fmt: skip


def amount(metric: str, row: Any) -> int:
    """The metric's value in a row of totals (ledger or reservation columns)."""
    if metric == "usd":
        return row["cost_micro_usd"] or 0
    if metric == "tokens":
        return (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0)
    if metric == "audio_seconds":
        return row["audio_ms"] or 0
    return row[metric] or 0


def usage_row(usage: Usage, is_local: bool) -> dict[str, int]:
    """The usage columns of a ledger or reservation row."""
    return {
        "prompt_tokens": int(usage.prompt_tokens),
        "completion_tokens": int(usage.completion_tokens),
        "audio_ms": usage.audio_ms,
        "characters": int(usage.characters),
        "requests": int(usage.requests),
        # Local inference is free; only its volume counts.
        "cost_micro_usd": 0 if is_local else int(usage.cost_micro_usd),
    }


def sum_in_scope(rule: Rule, rows: list[Any]) -> int:
    """The rule's metric summed over the rows of totals that fall in its scope."""
    return sum(
        amount(rule.metric, row)
        for row in rows
        if scope_matches(
            rule.scope,
            key=row["api_key"],
            provider=row["provider"],
            model=row["model"],
            is_local=bool(row["is_local"]),
        )
    )


def stops(rule: Rule, is_local: bool) -> bool:
    """Whether ``rule`` refuses this kind of target when crossed (not just reports it)."""
    return rule.action == "block" or (rule.action == "local_only" and not is_local)


def grouped(db: Any, table: str, since: datetime | None) -> list[Any]:
    """Totals per (key, provider, model, locality): few groups, matched to scopes in Python."""
    where, params = ("", []) if since is None else ("WHERE ts >= ?", [to_us(since)])
    return db.execute(
        f"SELECT api_key, provider, model, is_local, {TOTALS} FROM {table} {where} "
        "GROUP BY api_key, provider, model, is_local",
        params,
    ).fetchall()


def period_key(rule: Rule, now: datetime, tz: ZoneInfo) -> int:
    """The ``budget_usage`` / ``budget_closures`` key of the rule's current period."""
    start, _ = period_bounds(rule.period, now, tz)
    return 0 if start is None else to_us(start)


def rule_states(
    db: Any, rules: list[Rule], now: datetime, tz: ZoneInfo, *, writable: bool
) -> tuple[list[RuleState], bool]:
    """Each rule's state in its period, and whether a running total was missing.

    A missing total (new rule, edited rule, new period) is summed from the ledger; with
    ``writable`` (inside a write transaction) it is stored too.
    """
    if not rules:
        return [], False
    reserved = grouped(db, "reservations", None)
    closures = {
        (row["rule"], row["period_start"]): row["reason"]
        for row in db.execute("SELECT rule, period_start, reason FROM budget_closures")
    }
    scans: dict[int, list[Any]] = {}
    missing = False
    out = []
    for rule in rules:
        start, end = period_bounds(rule.period, now, tz)
        key = 0 if start is None else to_us(start)
        row = db.execute(
            "SELECT used FROM budget_usage WHERE rule = ? AND period_start = ?", [rule.name, key]
        ).fetchone()
        if row is not None:
            committed = row[0]
        else:
            missing = True
            if key not in scans:
                scans[key] = grouped(db, "ledger", start)
            committed = sum_in_scope(rule, scans[key])
            if writable:
                # Totals of earlier periods are never read again.
                db.execute("DELETE FROM budget_usage WHERE rule = ?", [rule.name])
                db.execute(
                    "INSERT INTO budget_usage (rule, period_start, used) VALUES (?, ?, ?)",
                    [rule.name, key, committed],
                )
        resets = end.astimezone(tz) if end else None
        out.append(RuleState(rule, committed, sum_in_scope(rule, reserved), resets,
                             closures.get((rule.name, key))))  # fmt: skip
    return out, missing
