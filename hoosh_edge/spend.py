"""The budget gate between the router and the ledger: check, reserve, commit, release.

Every request is booked: on-device calls at 0 USD (they still count tokens, requests, audio seconds
and characters), cloud calls at the price table's rate. A cloud call reserves its worst case first,
so concurrent requests can never together cross a ``block`` rule. Database writes run in a pool
thread: an fsync on an SD card must not stall the hub.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from .budget import Reservation, SpendLedger, Usage
from .errors import BudgetExceeded
from .pricing import Price, PriceTable, cost_micro_usd, format_usd
from .threads import run_books

log = logging.getLogger(__name__)

# Completion tokens assumed for a cloud call that names no limit, when budget rules apply.
DEFAULT_MAX_TOKENS = 4096


@dataclass
class Hold:
    """What one admitted call holds: its reservation and how to price it."""

    reservation: Reservation
    price: Price | None
    provider: str
    model: str
    is_local: bool
    cost_micro_usd: int = 0
    committed: bool = False

    @property
    def cost_usd(self) -> float:
        return self.cost_micro_usd / 1_000_000

    @property
    def cost_usd_text(self) -> str:
        return format_usd(self.cost_micro_usd)


def estimate_prompt_tokens(text: str) -> int:
    """A cautious prompt estimate for a reservation (3 characters a token, rounded up)."""
    return max(1, math.ceil(len(text) / 3))


class Accountant:
    """Budgets and prices for the router and the API."""

    def __init__(self, ledger: SpendLedger, prices: PriceTable) -> None:
        self.ledger = ledger
        self.prices = prices
        self.metrics: Any = None  # counts spend for /metrics when set
        self._has_rules = False
        self._rules_checked_at = -1e9

    def price_of(self, provider: str, model: str, is_local: bool) -> Price | None:
        return None if is_local else self.prices.lookup(provider, model)

    def rules_changed(self) -> None:
        """Rules were edited in this process: look again on the next request."""
        self._rules_checked_at = -1e9

    def has_rules(self) -> bool:
        """Whether any budget rule exists (re-read at most once a second: rules change live)."""
        now = time.monotonic()
        if now - self._rules_checked_at > 1.0:
            self._has_rules = bool(self.ledger.list_rules())
            self._rules_checked_at = now
        return self._has_rules

    def admit(
        self,
        *,
        provider: str,
        model: str,
        is_local: bool,
        estimate: Usage,
        key: str | None,
        request_id: str | None,
    ) -> Hold:
        """Reserve ``estimate`` for this target, or raise BudgetExceeded naming the rule."""
        price = self.price_of(provider, model, is_local)
        if price is not None:
            try:
                estimate.cost_micro_usd = cost_micro_usd(price, estimate)
            except ValueError:
                price = None  # the model is priced, but not for this kind of use
        if not self.has_rules():
            # Nothing to gate: skip the reservation write; the commit still books every call.
            open_hold = Reservation(-1, request_id, key, provider, model, is_local, estimate)
            return Hold(open_hold, price, provider, model, is_local)
        reservation = run_books(
            self.ledger.reserve,
            estimate,
            key=key,
            provider=provider,
            model=model,
            is_local=is_local,
            request_id=request_id,
            price_known=is_local or price is not None,
        )
        for message in reservation.warnings:
            log.warning("request %s: %s", request_id, message)
        return Hold(reservation, price, provider, model, is_local)

    def commit(self, hold: Hold, actual: Usage) -> None:
        """Book what the call really used (never raises: a failure is logged loudly)."""
        if hold.committed:
            return
        if hold.price is not None and not hold.is_local:
            try:
                actual.cost_micro_usd = cost_micro_usd(hold.price, actual)
            except ValueError:
                actual.cost_micro_usd = hold.reservation.estimate.cost_micro_usd
        hold.cost_micro_usd = 0 if hold.is_local else actual.cost_micro_usd
        try:
            if hold.is_local or self.ledger.db.synchronous == "NORMAL":
                # No fsync in this commit: a few dozen microseconds, cheaper than a thread hop.
                self.ledger.commit(hold.reservation, actual)
            else:
                run_books(self.ledger.commit, hold.reservation, actual)
            hold.committed = True
            if self.metrics is not None and hold.cost_micro_usd:
                self.metrics.inc("hoosh_spend_usd_total", {"provider": hold.provider},
                                 hold.cost_micro_usd / 1_000_000, help="USD spent")  # fmt: skip
        except Exception:  # noqa: BLE001 - the answer is already out; keep serving, shout
            log.exception("could not record spend for %s:%s", hold.provider, hold.model)

    def release(self, hold: Hold) -> None:
        """Give back a hold whose call failed before anything was billed."""
        if hold.committed:
            return
        try:
            run_books(self.ledger.release, hold.reservation)
        except Exception:  # noqa: BLE001
            log.exception("could not release a reservation")

    def remaining_header(self, *, key: str | None, provider: str, model: str,
                         is_local: bool) -> str | None:  # fmt: skip
        """``X-Hoosh-Budget-Remaining``: the tightest rule in scope and what is left."""
        found = self.ledger.remaining(key=key, provider=provider, model=model, is_local=is_local)
        if found is None:
            return None
        rule, left = found
        return f"{rule.format_amount(left)} {rule.unit} ({rule.name})"


def chat_usage(usage: dict[str, Any]) -> Usage:
    """A ledger Usage from an OpenAI usage dict."""
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        requests=1,
    )


def refused(exc: BudgetExceeded) -> bool:
    """A budget refusal of one target: the router may try the next."""
    return isinstance(exc, BudgetExceeded)
