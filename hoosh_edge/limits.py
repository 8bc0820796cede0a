"""Per-key request limits in memory: requests per minute, concurrent requests, request deadlines.

Requests per minute use a sliding-window log: the start times of the key's requests in the last 60
seconds. It is exact — never more than ``rpm`` starts in any 60-second window, where a token bucket
would let a full burst through right after a refill — and it gives an exact ``retry_after`` (the
oldest start plus 60 s, minus now). Its cost is one float per request in the window, which for the
tens or hundreds of requests a minute an edge box sees is nothing.

Only admitted requests are counted: a request refused for either limit uses no slot, so a client
hammering a full key does not keep itself locked out.

Safety under gevent: ``acquire`` and ``release`` do plain dict and deque work and never block,
sleep or do I/O, so no greenlet switch can happen inside them and each runs as one step with
respect to other greenlets. An OS lock (the original one, not gevent's) still wraps that work so a
call from a gevent threadpool thread is safe too; it is held for microseconds and never across a
switch, so a greenlet can never find it held by another greenlet of its own thread.

The state is per process and starts empty: after a restart every key has its full minute again.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from hoosh_edge.errors import RateLimited
from hoosh_edge.workers import native_lock

WINDOW_S = 60.0


@dataclass
class _KeyState:
    starts: deque[float] = field(default_factory=deque)  # admitted start times, oldest first
    in_flight: int = 0


class Lease:
    """One admitted request's hold on its key's concurrency slot; release it when done."""

    def __init__(self, limiter: RateLimiter, key_name: str) -> None:
        self._limiter = limiter
        self.key_name = key_name
        self.released = False

    def release(self) -> None:
        """Give the concurrency slot back; later calls do nothing."""
        if not self.released:
            self.released = True
            self._limiter._release(self.key_name)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"Lease({self.key_name!r}, {state})"


class RateLimiter:
    """Admits or refuses requests per key name by requests per minute and concurrency."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._lock = native_lock()

    def acquire(
        self, key_name: str, *, rpm: int | None = None, max_concurrent: int | None = None
    ) -> Lease:
        """Admit one request for ``key_name`` or raise ``RateLimited`` with ``retry_after``."""
        with self._lock:
            now = self.clock()
            state = self._keys.get(key_name) or _KeyState()
            self._expire(state, now)
            # rpm first: when both limits are reached, its wait is the one that matters.
            if rpm is not None and len(state.starts) >= rpm:
                # The slot frees when the start that is rpm-th from the end leaves the window
                # (the oldest one, unless the limit was lowered while requests were counted).
                wait = max(0.0, state.starts[-rpm] + WINDOW_S - now)
                seconds = max(1, math.ceil(wait))
                raise RateLimited(
                    f"Rate limit of {rpm} requests per minute reached for the API key "
                    f"'{key_name}'; retry in {seconds} s.",
                    retry_after=wait,
                )
            if max_concurrent is not None and state.in_flight >= max_concurrent:
                raise RateLimited(
                    f"Too many concurrent requests for the API key '{key_name}' "
                    f"(limit {max_concurrent}); wait for one to finish.",
                    retry_after=1,
                    code="concurrency_limit_exceeded",
                )
            state.starts.append(now)
            state.in_flight += 1
            self._keys[key_name] = state
            return Lease(self, key_name)

    def _release(self, key_name: str) -> None:
        with self._lock:
            state = self._keys.get(key_name)
            if state is None:
                return
            state.in_flight = max(0, state.in_flight - 1)
            self._expire(state, self.clock())
            self._forget_if_idle(key_name, state)

    @staticmethod
    def _expire(state: _KeyState, now: float) -> None:
        """Drop starts that have left the window."""
        while state.starts and state.starts[0] <= now - WINDOW_S:
            state.starts.popleft()

    def _forget_if_idle(self, key_name: str, state: _KeyState) -> None:
        # Keep memory bounded by the keys in use, not by every key ever seen.
        if not state.starts and state.in_flight == 0:
            self._keys.pop(key_name, None)

    def in_flight(self, key_name: str) -> int:
        """Requests of ``key_name`` admitted and not yet released."""
        with self._lock:
            state = self._keys.get(key_name)
            return state.in_flight if state else 0

    def recent(self, key_name: str) -> int:
        """Requests of ``key_name`` admitted in the last minute."""
        with self._lock:
            state = self._keys.get(key_name)
            if state is None:
                return 0
            self._expire(state, self.clock())
            count = len(state.starts)
            self._forget_if_idle(key_name, state)
            return count

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Per key in use: requests in the last minute and requests in flight (for status)."""
        with self._lock:
            now = self.clock()
            out = {}
            for name, state in list(self._keys.items()):
                self._expire(state, now)
                if state.starts or state.in_flight:
                    out[name] = {"last_minute": len(state.starts), "in_flight": state.in_flight}
                self._forget_if_idle(name, state)
            return out


class Deadline:
    """A point in time a request must finish by; ask how long is left."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds < 0 or math.isnan(seconds):
            raise ValueError("a deadline needs seconds >= 0")
        self.clock = clock
        self.seconds = seconds
        self.at = clock() + seconds

    def remaining(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self.at - self.clock())

    @property
    def expired(self) -> bool:
        return self.clock() >= self.at

    def cap(self, seconds: float) -> float:
        """``seconds`` or what is left of the deadline, whichever is shorter (for timeouts)."""
        return min(seconds, self.remaining())

    def __repr__(self) -> str:
        return f"Deadline({self.seconds}s, {self.remaining():.3f}s left)"
