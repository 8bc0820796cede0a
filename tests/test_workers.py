"""The thread pools' job table, the watchdog, and a model slot that outlives a killed request."""

from __future__ import annotations

import logging
import time

import gevent
import gevent.monkey
import pytest

from hoosh_edge import workers
from hoosh_edge.backends.engines.pool import ModelPool, ModelSlot
from hoosh_edge.metrics import Metrics
from hoosh_edge.serve import watchdog

os_sleep = gevent.monkey.get_original("time", "sleep")


@pytest.fixture
def pool():
    return workers.WorkerPool("test", 2, stuck_job_s=0.2)


def test_status_counts_running_and_queued_jobs_from_the_jobs(pool):
    waiting = [gevent.spawn(pool.run, os_sleep, 0.4, owner="m") for _ in range(3)]
    gevent.sleep(0.15)
    st = pool.status()
    assert (st["threads"], st["busy"], st["queued"]) == (2, 2, 1)
    assert pool.running_for("m") == 2
    gevent.joinall(waiting, raise_error=True)
    st = pool.status()
    assert (st["busy"], st["queued"], st["stuck"]) == (0, 0, 0)


def test_watchdog_reports_a_stuck_job_once_with_its_stack(pool, caplog):
    metrics = Metrics()

    def wedged() -> None:
        os_sleep(0.6)  # a native call that does not come back in time

    job = gevent.spawn(pool.run, wedged, expect_s=0.1)
    gevent.sleep(0.1)
    assert watchdog.check((pool,), metrics) == 0  # not yet past 0.1 + 0.2 s
    gevent.sleep(0.3)
    with caplog.at_level(logging.ERROR, logger="hoosh_edge.serve.watchdog"):
        assert watchdog.check((pool,), metrics) == 1
        assert watchdog.check((pool,), metrics) == 0  # logged once, not on every look
    assert pool.status()["stuck"] == 1
    assert metrics.value("hoosh_stuck_jobs_total", {"pool": "test"}) == 1
    (record,) = caplog.records
    message = record.getMessage()
    assert "stuck job in the test pool: " in message and "<locals>.wedged" in message
    assert "in wedged" in message and "os_sleep(0.6)" in message  # the thread's own stack
    job.get()
    assert pool.status()["stuck"] == 0


def test_a_stream_that_keeps_producing_is_never_stuck(pool):
    def steady():
        for _ in range(6):
            os_sleep(0.1)
            yield b"x"

    from hoosh_edge.threads import ThreadStream

    old, workers.inference = workers.inference, pool
    try:
        stream = ThreadStream(steady)
        got = []
        for item in stream:
            got.append(item)
            assert watchdog.check((pool,)) == 0
        assert len(got) == 6  # 0.6 s in all, but never 0.2 s without an item
    finally:
        workers.inference = old


def test_a_killed_request_keeps_its_model_until_the_thread_is_out(pool, monkeypatch):
    monkeypatch.setattr(workers, "inference", pool)
    models = ModelPool(mem_available=lambda: None)
    slot = models.register(ModelSlot(key="stt:m", kind="stt", loader=object, estimate_bytes=0))
    from hoosh_edge.threads import run_blocking

    def request() -> None:
        with slot.use():
            run_blocking(os_sleep, 0.5, owner="stt:m")

    g = gevent.spawn(request)
    gevent.sleep(0.2)
    started = time.monotonic()
    g.kill(block=False)
    gevent.sleep(0.05)
    # The native call still runs: the model must stay taken, or the next request would enter it.
    assert slot.busy and models.status()[0]["threads"] == 1
    g.join(2)
    assert time.monotonic() - started >= 0.2
    st = models.status()[0]
    assert not slot.busy and st["busy"] is False and st["threads"] == 0
