"""The budget gate between the router and the ledger: check, reserve, commit, release.

Every request is booked: on-device calls at 0 USD (they still count tokens, requests, audio seconds
and characters), cloud calls at the price table's rate. A cloud call reserves its worst case first,
so concurrent requests can never together cross a ``block`` rule. Database writes run in a pool
thread: an fsync on an SD card must not stall the hub.

When the disk takes no writes (``StorageUnavailable``): a paid call whose reservation cannot be
written is refused before it goes upstream (with no rules, a reservation is written anyway while
the storage is known to be failing, so no paid call goes out unbooked); a free on-device call is
admitted on a read-only check of the rules, and whatever usage cannot be committed waits in
memory (``pending.PendingBooks``) until a write succeeds again.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from hoosh_edge.books.ledger import Reservation, Rule, SpendLedger, Usage
from hoosh_edge.books.money import format_usd
from hoosh_edge.books.pending import PendingBooks, PendingEntry
from hoosh_edge.books.pricing import Price, PriceTable, cost_micro_usd
from hoosh_edge.errors import BudgetExceeded, StorageUnavailable
from hoosh_edge.estimate import MIN_ANSWER_TOKENS
from hoosh_edge.threads import run_books

log = logging.getLogger(__name__)


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
    max_tokens: int | None = None  # the completion limit the gateway chose, to send upstream

    @property
    def cost_usd(self) -> float:
        return self.cost_micro_usd / 1_000_000

    @property
    def cost_usd_text(self) -> str:
        return format_usd(self.cost_micro_usd)


def affordable_tokens(estimate: Usage, price: Price | None, stoppers: list[tuple[Rule, int]],
                      ceiling: int) -> int:  # fmt: skip
    """The most completion tokens, up to ``ceiling``, that every stopping rule has room for."""
    n = ceiling
    for rule, left in stoppers:
        if rule.metric == "usd" and price is not None and price.output_usd_per_mtok:
            # ceil(p*in + n*out) <= left  <=>  p*in + n*out <= left (left is whole micro-dollars)
            prompt = estimate.prompt_tokens * (price.input_usd_per_mtok or Decimal(0))
            n = min(n, math.floor((left - prompt) / price.output_usd_per_mtok))
        elif rule.metric == "tokens":
            n = min(n, left - estimate.prompt_tokens)
    return n


class Accountant:
    """Budgets and prices for the router and the API."""

    def __init__(
        self, ledger: SpendLedger, prices: PriceTable, pending: PendingBooks | None = None
    ) -> None:
        self.ledger = ledger
        self.prices = prices
        self.pending = pending if pending is not None else PendingBooks()  # kept across reloads
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
            try:
                self._has_rules = bool(self.ledger.list_rules())
            except StorageUnavailable:
                return self._has_rules  # the books are away: admit() refuses paid calls anyway
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
        open_completion: bool = False,
        unbounded: str | None = None,
    ) -> Hold:
        """Reserve ``estimate`` for this target, or raise BudgetExceeded naming the rule.

        ``open_completion``: the client named no token limit and ``estimate.completion_tokens``
        is the model's maximum; under a stopping rule the gateway lowers it to what the budget
        can pay for (``Hold.max_tokens``, to be sent upstream), refusing below MIN_ANSWER_TOKENS.
        ``unbounded`` names a prompt part with no known token maximum.
        """
        price = self.price_of(provider, model, is_local)
        if price is not None:
            try:
                estimate.cost_micro_usd = cost_micro_usd(price, estimate)
            except ValueError:
                price = None  # the model is priced, but not for this kind of use
        storage_ok = self.ledger.db.state.ok
        if not self.has_rules() and (is_local or storage_ok):
            # Nothing to gate: skip the reservation write; the commit still books every call.
            open_hold = Reservation(-1, request_id, key, provider, model, is_local, estimate)
            return Hold(open_hold, price, provider, model, is_local)
        chosen: list[int] = []

        def fit(stoppers: list[tuple[Rule, int]]) -> Usage:
            if not stoppers:
                return estimate  # nothing can stop it: no limit needs sending
            ceiling = estimate.completion_tokens
            n = affordable_tokens(estimate, price, stoppers, ceiling)
            # Below the smallest useful answer, reserve that answer: the ledger then refuses.
            shrunk = replace(estimate, completion_tokens=max(n, min(MIN_ANSWER_TOKENS, ceiling)))
            if price is not None:
                shrunk.cost_micro_usd = cost_micro_usd(price, shrunk)
            chosen.append(shrunk.completion_tokens)
            return shrunk

        try:
            reservation = run_books(
                self.ledger.reserve,
                estimate,
                key=key,
                provider=provider,
                model=model,
                is_local=is_local,
                request_id=request_id,
                price_known=is_local or price is not None,
                unbounded=unbounded,
                fit=fit if open_completion else None,
            )
        except StorageUnavailable:
            if not is_local:
                raise  # never admitted unbooked
            return self._admit_unreserved(provider, model, estimate, key, request_id, price)
        for message in reservation.warnings:
            log.warning("request %s: %s", request_id, message)
        hold = Hold(reservation, price, provider, model, is_local)
        if chosen:
            hold.max_tokens = chosen[-1]  # the reservation holds exactly this completion
        return hold

    def _admit_unreserved(self, provider: str, model: str, estimate: Usage, key: str | None,
                          request_id: str | None, price: Price | None) -> Hold:  # fmt: skip
        """A free on-device call while the disk takes no writes: the rules, read only."""
        try:
            decision = self.ledger.check(key=key, provider=provider, model=model, is_local=True)
        except StorageUnavailable:
            decision = None  # even reading fails: serve; the usage waits in memory
        if decision is not None and not decision.allowed:
            raise decision.error()
        open_hold = Reservation(-1, request_id, key, provider, model, True, estimate)
        return Hold(open_hold, price, provider, model, True)

    def commit(self, hold: Hold, actual: Usage, *, guessed: bool = False) -> None:
        """Book what the call really used (never raises: a failure is logged loudly).

        ``guessed``: the counts are the gateway's own bound (no usage came back, or the stream
        was cut), so they are held to the reservation: a guess never bills more than it held.
        """
        if hold.committed:
            return
        if guessed and hold.reservation.id >= 0:
            held = hold.reservation.estimate
            actual.prompt_tokens = min(actual.prompt_tokens, held.prompt_tokens)
            actual.completion_tokens = min(actual.completion_tokens, held.completion_tokens)
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
            if hold.reservation.overrun:
                self._overrun(hold, actual)
            if self.metrics is not None and hold.cost_micro_usd:
                self.metrics.inc("hoosh_spend_usd_total", {"provider": hold.provider},
                                 hold.cost_micro_usd / 1_000_000, help="USD spent")  # fmt: skip
        except StorageUnavailable:
            # Served already: the books take it when the disk does (StorageState has said why).
            self.pending.add(PendingEntry(hold.reservation, actual, hold.provider, hold.model))
            hold.committed = True  # booked in memory: never committed twice
            return
        except Exception:  # noqa: BLE001 - the answer is already out; keep serving, shout
            log.exception("could not record spend for %s:%s", hold.provider, hold.model)
            return
        if len(self.pending):
            run_books(self.pending.flush, self.ledger)  # the disk takes writes again

    def _overrun(self, hold: Hold, actual: Usage) -> None:
        """The upstream billed past the reservation: booked as billed; say so loudly."""
        held = hold.reservation.estimate
        log.warning(
            "request %s: %s:%s billed more than its reservation (prompt %d > %d tokens or "
            "completion %d > %d or %s > %s USD); booked as billed, and rule(s) %s stay closed "
            "until their period resets",
            hold.reservation.request_id, hold.provider, hold.model, actual.prompt_tokens,
            held.prompt_tokens, actual.completion_tokens, held.completion_tokens,
            format_usd(actual.cost_micro_usd), format_usd(held.cost_micro_usd),
            ", ".join(hold.reservation.overrun),
        )  # fmt: skip
        if self.metrics is not None:
            for rule in hold.reservation.overrun:
                self.metrics.inc("hoosh_budget_overrun_total", {"rule": rule}, 1,
                                 help="Calls billed above their reservation")  # fmt: skip

    def release(self, hold: Hold, cause: BaseException | None = None) -> None:
        """Give back a hold whose call failed before anything was billed.

        A failure after the upstream had the request (``cause.may_have_billed``: a read timeout)
        is booked at its reservation instead: the provider may well bill it, and a budget must
        never count a billed call as free. Correct it with ``hoosh-edge budget correct``.
        """
        if hold.committed:
            return
        if getattr(cause, "may_have_billed", False):
            log.warning("request %s: %s:%s failed after the upstream had it (%s); booked at its "
                        "reservation of %s USD", hold.reservation.request_id, hold.provider,
                        hold.model, cause, format_usd(hold.reservation.estimate.cost_micro_usd))  # fmt: skip
            held = hold.reservation.estimate
            self.commit(hold, replace(held, cost_micro_usd=0), guessed=True)
            return
        try:
            run_books(self.ledger.release, hold.reservation)
        except StorageUnavailable:
            if hold.reservation.id >= 0:
                self.pending.add(PendingEntry(hold.reservation, None, hold.provider, hold.model))
        except Exception:  # noqa: BLE001
            log.exception("could not release a reservation")

    def remaining(self, *, key: str | None, provider: str, model: str,
                  is_local: bool) -> tuple[Rule, int] | None:  # fmt: skip
        """The tightest rule in scope of a target and what it has left; None if there is none."""
        try:
            if not self.has_rules():
                return None  # no rule, no figure: as current as admission's view of the rules
            return self.ledger.remaining(key=key, provider=provider, model=model,
                                         is_local=is_local)  # fmt: skip
        except StorageUnavailable:
            return None  # a figure is not worth failing an answer that is already made


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
