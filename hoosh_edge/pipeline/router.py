"""Model name -> ordered targets, and trying them in order until one serves.

Order: a routing alias lists its targets explicitly; ``provider:model`` names one target; a plain
model id goes to every backend that serves it, on-device first, then providers in config order.
The next target is tried only when the failure says the target could not serve (``fallback_ok``)
and nothing has reached the client yet.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hoosh_edge.backends.providers.base import CallContext, ChatBackend
from hoosh_edge.config import Config, ProviderConfig
from hoosh_edge.errors import (
    BudgetExceeded,
    HooshError,
    ModelNotFound,
    ProviderDisabled,
    StorageUnavailable,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    backend: Any  # a ChatBackend for chat; for speech, LocalSpeech or a provider that can speak
    model: str  # the model name the backend is asked for

    @property
    def provider(self) -> str:
        return self.backend.name

    @property
    def label(self) -> str:
        return f"{self.backend.name}:{self.model}"


@dataclass
class Selected:
    """Yielded by ``Router.stream`` once a target produced its first chunk."""

    target: Target
    failures: list[tuple[str, str]] = field(default_factory=list)
    hold: Any = None  # the budget hold of the chosen target, committed by the API


@dataclass
class ProviderHealth:
    """Recent outcomes of one provider, for /v1/health."""

    failures: int = 0
    successes: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    latency_ema_s: float | None = None
    opened_at: float | None = None  # circuit breaker: set after STRIKES failures in a row

    STRIKES = 3
    cooldown_s: float = 30.0

    def is_open(self, now: float) -> bool:
        """True while the breaker is open; after the cooldown one request may probe (half-open)."""
        if self.opened_at is None:
            return False
        if now - self.opened_at >= self.cooldown_s:
            self.opened_at = now  # let one request through, keep the others away meanwhile
            return False
        return True

    @property
    def state(self) -> str:
        if self.opened_at is not None:
            return "open"
        return "degraded" if self.failures else "ok"

    def ok(self, latency_s: float) -> None:
        self.failures = 0
        self.opened_at = None
        self.successes += 1
        a = 0.3
        self.latency_ema_s = (
            latency_s
            if self.latency_ema_s is None
            else a * latency_s + (1 - a) * self.latency_ema_s
        )

    def failed(self, message: str) -> None:
        self.failures += 1
        self.last_error = message
        self.last_error_at = time.time()
        if self.failures >= self.STRIKES:
            self.opened_at = time.monotonic()


class Router:
    """Knows every chat backend and picks, per request, the order to try them in."""

    def __init__(self, config: Config, backends: list[ChatBackend]) -> None:
        self.config = config
        self.backends = backends
        self.by_name = {b.name: b for b in backends}
        self.aliases = dict(config.routing.aliases)
        cooldown = config.routing.breaker_cooldown_s
        self.health: dict[str, ProviderHealth] = {
            b.name: ProviderHealth(cooldown_s=cooldown) for b in backends
        }
        self._rr_lock = threading.Lock()
        self._rr = itertools.count()
        # Gives back a budget hold (or books it, when the failure says the upstream may bill).
        self.release: Callable[..., None] | None = None

    def health_of(self, name: str) -> ProviderHealth:
        if name not in self.health:
            self.health[name] = ProviderHealth(cooldown_s=self.config.routing.breaker_cooldown_s)
        return self.health[name]

    def health_report(self) -> list[dict[str, Any]]:
        """Each backend's state for /v1/health and the status page."""
        out = []
        for b in self.backends:
            h = self.health_of(b.name)
            pcfg = self.config.provider(b.name)
            if pcfg is not None and not pcfg.enabled:
                state = "disabled"
            else:
                state = {"open": "down"}.get(h.state, h.state)
            out.append({
                "name": b.name,
                "type": "local" if b.is_local else (pcfg.type if pcfg else "?"),
                "state": state,
                "disabled_reason": pcfg.disabled_reason if pcfg else None,
                "consecutive_failures": h.failures,
                "last_error": h.last_error,
                "latency_ms": round(h.latency_ema_s * 1000, 1) if h.latency_ema_s else None,
            })  # fmt: skip
        return out

    def provider_config(self, name: str) -> ProviderConfig | None:
        return self.config.provider(name)

    def model_ids(self) -> list[tuple[str, str]]:
        """(model id, owner) for /v1/models: aliases, on-device models, concrete cloud ids."""
        seen: dict[str, str] = {}
        for alias in self.aliases:
            seen.setdefault(alias, "hoosh-edge")
        for b in self.backends:
            for mid in b.model_ids():
                seen.setdefault(mid, b.name)
        return list(seen.items())

    def listing(self) -> list[tuple[str, str, str]]:
        """(id, owner, source) for /v1/models: aliases, then each backend's listing."""
        out: dict[str, tuple[str, str]] = {}
        for alias in self.aliases:
            out.setdefault(alias, ("hoosh-edge", "alias"))
        for b in self.backends:
            for mid, source in b.listing():
                out.setdefault(mid, (b.name, source))
        return [(mid, owner, source) for mid, (owner, source) in out.items()]

    def resolve(self, model: str) -> list[Target]:
        """Every target that may serve ``model``, in the order to try them."""
        if model in self.aliases:
            targets = []
            for spec in self.aliases[model]:
                pname, _, mname = spec.partition(":")
                backend = self.by_name.get(pname)
                if backend is not None:
                    targets.append(Target(backend, mname))
            return self._order(targets)
        if ":" in model:
            pname, _, mname = model.partition(":")
            backend = self.by_name.get(pname)
            if backend is not None and mname:
                return [Target(backend, mname)]
        targets = [Target(b, model) for b in self.backends if b.serves(model)]
        if not targets:
            known = sorted(mid for mid, _ in self.model_ids())
            listing = ", ".join(known[:30]) + (" ..." if len(known) > 30 else "")
            raise ModelNotFound(
                f"The model '{model}' does not exist here. Available: {listing or 'none'}.",
                param="model",
            )
        return self._order(targets)

    def _order(self, targets: list[Target]) -> list[Target]:
        ordered = self._strategy_order(targets)
        if any(t.backend.is_local for t in ordered) and self._device_busy(ordered):
            # The box is hot, short of memory or queued up: the cloud first, budget permitting
            # (a refused cloud target still falls back to the local one).
            ordered = [t for t in ordered if not t.backend.is_local] + [
                t for t in ordered if t.backend.is_local
            ]
        return ordered

    def _device_busy(self, targets: list[Target]) -> bool:
        """True when a configured device threshold is passed (opt-in; off by default)."""
        r = self.config.routing
        if r.prefer_cloud_cpu_temp_c is not None:
            from hoosh_edge.device import cpu_temperature_c

            temp = cpu_temperature_c()
            if temp is not None and temp >= r.prefer_cloud_cpu_temp_c:
                return True
        if r.prefer_cloud_free_ram_mb is not None:
            from hoosh_edge.device import mem_available_bytes

            avail = mem_available_bytes()
            if avail is not None and avail < r.prefer_cloud_free_ram_mb * 1024 * 1024:
                return True
        if r.prefer_cloud_queue_depth is not None:
            for t in targets:
                if t.backend.reports_queue_depth and (
                    t.backend.queue_depth(t.model) >= r.prefer_cloud_queue_depth
                ):
                    return True
        return False

    def _strategy_order(self, targets: list[Target]) -> list[Target]:
        strategy = self.config.routing.strategy
        if strategy == "round_robin" and len(targets) > 1:
            with self._rr_lock:
                start = next(self._rr) % len(targets)
            return targets[start:] + targets[:start]
        if strategy == "lowest_latency" and len(targets) > 1:

            def key(t: Target) -> float:
                ema = self.health_of(t.provider).latency_ema_s
                return ema if ema is not None else 0.0

            return sorted(targets, key=key)
        return targets

    def _check_usable(self, target: Target) -> None:
        pcfg = self.config.provider(target.provider)
        if pcfg is not None and not pcfg.enabled:
            raise ProviderDisabled(f"provider '{pcfg.name}' is disabled: {pcfg.disabled_reason}")

    def attempt(
        self,
        targets: list[Target],
        ctx: CallContext,
        call: Callable[[Target], Any],
        admit: Callable[[Target], Any] | None = None,
    ) -> tuple[Target, Any, list[tuple[str, str]], Any]:
        """Call ``call(target)`` for each target in turn until one succeeds.

        ``admit(target)`` is the budget gate: it returns a hold (released here if the call fails)
        or raises ``BudgetExceeded``, which skips the target. Returns (target, result, failures,
        hold).
        """
        failures: list[tuple[str, str]] = []
        last: HooshError | None = None
        refusal: BudgetExceeded | None = None
        for target in self._breaker_order(targets):
            started = time.monotonic()
            ctx.tried = target
            hold = None
            try:
                self._check_usable(target)
                if admit is not None:
                    hold = admit(target)
                result = call(target)
            except BudgetExceeded as e:
                if hold is not None and self.release is not None:
                    self.release(hold)
                failures.append((target.label, e.message))
                refusal = refusal or e
                last = e
                continue
            except HooshError as e:
                if hold is not None and self.release is not None:
                    self.release(hold, e)
                self._failed(target, e)
                if not e.fallback_ok:
                    raise
                failures.append((target.label, e.message))
                last = e
                log.info("request %s: %s failed (%s); trying the next target",
                         ctx.request_id, target.label, e.message)  # fmt: skip
                continue
            except BaseException:
                if hold is not None and self.release is not None:
                    self.release(hold)
                raise
            self.health_of(target.provider).ok(time.monotonic() - started)
            return target, result, failures, hold
        if refusal is not None:
            # The budget is what stopped the request: say which rule, its limit and its reset.
            raise refusal
        assert last is not None
        if len(failures) > 1:
            last.message = "No target could serve the request: " + "; ".join(
                f"{label}: {msg}" for label, msg in failures
            )
        raise last

    def stream(self, targets: list[Target], req_for: Callable[[Target], dict],
               ctx: CallContext, admit: Callable[[Target], Any] | None = None,
               ) -> Iterator[Any]:  # fmt: skip
        """Yield ``Selected`` once a target produced its first chunk, then its chunks."""

        def open_target(target: Target) -> tuple[Any, Iterator[dict]]:
            it = target.backend.stream(target.model, req_for(target), ctx)
            try:
                first = next(it)
            except StopIteration:
                first = None
            except BaseException:
                close = getattr(it, "close", None)
                if close:
                    close()
                raise
            return first, it

        target, (first, it), failures, hold = self.attempt(targets, ctx, open_target, admit)
        try:
            yield Selected(target, failures, hold)
            if first is not None:
                yield first
            yield from it
        finally:
            close = getattr(it, "close", None)
            if close:
                close()

    def _breaker_order(self, targets: list[Target]) -> list[Target]:
        """Targets whose circuit is open go last (still tried if nothing else serves)."""
        now = time.monotonic()
        closed = [t for t in targets if not self.health_of(t.provider).is_open(now)]
        return closed + [t for t in targets if t not in closed]

    def _failed(self, target: Target, e: HooshError) -> None:
        # A disabled provider or our own full disk says nothing about the provider's health.
        if e.fallback_ok and not isinstance(e, (ProviderDisabled, StorageUnavailable)):
            self.health_of(target.provider).failed(e.message)

    def close(self) -> None:
        for b in self.backends:
            b.close()
