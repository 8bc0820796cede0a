"""Per-key limits: a sliding minute of requests, concurrent requests, leases, deadlines."""

from __future__ import annotations

import gevent
import pytest

from hoosh_edge.doors.common import error_headers
from hoosh_edge.errors import RateLimited
from hoosh_edge.limits import Deadline, RateLimiter


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> RateLimiter:
    return RateLimiter(clock=clock)


def test_rpm_admits_the_limit_then_refuses_with_the_exact_wait(
    limiter: RateLimiter, clock: Clock
) -> None:
    for _ in range(3):
        limiter.acquire("phone", rpm=3).release()
        clock.now += 10  # starts at t=0, 10, 20
    clock.now = 1000 + 25
    with pytest.raises(RateLimited) as e:
        limiter.acquire("phone", rpm=3)
    assert e.value.status == 429
    assert e.value.retry_after == pytest.approx(35.0)  # the t=0 start leaves at t=60
    assert error_headers(e.value)["Retry-After"] == "35"
    assert "3 requests per minute" in e.value.message and "'phone'" in e.value.message
    clock.now = 1000 + 59.9
    with pytest.raises(RateLimited) as e:
        limiter.acquire("phone", rpm=3)
    assert e.value.retry_after == pytest.approx(0.1)
    assert error_headers(e.value)["Retry-After"] == "1"  # rounded up, never 0
    clock.now = 1000 + 60
    limiter.acquire("phone", rpm=3).release()  # the oldest left the window
    with pytest.raises(RateLimited) as e:
        limiter.acquire("phone", rpm=3)
    assert e.value.retry_after == pytest.approx(10.0)  # now the t=10 start is the oldest


def test_the_window_slides_rather_than_resetting_each_minute(
    limiter: RateLimiter, clock: Clock
) -> None:
    clock.now = 59.0
    limiter.acquire("k", rpm=2).release()
    limiter.acquire("k", rpm=2).release()
    clock.now = 61.0  # a fixed minute would have reset at 60
    with pytest.raises(RateLimited) as e:
        limiter.acquire("k", rpm=2)
    assert e.value.retry_after == pytest.approx(58.0)
    assert error_headers(e.value)["Retry-After"] == "58"


def test_retry_after_is_rounded_up_in_the_header(limiter: RateLimiter, clock: Clock) -> None:
    limiter.acquire("k", rpm=1).release()
    clock.now += 58.6  # 1.4 s left: a header of "1" would send the client back too early
    with pytest.raises(RateLimited) as e:
        limiter.acquire("k", rpm=1)
    assert e.value.retry_after == pytest.approx(1.4)
    assert error_headers(e.value)["Retry-After"] == "2"


def test_refused_requests_use_no_slot(limiter: RateLimiter, clock: Clock) -> None:
    limiter.acquire("k", rpm=1).release()
    for _ in range(50):
        clock.now += 1
        with pytest.raises(RateLimited):
            limiter.acquire("k", rpm=1)
    clock.now += 10  # 60 s after the one admitted start
    limiter.acquire("k", rpm=1).release()


def test_keys_are_counted_separately_and_no_limit_means_none(
    limiter: RateLimiter, clock: Clock
) -> None:
    limiter.acquire("a", rpm=1).release()
    limiter.acquire("b", rpm=1).release()
    with pytest.raises(RateLimited):
        limiter.acquire("a", rpm=1)
    for _ in range(500):
        limiter.acquire("a").release()  # the same key without limits (e.g. after an edit)
    assert limiter.recent("a") == 501


def test_lowering_rpm_waits_for_enough_starts_to_leave(limiter: RateLimiter, clock: Clock) -> None:
    for _ in range(4):
        limiter.acquire("k", rpm=10).release()
        clock.now += 5  # starts at 0, 5, 10, 15; now 20
    with pytest.raises(RateLimited) as e:
        limiter.acquire("k", rpm=2)
    # Admission needs at most 1 start left in the window: the one at t=10 must go, at t=70.
    assert e.value.retry_after == pytest.approx(50.0)
    clock.now = 1000 + 70
    limiter.acquire("k", rpm=2).release()


def test_concurrency_limit_and_release(limiter: RateLimiter) -> None:
    first = limiter.acquire("k", max_concurrent=2)
    second = limiter.acquire("k", max_concurrent=2)
    assert limiter.in_flight("k") == 2
    with pytest.raises(RateLimited) as e:
        limiter.acquire("k", max_concurrent=2)
    assert e.value.retry_after == 1 and error_headers(e.value)["Retry-After"] == "1"
    assert e.value.code == "concurrency_limit_exceeded" and "limit 2" in e.value.message
    assert limiter.in_flight("k") == 2  # the refused one took nothing
    first.release()
    third = limiter.acquire("k", max_concurrent=2)
    second.release()
    third.release()
    assert limiter.in_flight("k") == 0


def test_release_is_idempotent_and_a_context_manager(limiter: RateLimiter) -> None:
    lease = limiter.acquire("k", max_concurrent=1)
    other = limiter.acquire("j", max_concurrent=1)
    lease.release()
    lease.release()
    lease.release()
    assert lease.released and limiter.in_flight("k") == 0
    # A repeated release must not hand out extra slots.
    held = limiter.acquire("k", max_concurrent=1)
    lease.release()
    with pytest.raises(RateLimited):
        limiter.acquire("k", max_concurrent=1)
    held.release()
    with pytest.raises(ValueError), limiter.acquire("k", max_concurrent=1) as inside:
        assert limiter.in_flight("k") == 1
        raise ValueError("the request failed")
    assert inside.released and limiter.in_flight("k") == 0
    assert limiter.in_flight("j") == 1
    other.release()


def test_when_both_limits_are_hit_the_longer_rpm_wait_is_reported(
    limiter: RateLimiter, clock: Clock
) -> None:
    limiter.acquire("k", rpm=1, max_concurrent=1)  # held
    clock.now += 20
    with pytest.raises(RateLimited) as e:
        limiter.acquire("k", rpm=1, max_concurrent=1)
    assert e.value.retry_after == pytest.approx(40.0)


def test_idle_keys_are_forgotten(limiter: RateLimiter, clock: Clock) -> None:
    with limiter.acquire("k", rpm=5):
        assert limiter.snapshot() == {"k": {"last_minute": 1, "in_flight": 1}}
    assert limiter.snapshot() == {"k": {"last_minute": 1, "in_flight": 0}}
    clock.now += 60
    assert limiter.snapshot() == {}
    assert limiter._keys == {}


def test_greenlets_never_exceed_the_concurrency_limit() -> None:
    limiter = RateLimiter()
    running = []
    peak = [0]
    refused = [0]

    def request() -> None:
        try:
            lease = limiter.acquire("k", max_concurrent=3)
        except RateLimited:
            refused[0] += 1
            return
        with lease:
            running.append(1)
            peak[0] = max(peak[0], len(running))
            gevent.sleep(0.001)  # a switch while holding the slot
            running.pop()

    gevent.joinall([gevent.spawn(request) for _ in range(40)])
    assert peak[0] == 3
    assert refused[0] == 37
    assert limiter.in_flight("k") == 0


def test_deadline(clock: Clock) -> None:
    deadline = Deadline(30, clock=clock)
    assert deadline.remaining() == 30 and not deadline.expired
    assert deadline.cap(60) == 30 and deadline.cap(5) == 5
    clock.now += 29.5
    assert deadline.remaining() == pytest.approx(0.5) and not deadline.expired
    clock.now += 0.5
    assert deadline.expired and deadline.remaining() == 0
    clock.now += 100
    assert deadline.remaining() == 0 and deadline.cap(5) == 0
    assert Deadline(0, clock=clock).expired
    with pytest.raises(ValueError):
        Deadline(-1)
