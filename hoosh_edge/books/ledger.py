"""Budget rules and the spend ledger: reserve before a call, commit (or release) after it.

A rule limits one metric over one period for the calls in its scope:

    name    any label, unique                         'cloud-daily'
    scope   all | cloud | provider:NAME | model:GLOB | key:NAME
    metric  usd | tokens | requests | audio_seconds | characters
    limit   usd as a decimal string or number (stored as integer micro-dollars); others integers
    period  hour | day | week | month (calendar-aligned in the ledger's timezone) | total
    action  block (refuse) | local_only (refuse cloud targets, serve local ones) | warn (report)

Money is integer micro-dollars everywhere; ``Decimal`` only where text meets numbers. A local call
costs nothing but still counts tokens, requests, audio seconds and characters.

The life of a paid request: ``reserve`` its worst case (checks every rule in scope against the
period's committed use plus all open reservations and records the reservation, in one
``BEGIN IMMEDIATE`` transaction, so concurrent requests can never together cross a ``block``
limit), then ``commit`` the real usage (ledger row written and reservation deleted in one
transaction) or ``release`` it. A reservation of a process that died is booked at its reserved
amount at start-up (``kind='orphaned'``; see ``orphans``): the upstream may well have billed it.
A commit above its reservation (an upstream counting differently) closes the stopping rules it
crossed for the rest of their period.
Committed use per rule and period is kept as a running total (``budget_usage``), updated in the
commit's transaction and summed afresh from the ledger whenever it is missing (new rule, edited
rule, new period), so a reservation costs the same with ten ledger rows or a million. What a rule
has used, holds and has left is read in one place, ``tally.RuleState``; the rules themselves are
kept by ``rulebook.RuleBook``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hoosh_edge.books import tally
from hoosh_edge.books.db import Database
from hoosh_edge.books.money import format_usd
from hoosh_edge.books.orphans import owner, settle_orphans
from hoosh_edge.books.pricing import Usage
from hoosh_edge.books.rulebook import RuleBook
from hoosh_edge.books.rules import (
    METRICS,
    PERIODS,
    Rule,
    period_bounds,
    rule_from_row,
    scope_matches,
    to_us,
)
from hoosh_edge.books.tally import RuleState
from hoosh_edge.errors import BudgetExceeded, InvalidRequest

__all__ = [
    "Usage",
    "Rule",
    "RuleHit",
    "Reservation",
    "RuleState",
    "Decision",
    "SpendLedger",
    "METRICS",
    "period_bounds",
]


@dataclass(frozen=True)
class RuleHit:
    """A rule that fired for a reservation or stops a target."""

    rule: Rule
    used: int  # committed plus reserved, in the rule's measured unit (Rule.measured_limit)
    needed: int  # what this request asked for
    resets_at: datetime | None
    retry_after: float | None
    closed: str | None = None  # why the rule is closed for the rest of its period, if it is

    @property
    def message(self) -> str:
        """A sentence naming the rule, its limit, the use and the reset."""
        r = self.rule
        when = (
            "it never resets (period 'total')"
            if self.resets_at is None
            else f"it resets at {self.resets_at.isoformat()}"
        )
        if self.closed:
            return (
                f"Budget rule '{r.name}' ({r.scope}, {r.action}) is closed until its period ends: "
                f"{self.closed}; {when}."
            )
        return (
            f"Budget rule '{r.name}' ({r.scope}, {r.action}) allows {r.format_amount(r.measured_limit)} "
            f"{r.unit} per {r.period}; {r.format_amount(self.used)} used or reserved, this request "
            f"needs up to {r.format_amount(self.needed)}; {when}."
        )


@dataclass
class Reservation:
    """An open hold on budget for one in-flight request."""

    id: int
    request_id: str | None
    key: str | None
    provider: str
    model: str
    is_local: bool
    estimate: Usage
    fired: list[RuleHit] = field(default_factory=list)  # local_only / warn rules crossed
    closed: bool = False
    overrun: list[str] = field(default_factory=list)  # stopping rules the commit went past

    @property
    def warnings(self) -> list[str]:
        """Messages of the rules that fired, for logs and response headers."""
        return [hit.message for hit in self.fired]


@dataclass(frozen=True)
class Decision:
    """May a target be used? If not, which rule stops it and why."""

    allowed: bool
    hit: RuleHit | None = None
    reason: str = ""
    code: str = "budget_exceeded"  # or 'price_unknown'

    @property
    def rule(self) -> Rule | None:
        return self.hit.rule if self.hit else None

    def error(self) -> BudgetExceeded:
        """The error to raise when the target was refused."""
        # No Retry-After for an unknown price: waiting will not make it known.
        retry = self.hit.retry_after if self.hit and self.code == "budget_exceeded" else None
        return BudgetExceeded(self.reason, retry_after=retry, code=self.code)


def _insert_row(db: Any, table: str, values: dict[str, Any]) -> int:
    """Insert one row inside the caller's transaction; return its id."""
    columns = ", ".join(values)
    marks = ", ".join("?" * len(values))
    sql = f"INSERT INTO {table} ({columns}) VALUES ({marks})"
    return db.execute(sql, list(values.values())).lastrowid


class SpendLedger(RuleBook):
    """Budget rules, reservations and the committed spend ledger in the gateway database."""

    def __init__(
        self, db: Database, *, timezone: str = "UTC", clock: Callable[[], datetime] | None = None
    ) -> None:
        super().__init__(db, timezone=timezone, clock=clock)
        self.orphans_settled = settle_orphans(self)

    # ---- evaluation --------------------------------------------------------------------------

    def _evaluate(
        self, db: Any, target: dict[str, Any], needed: Usage | None, *, writable: bool = True
    ) -> tuple[list[tuple[RuleState, int]], bool]:
        """(state, needed) for each rule in scope of ``target``, and whether a total was missing."""
        rules = [rule_from_row(r) for r in db.execute("SELECT * FROM budget_rules ORDER BY name")]
        rules = [r for r in rules if scope_matches(r.scope, **target)]
        states, missing = tally.rule_states(db, rules, self.now(), self.tz, writable=writable)
        need_row = tally.usage_row(needed, target["is_local"]) if needed else None
        return [(s, tally.amount(s.rule.metric, need_row) if need_row else 0)
                for s in states], missing  # fmt: skip

    def _evaluate_snapshot(self, target: dict[str, Any]) -> list[RuleState]:
        """Evaluate on the read connection; once per period per rule, store missing totals."""
        with self.db.read() as db:
            evaluated, missing = self._evaluate(db, target, None, writable=False)
        if missing:
            with self.db.write() as db:
                evaluated, _ = self._evaluate(db, target, None)
        return [state for state, _ in evaluated]

    def rule_states(self) -> list[RuleState]:
        """Every rule's state in its current period, read in one snapshot."""
        with self.db.read() as db:
            rules = [
                rule_from_row(r) for r in db.execute("SELECT * FROM budget_rules ORDER BY name")
            ]
            states, _ = tally.rule_states(db, rules, self.now(), self.tz, writable=False)
        return states

    def _hit(self, state: RuleState, needed: int) -> RuleHit:
        end = state.resets_at
        retry = None if end is None else max(0.0, (end - self.now()).total_seconds())
        return RuleHit(state.rule, state.held, needed, end, retry, state.closed)

    @staticmethod
    def _unbounded(model: str, what: str) -> str:
        return (
            f"The request holds {what}, whose token count has no known maximum for model "
            f"'{model}', and a usd or tokens budget rule applies to it, so it cannot be reserved. "
            f'Set max_image_tokens in [pricing."{model}"] (images), or send text only.'
        )

    @staticmethod
    def _unpriced(model: str) -> str:
        return (
            f"No price is known for model '{model}', and a USD budget rule applies to it, so it "
            f'cannot be counted. Set its price in the config: [pricing."{model}"] with '
            "input_usd_per_mtok and output_usd_per_mtok (or usd_per_audio_minute / usd_per_mchars)."
        )

    def reserve(
        self,
        estimate: Usage,
        *,
        key: str | None,
        provider: str,
        model: str,
        is_local: bool,
        request_id: str | None = None,
        price_known: bool = True,
        unbounded: str | None = None,
        fit: Callable[[list[tuple[Rule, int]]], Usage] | None = None,
    ) -> Reservation:
        """Hold ``estimate`` against every rule in scope, or raise ``BudgetExceeded``.

        ``unbounded`` names a part of the request with no known token maximum: refused under a
        usd or tokens rule. ``fit(stoppers)`` may shrink the estimate to what is left: it gets
        each rule that would stop this target with the room it has left, inside the same
        transaction, so the room cannot change before the reservation is written.
        """
        target = {"key": key, "provider": provider, "model": model, "is_local": is_local}
        fired: list[RuleHit] = []
        with self.db.write() as db:
            evaluated, _ = self._evaluate(db, target, estimate)
            metrics = {s.rule.metric for s, _ in evaluated}
            if not is_local and not price_known and "usd" in metrics:
                raise BudgetExceeded(self._unpriced(model), code="price_unknown")
            if unbounded and metrics & {"usd", "tokens"}:
                raise BudgetExceeded(self._unbounded(model, unbounded), code="price_unknown")
            if fit is not None:
                stoppers = [(s.rule, s.remaining) for s, _ in evaluated
                            if tally.stops(s.rule, is_local)]  # fmt: skip
                estimate = fit(stoppers)
                need_row = tally.usage_row(estimate, is_local)
                evaluated = [(s, tally.amount(s.rule.metric, need_row)) for s, _ in evaluated]
            for state, needed in evaluated:
                rule = state.rule
                if state.held + needed <= rule.measured_limit and not (state.closed and needed):
                    continue
                hit = self._hit(state, needed)
                if tally.stops(rule, is_local):
                    raise BudgetExceeded(hit.message, retry_after=hit.retry_after)
                fired.append(hit)
            fixed = {
                "ts": to_us(self.now()),
                "pid": os.getpid(),
                "owner": owner(),
                "request_id": request_id,
                "api_key": key,
                "provider": provider,
                "model": model,
                "is_local": int(is_local),
            }
            row = fixed | tally.usage_row(estimate, is_local)
            reservation_id = _insert_row(db, "reservations", row)
        return Reservation(
            reservation_id, request_id, key, provider, model, is_local, estimate, fired
        )

    def commit(self, reservation: Reservation, actual: Usage) -> int:
        """Record the real usage and drop the reservation, in one transaction; return the entry id.

        Paid calls commit with an fsync (safe from a power cut); free on-device calls without one
        (safe from a crash; made durable by the next paid commit).
        """
        if reservation.closed:
            raise RuntimeError(f"reservation {reservation.id} was already committed or released")
        row = tally.usage_row(actual, reservation.is_local)
        r = reservation
        now = self.now()
        target = {"key": r.key, "provider": r.provider, "model": r.model, "is_local": r.is_local}
        with self.db.write(durable=not reservation.is_local) as db:
            # Written even if the reservation vanished: the money was spent all the same.
            fixed = {
                "ts": to_us(now),
                "request_id": r.request_id,
                "api_key": r.key,
                "provider": r.provider,
                "model": r.model,
                "is_local": int(r.is_local),
            }
            entry = _insert_row(db, "ledger", fixed | row)
            reserved = db.execute("DELETE FROM reservations WHERE id = ?", [r.id]).rowcount
            held = tally.usage_row(r.estimate, r.is_local)
            # Keep the running totals in step; a missing one is summed from the ledger when read.
            for found in db.execute("SELECT * FROM budget_rules").fetchall():
                rule = rule_from_row(found)
                if scope_matches(rule.scope, **target):
                    period_key = tally.period_key(rule, now, self.tz)
                    db.execute(
                        "UPDATE budget_usage SET used = used + ? WHERE rule = ? AND period_start = ?",
                        [tally.amount(rule.metric, row), rule.name, period_key],
                    )
                    over = tally.amount(rule.metric, row) - tally.amount(rule.metric, held)
                    if reserved and over > 0 and tally.stops(rule, r.is_local):
                        # The upstream counted past the bound: trust nothing more this period.
                        reason = (
                            f"request {r.request_id} was billed {rule.format_amount(over)} "
                            f"{rule.unit} more than it reserved"
                        )
                        db.execute(
                            "INSERT OR IGNORE INTO budget_closures "
                            "(rule, period_start, ts, request_id, reason) VALUES (?, ?, ?, ?, ?)",
                            [rule.name, period_key, to_us(now), r.request_id, reason],
                        )
                        reservation.overrun.append(rule.name)
        reservation.closed = True
        return entry

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose call spent nothing (failed before the upstream billed)."""
        if reservation.closed:
            return
        with self.db.write() as db:
            db.execute("DELETE FROM reservations WHERE id = ?", [reservation.id])
        reservation.closed = True

    def check(
        self,
        *,
        key: str | None,
        provider: str,
        model: str,
        is_local: bool,
        price_known: bool = True,
    ) -> Decision:
        """Whether a target may be tried now, without reserving anything."""
        target = {"key": key, "provider": provider, "model": model, "is_local": is_local}
        states = self._evaluate_snapshot(target)
        for state in states:
            if state.rule.metric == "usd" and not is_local and not price_known:
                return Decision(False, self._hit(state, 0), self._unpriced(model), "price_unknown")
        for state in states:
            if tally.stops(state.rule, is_local) and state.held >= state.rule.measured_limit:
                hit = self._hit(state, 0)
                return Decision(False, hit, hit.message)
        return Decision(True)

    def remaining(
        self, *, key: str | None, provider: str, model: str, is_local: bool
    ) -> tuple[Rule, int] | None:
        """The tightest limiting rule for a target and what is left (measured unit, >= 0)."""
        target = {"key": key, "provider": provider, "model": model, "is_local": is_local}
        best: tuple[Rule, int] | None = None
        best_share = 2.0
        for state in self._evaluate_snapshot(target):
            rule, left = state.rule, state.remaining
            if not tally.stops(rule, is_local):
                continue  # these never stop this target
            share = left / rule.measured_limit if rule.measured_limit else 0.0
            if share < best_share:
                best, best_share = (rule, left), share
        return best

    def usage_summary(self, period: str, group_by: str) -> list[dict[str, Any]]:
        """Committed use in the current ``period``, one dict per provider, model or key."""
        if period not in PERIODS:
            raise InvalidRequest(f"period must be one of {', '.join(PERIODS)}", param="period")
        columns = {"provider": "provider", "model": "model", "key": "api_key"}
        if group_by not in columns:
            raise InvalidRequest("group_by must be provider, model or key", param="group_by")
        start, end = period_bounds(period, self.now(), self.tz)
        where, params = ("", []) if start is None else ("WHERE ts >= ?", [to_us(start)])
        column = columns[group_by]
        with self.db.read() as db:
            rows = db.execute(
                f"SELECT {column} AS grp, {tally.TOTALS}, SUM(CASE WHEN kind = 'orphaned' THEN 1 ELSE 0 END) AS orphaned, "
                "SUM(CASE WHEN kind = 'orphaned' THEN cost_micro_usd ELSE 0 END) AS orphaned_micro "
                f"FROM ledger {where} GROUP BY {column} "
                "ORDER BY SUM(cost_micro_usd) DESC, SUM(requests) DESC, grp",
                params,
            ).fetchall()
        return [
            {
                group_by: row["grp"],
                "period": period,
                "period_start": start.isoformat() if start else None,
                "period_end": end.isoformat() if end else None,
                "requests": row["requests"],
                "prompt_tokens": row["prompt_tokens"],
                "completion_tokens": row["completion_tokens"],
                "audio_seconds": row["audio_ms"] / 1000,
                "characters": row["characters"],
                "cost_micro_usd": row["cost_micro_usd"],
                "cost_usd": format_usd(row["cost_micro_usd"]),
                # Calls in flight at a crash, booked at their reservation (see orphans.py).
                "orphaned": row["orphaned"] or 0,
                "orphaned_usd": format_usd(row["orphaned_micro"] or 0),
            }
            for row in rows
        ]
