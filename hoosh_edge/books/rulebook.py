"""Budget rules in the database: list, create, edit, delete, and seeding from the config.

Rules from the config file are seeded at start-up with ``source='config'``: the config is their
truth, so a live edit to one lasts until the config is applied again, and a config rule removed
from the file is deleted. Rules created through the API (``source='api'``) are never touched by
seeding, unless the config later defines a rule of the same name, which then takes it over.
Every change drops the rule's running totals (``budget_usage``): they follow its scope and period.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from hoosh_edge.books.db import Database
from hoosh_edge.books.rules import UTC, Rule, rule_from_row, validate_rule, zone
from hoosh_edge.errors import InvalidRequest, NotFound


class RuleBook:
    """The ``budget_rules`` table, in the ledger's timezone and on its clock."""

    def __init__(
        self, db: Database, *, timezone: str = "UTC", clock: Callable[[], datetime] | None = None
    ) -> None:
        self.db = db
        self.tz = zone(timezone)
        self._clock = clock or (lambda: datetime.now(tz=UTC))

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
            # "NOT IN ()" is SQLite only: with no config rules, every config rule goes.
            keep = f" AND name NOT IN ({placeholders})" if names else ""
            db.execute(f"DELETE FROM budget_rules WHERE source = 'config'{keep}", names)
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
