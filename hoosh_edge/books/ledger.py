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
rule, new period), so a reservation costs the same with ten ledger rows or a million.

Rules from the config file are seeded at start-up with ``source='config'``: the config is their
truth, so a live edit to one lasts until the config is applied again, and a config rule removed
from the file is deleted. Rules created through the API (``source='api'``) are never touched by
seeding, unless the config later defines a rule of the same name, which then takes it over.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hoosh_edge.books.db import Database
from hoosh_edge.books.money import format_usd
from hoosh_edge.books.orphans import owner, settle_orphans
from hoosh_edge.books.pricing import Usage
from hoosh_edge.books.rules import (
    METRICS,
    PERIODS,
    UTC,
    Rule,
    period_bounds,
    rule_from_row,
    scope_matches,
    to_us,
    validate_rule,
    zone,
)
from hoosh_edge.errors import BudgetExceeded, InvalidRequest, NotFound

__all__ = [
    "Usage",
    "Rule",
    "RuleHit",
    "Reservation",
    "RuleState",
    "Decision",
    "SpendLedger",
    "METRICS",
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


@dataclass(frozen=True)
class RuleState:
    """A rule in its current period: the one read model of admin, status, metrics and the CLI.

    ``used`` is committed use only; open reservations are ``reserved``, apart. What is left
    counts both, because the gate does: a reservation is spend that may still come.
    """

    rule: Rule
    used: int
    reserved: int
    resets_at: datetime | None
    closed: str | None = None

    @property
    def remaining(self) -> int:
        if self.closed:
            return 0
        return max(0, self.rule.measured_limit - self.used - self.reserved)


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


_TOTALS = (
    "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
    "SUM(audio_ms) AS audio_ms, SUM(characters) AS characters, SUM(requests) AS requests, "
    "SUM(cost_micro_usd) AS cost_micro_usd"
)


def _amount(metric: str, row: Any) -> int:
    """The metric's value in a row of totals (ledger or reservation columns)."""
    if metric == "usd":
        return row["cost_micro_usd"] or 0
    if metric == "tokens":
        return (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0)
    if metric == "audio_seconds":
        return row["audio_ms"] or 0
    return row[metric] or 0


def _usage_row(usage: Usage, is_local: bool) -> dict[str, int]:
    return {
        "prompt_tokens": int(usage.prompt_tokens),
        "completion_tokens": int(usage.completion_tokens),
        "audio_ms": usage.audio_ms,
        "characters": int(usage.characters),
        "requests": int(usage.requests),
        # Local inference is free; only its volume counts.
        "cost_micro_usd": 0 if is_local else int(usage.cost_micro_usd),
    }


def _insert_row(db: Any, table: str, values: dict[str, Any]) -> int:
    """Insert one row inside the caller's transaction; return its id."""
    columns = ", ".join(values)
    marks = ", ".join("?" * len(values))
    sql = f"INSERT INTO {table} ({columns}) VALUES ({marks})"
    return db.execute(sql, list(values.values())).lastrowid


def _sum_in_scope(rule: Rule, rows: list[Any]) -> int:
    """The rule's metric summed over the rows of totals that fall in its scope."""
    return sum(
        _amount(rule.metric, row)
        for row in rows
        if scope_matches(
            rule.scope,
            key=row["api_key"],
            provider=row["provider"],
            model=row["model"],
            is_local=bool(row["is_local"]),
        )
    )


def _stops(rule: Rule, is_local: bool) -> bool:
    """Whether ``rule`` refuses this kind of target when crossed (not just reports it)."""
    return rule.action == "block" or (rule.action == "local_only" and not is_local)


class SpendLedger:
    """Budget rules, reservations and the committed spend ledger in the gateway database."""

    def __init__(
        self, db: Database, *, timezone: str = "UTC", clock: Callable[[], datetime] | None = None
    ) -> None:
        self.db = db
        self.tz = zone(timezone)
        self._clock = clock or (lambda: datetime.now(tz=UTC))
        self.orphans_settled = settle_orphans(self)

    def now(self) -> datetime:
        """The current time, from the injected clock when there is one."""
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return an aware datetime")
        return now

    # ---- rules -------------------------------------------------------------------------------

    def list_rules(self) -> list[Rule]:
        """Every rule, by name."""
        with self.db.read() as db:
            return [
                rule_from_row(r) for r in db.execute("SELECT * FROM budget_rules ORDER BY name")
            ]

    def get_rule(self, name: str) -> Rule:
        """One rule by name; ``NotFound`` if there is none."""
        with self.db.read() as db:
            row = db.execute("SELECT * FROM budget_rules WHERE name = ?", [name]).fetchone()
        if row is None:
            raise NotFound(f"No budget rule named '{name}'.", param="name")
        return rule_from_row(row)

    def create_rule(self, data: dict[str, Any]) -> Rule:
        """Create a rule from its API form; ``InvalidRequest`` if invalid or the name is taken."""
        rule = validate_rule(data, source="api")
        stamp = self.now().astimezone(UTC).isoformat()
        with self.db.write() as db:
            if db.execute("SELECT 1 FROM budget_rules WHERE name = ?", [rule.name]).fetchone():
                raise InvalidRequest(
                    f"A budget rule named '{rule.name}' already exists.",
                    param="name",
                    code="rule_exists",
                )
            db.execute("DELETE FROM budget_usage WHERE rule = ?", [rule.name])
            self._insert(db, rule, stamp)
        return rule

    def update_rule(self, name: str, changes: dict[str, Any]) -> Rule:
        """Change some fields of a rule (not its name); ``NotFound`` if there is none."""
        if "name" in changes and changes["name"] != name:
            raise InvalidRequest(
                "A budget rule cannot be renamed; delete and create it.", param="name"
            )
        stamp = self.now().astimezone(UTC).isoformat()
        with self.db.write() as db:
            row = db.execute("SELECT * FROM budget_rules WHERE name = ?", [name]).fetchone()
            if row is None:
                raise NotFound(f"No budget rule named '{name}'.", param="name")
            merged = {**rule_from_row(row).to_dict(), **changes, "name": name}
            merged.pop("source", None)
            rule = validate_rule(merged, source=row["source"])
            db.execute("DELETE FROM budget_usage WHERE rule = ?", [name])
            db.execute(
                "UPDATE budget_rules SET scope=?, metric=?, limit_value=?, period=?, action=?, "
                "updated_at=? WHERE name=?",
                [rule.scope, rule.metric, rule.limit, rule.period, rule.action, stamp, name],
            )
        return rule

    def delete_rule(self, name: str) -> None:
        """Delete a rule; ``NotFound`` if there is none."""
        with self.db.write() as db:
            db.execute("DELETE FROM budget_usage WHERE rule = ?", [name])
            if not db.execute("DELETE FROM budget_rules WHERE name = ?", [name]).rowcount:
                raise NotFound(f"No budget rule named '{name}'.", param="name")

    def seed_rules(self, rules_from_config: list[dict[str, Any]]) -> list[Rule]:
        """Make the config's rules true (upsert by name, drop config rules no longer listed)."""
        rules = [validate_rule(data, source="config") for data in rules_from_config]
        names = [r.name for r in rules]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise InvalidRequest(f"Budget rule '{duplicate}' is defined twice.", param="name")
        stamp = self.now().astimezone(UTC).isoformat()
        with self.db.write() as db:
            placeholders = ",".join("?" * len(names))
            db.execute(
                f"DELETE FROM budget_rules WHERE source = 'config' AND name NOT IN ({placeholders})",
                names,
            )
            # Running totals follow a rule's scope and period: start them afresh.
            db.execute("DELETE FROM budget_usage WHERE rule NOT IN (SELECT name FROM budget_rules)")
            for rule in rules:
                db.execute("DELETE FROM budget_usage WHERE rule = ?", [rule.name])
                db.execute("DELETE FROM budget_rules WHERE name = ?", [rule.name])
                self._insert(db, rule, stamp)
        return rules

    @staticmethod
    def _insert(db: Any, rule: Rule, stamp: str) -> None:
        db.execute(
            "INSERT INTO budget_rules (name, scope, metric, limit_value, period, action, source, "
            "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                rule.name,
                rule.scope,
                rule.metric,
                rule.limit,
                rule.period,
                rule.action,
                rule.source,
                stamp,
                stamp,
            ],
        )

    # ---- evaluation --------------------------------------------------------------------------

    def _evaluate(
        self, db: Any, target: dict[str, Any], needed: Usage | None, *, writable: bool = True
    ) -> tuple[list[tuple[Rule, int, int, str | None]], bool]:
        """(rule, used, needed, closed) for each rule in scope, and whether a total was missing.

        ``used`` is the committed use in the rule's current period (its running total in
        ``budget_usage``, summed from the ledger and stored when missing) plus every open
        reservation in scope, which counts in full whatever its start: it commits in this period.
        ``closed`` says why a rule an upstream overran is shut for the rest of its period; its
        ``used`` is then at least its limit.
        """
        rules = [rule_from_row(r) for r in db.execute("SELECT * FROM budget_rules ORDER BY name")]
        rules = [r for r in rules if scope_matches(r.scope, **target)]
        if not rules:
            return [], False
        now = self.now()
        reserved = self._grouped(db, "reservations", None)
        closures = {
            (row["rule"], row["period_start"]): row["reason"]
            for row in db.execute("SELECT rule, period_start, reason FROM budget_closures")
        }
        scans: dict[int, list[Any]] = {}
        missing = False
        result = []
        need_row = _usage_row(needed, target["is_local"]) if needed else None
        for rule in rules:
            start, _ = period_bounds(rule.period, now, self.tz)
            key = 0 if start is None else to_us(start)
            row = db.execute(
                "SELECT used FROM budget_usage WHERE rule = ? AND period_start = ?",
                [rule.name, key],
            ).fetchone()
            if row is not None:
                committed = row[0]
            else:
                missing = True
                if key not in scans:
                    scans[key] = self._grouped(db, "ledger", start)
                committed = _sum_in_scope(rule, scans[key])
                if writable:
                    # Totals of earlier periods are never read again.
                    db.execute("DELETE FROM budget_usage WHERE rule = ?", [rule.name])
                    db.execute(
                        "INSERT INTO budget_usage (rule, period_start, used) VALUES (?, ?, ?)",
                        [rule.name, key, committed],
                    )
            used = committed + _sum_in_scope(rule, reserved)
            closed = closures.get((rule.name, key))
            if closed:
                used = max(used, rule.measured_limit)
            need = _amount(rule.metric, need_row) if need_row else 0
            result.append((rule, used, need, closed))
        return result, missing

    def rule_states(self) -> list[RuleState]:
        """Every rule's state in its current period, read in one snapshot."""
        now = self.now()
        out = []
        with self.db.read() as db:
            rules = [
                rule_from_row(r) for r in db.execute("SELECT * FROM budget_rules ORDER BY name")
            ]
            reserved = self._grouped(db, "reservations", None)
            closures = {(row["rule"], row["period_start"]): row["reason"]
                        for row in db.execute("SELECT rule, period_start, reason FROM budget_closures")}  # fmt: skip
            scans: dict[int, list[Any]] = {}
            for rule in rules:
                start, end = period_bounds(rule.period, now, self.tz)
                key = 0 if start is None else to_us(start)
                if key not in scans:
                    scans[key] = self._grouped(db, "ledger", start)
                out.append(RuleState(rule, _sum_in_scope(rule, scans[key]),
                                     _sum_in_scope(rule, reserved), end,
                                     closures.get((rule.name, key))))  # fmt: skip
        return out

    def rule_usage(self, rule: Rule) -> int:
        """Committed plus reserved use of ``rule`` in its current period (its measured unit)."""
        start, _ = period_bounds(rule.period, self.now(), self.tz)
        with self.db.read() as db:
            committed = self._grouped(db, "ledger", start)
            reserved = self._grouped(db, "reservations", None)
        return _sum_in_scope(rule, committed) + _sum_in_scope(rule, reserved)

    def _evaluate_snapshot(self, target: dict[str, Any]) -> list[tuple[Rule, int, int, str | None]]:
        """Evaluate on the read connection; once per period per rule, store missing totals."""
        with self.db.read() as db:
            evaluated, missing = self._evaluate(db, target, None, writable=False)
        if missing:
            with self.db.write() as db:
                evaluated, _ = self._evaluate(db, target, None)
        return evaluated

    @staticmethod
    def _grouped(db: Any, table: str, since: datetime | None) -> list[Any]:
        """Totals per (key, provider, model, locality): few groups, matched to scopes in Python."""
        where, params = ("", []) if since is None else ("WHERE ts >= ?", [to_us(since)])
        return db.execute(
            f"SELECT api_key, provider, model, is_local, {_TOTALS} FROM {table} {where} "
            "GROUP BY api_key, provider, model, is_local",
            params,
        ).fetchall()

    def _hit(self, rule: Rule, used: int, needed: int, closed: str | None = None) -> RuleHit:
        now = self.now()
        _, end = period_bounds(rule.period, now, self.tz)
        retry = None if end is None else max(0.0, (end - now).total_seconds())
        resets = end.astimezone(self.tz) if end else None
        return RuleHit(rule, used, needed, resets, retry, closed)

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
            metrics = {r.metric for r, _, _, _ in evaluated}
            if not is_local and not price_known and "usd" in metrics:
                raise BudgetExceeded(self._unpriced(model), code="price_unknown")
            if unbounded and metrics & {"usd", "tokens"}:
                raise BudgetExceeded(self._unbounded(model, unbounded), code="price_unknown")
            if fit is not None:
                stoppers = [(r, max(0, r.measured_limit - used)) for r, used, _, _ in evaluated
                            if _stops(r, is_local)]  # fmt: skip
                estimate = fit(stoppers)
                need_row = _usage_row(estimate, is_local)
                evaluated = [(r, u, _amount(r.metric, need_row), c) for r, u, _, c in evaluated]
            for rule, used, needed, closed in evaluated:
                if used + needed <= rule.measured_limit and not (closed and needed):
                    continue
                hit = self._hit(rule, used, needed, closed)
                if _stops(rule, is_local):
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
            reservation_id = _insert_row(db, "reservations", fixed | _usage_row(estimate, is_local))
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
        row = _usage_row(actual, reservation.is_local)
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
            held = _usage_row(r.estimate, r.is_local)
            # Keep the running totals in step; a missing one is summed from the ledger when read.
            for found in db.execute("SELECT * FROM budget_rules").fetchall():
                rule = rule_from_row(found)
                if scope_matches(rule.scope, **target):
                    start, _ = period_bounds(rule.period, now, self.tz)
                    period_key = 0 if start is None else to_us(start)
                    db.execute(
                        "UPDATE budget_usage SET used = used + ? WHERE rule = ? AND period_start = ?",
                        [_amount(rule.metric, row), rule.name, period_key],
                    )
                    over = _amount(rule.metric, row) - _amount(rule.metric, held)
                    if reserved and over > 0 and _stops(rule, r.is_local):
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
        evaluated = self._evaluate_snapshot(target)
        for rule, used, _, _ in evaluated:
            if rule.metric == "usd" and not is_local and not price_known:
                return Decision(
                    False, self._hit(rule, used, 0), self._unpriced(model), "price_unknown"
                )
        for rule, used, _, closed in evaluated:
            if _stops(rule, is_local) and used >= rule.measured_limit:
                hit = self._hit(rule, used, 0, closed)
                return Decision(False, hit, hit.message)
        return Decision(True)

    def remaining(
        self, *, key: str | None, provider: str, model: str, is_local: bool
    ) -> tuple[Rule, int] | None:
        """The tightest limiting rule for a target and what is left (measured unit, >= 0)."""
        target = {"key": key, "provider": provider, "model": model, "is_local": is_local}
        evaluated = self._evaluate_snapshot(target)
        best: tuple[Rule, int] | None = None
        best_share = 2.0
        for rule, used, _, _ in evaluated:
            if not _stops(rule, is_local):
                continue  # these never stop this target
            left = max(0, rule.measured_limit - used)
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
                f"SELECT {column} AS grp, {_TOTALS}, SUM(kind = 'orphaned') AS orphaned, "
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
