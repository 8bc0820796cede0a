"""Budget rules and their periods: what a rule is, what it covers, when its period starts.

A rule limits one metric over one period for the calls in its scope (see ``budget`` for how the
ledger enforces them). Periods are calendar-aligned in the ledger's IANA time zone.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hoosh_edge.books.money import MAX_MICRO_USD, format_usd, parse_decimal, parse_usd
from hoosh_edge.errors import InvalidRequest

UTC = timezone.utc
SCOPES = ("all", "cloud", "provider:NAME", "model:GLOB", "key:NAME")
METRICS = ("usd", "tokens", "requests", "audio_seconds", "characters")
PERIODS = ("hour", "day", "week", "month", "total")
ACTIONS = ("block", "local_only", "warn")
RULE_FIELDS = ("name", "scope", "metric", "limit", "period", "action")
MAX_LIMIT = MAX_MICRO_USD  # every limit lives in a signed 64-bit SQLite integer
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_UNITS = {
    "usd": "USD",
    "tokens": "tokens",
    "requests": "requests",
    "audio_seconds": "audio seconds",
    "characters": "characters",
}


# ---- periods -----------------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo:
    """The IANA timezone ``name``, or a 400 naming the bad value."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(
            f"Unknown timezone {name!r}; use an IANA name such as 'Europe/Berlin'.",
            param="timezone",
        ) from None


def to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch, exact (no float on the way)."""
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def period_bounds(
    period: str, now: datetime, tz: ZoneInfo
) -> tuple[datetime | None, datetime | None]:
    """[start, end) in UTC of the calendar ``period`` holding ``now`` in ``tz``; None for total."""
    local = now.astimezone(tz)
    if period == "total":
        return None, None
    if period == "hour":
        # Via the local wall clock, so half-hour zones get their own hour marks; end by adding
        # an absolute hour, so a DST jump never makes an hour of zero or two hours.
        start = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        return start, start + timedelta(hours=1)
    if period == "day":
        first, after = local.date(), local.date() + timedelta(days=1)
    elif period == "week":  # ISO weeks: Monday to Monday
        first = local.date() - timedelta(days=local.weekday())
        after = first + timedelta(days=7)
    elif period == "month":
        first = local.date().replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    # Local midnights: a DST day is 23 or 25 hours long, as the operator expects.
    return _midnight(first, tz), _midnight(after, tz)


# ---- rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A budget rule; ``limit`` is in the stored unit (micro-dollars for usd)."""

    name: str
    scope: str
    metric: str
    limit: int
    period: str
    action: str
    source: str = "api"

    @property
    def unit(self) -> str:
        return _UNITS[self.metric]

    def format_amount(self, amount: int) -> str:
        """An amount in this rule's measured unit, as people read it ('0.01' USD, '1.5' s)."""
        if self.metric == "usd":
            return format_usd(amount)
        if self.metric == "audio_seconds":
            return format(Decimal(amount) / 1000, "f").rstrip("0").rstrip(".") if amount else "0"
        return str(amount)

    @property
    def measured_limit(self) -> int:
        """The limit in the unit usage is measured in (audio is counted in milliseconds)."""
        return self.limit * 1000 if self.metric == "audio_seconds" else self.limit

    def to_dict(self) -> dict[str, Any]:
        """The API form: usd limits as exact decimal strings."""
        return {
            "name": self.name,
            "scope": self.scope,
            "metric": self.metric,
            "limit": format_usd(self.limit) if self.metric == "usd" else self.limit,
            "period": self.period,
            "action": self.action,
            "source": self.source,
        }


def rule_from_row(row: Any) -> Rule:
    """A rule from its ``budget_rules`` row."""
    return Rule(
        row["name"],
        row["scope"],
        row["metric"],
        row["limit_value"],
        row["period"],
        row["action"],
        row["source"],
    )


def scope_matches(
    scope: str, *, key: str | None, provider: str, model: str, is_local: bool
) -> bool:
    """Whether a call to this target falls under ``scope``."""
    if scope == "all":
        return True
    if scope == "cloud":
        return not is_local
    kind, _, value = scope.partition(":")
    if kind == "provider":
        return provider == value
    if kind == "model":
        return fnmatch.fnmatchcase(model, value)
    if kind == "key":
        return key == value
    return False


def _limit(metric: str, value: Any) -> int:
    """The stored limit: micro-dollars for usd (exact, at most 6 decimals), else an integer."""
    if metric == "usd":
        return parse_usd(value, "limit")
    amount = parse_decimal(value, "limit")
    if amount != amount.to_integral_value():
        raise InvalidRequest(f"a {metric} limit must be a whole number", param="limit")
    # The ledger stores it in a signed 64-bit SQLite integer (audio limits times 1000).
    if amount > MAX_LIMIT // (1000 if metric == "audio_seconds" else 1):
        raise InvalidRequest(f"limit {value!r:.40} is too large", param="limit")
    return int(amount)


def validate_rule(data: dict[str, Any], *, source: str) -> Rule:
    """A rule from its API or config form; ``InvalidRequest`` names the faulty field."""
    if not isinstance(data, dict):
        raise InvalidRequest("a budget rule must be an object", param=None)
    unknown = sorted(set(data) - set(RULE_FIELDS) - {"source"})
    if unknown:
        raise InvalidRequest(f"unknown budget rule field {unknown[0]!r}", param=unknown[0])
    for name in RULE_FIELDS:
        if data.get(name) is None:
            raise InvalidRequest(f"budget rule field '{name}' is required", param=name)
    for name in ("name", "scope", "metric", "period", "action"):
        if not isinstance(data[name], str):
            raise InvalidRequest(f"{name} must be a string", param=name)
    if not _NAME.match(data["name"]):
        raise InvalidRequest("name: 1-64 letters, digits, '.', '_', ':' or '-'", param="name")
    scope = data["scope"].strip()
    kind, colon, value = scope.partition(":")
    if not (
        scope in ("all", "cloud") or (colon and kind in ("provider", "model", "key") and value)
    ):
        raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}", param="scope")
    for name, allowed in (("metric", METRICS), ("period", PERIODS), ("action", ACTIONS)):
        if data[name] not in allowed:
            raise InvalidRequest(f"{name} must be one of {', '.join(allowed)}", param=name)
    return Rule(
        data["name"],
        scope,
        data["metric"],
        _limit(data["metric"], data["limit"]),
        data["period"],
        data["action"],
        source,
    )
