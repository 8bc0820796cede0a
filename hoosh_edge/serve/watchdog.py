"""Find pool jobs that stopped moving: log each once with its thread's stack, and count it.

A native call that never returns (a deadlock inside a library, a database locked by another
process, a disk that stopped answering) holds its OS thread forever and nobody sees it: the
request just never answers. The watchdog greenlet looks at every running job of both pools; a job
with no progress for longer than its expected time plus ``server.stuck_job_s`` is logged at
ERROR with the stack of the thread running it (``sys._current_frames``), counted in
``hoosh_stuck_jobs_total``, and shown in ``hoosh_stuck_jobs`` and ``/v1/health`` while it stays.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import Any

import gevent

from hoosh_edge import workers

log = logging.getLogger("hoosh_edge.serve.watchdog")


def check(pools: tuple[workers.WorkerPool, ...] = workers.POOLS, metrics: Any = None) -> int:
    """Report stuck jobs not reported before; return how many were new."""
    now = time.monotonic()
    frames = None
    new = 0
    for pool in pools:
        for job in pool.jobs():
            if job.reported or not pool.is_stuck(job, now):
                continue
            job.reported = True
            new += 1
            if frames is None:
                frames = sys._current_frames()
            frame = frames.get(job.ident) if job.ident is not None else None
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(gone)\n"
            log.error(
                "stuck job in the %s pool: %s%s has run %.1f s with no progress for %.1f s "
                "(expected at most %.1f s); thread %s is at:\n%s",
                pool.name, job.label, f" for {job.owner}" if job.owner else "",
                now - (job.started_at or now), job.idle_s(now), job.expect_s + pool.stuck_job_s,
                job.ident, stack.rstrip(),
            )  # fmt: skip
            if metrics is not None:
                metrics.inc("hoosh_stuck_jobs_total", {"pool": pool.name},
                            help="Pool jobs found stuck (each counted once)")  # fmt: skip
    return new


def gauges() -> list[tuple[str, str, list[tuple[dict[str, str], float]]]]:
    """Pool gauges read at scrape time: threads, busy, queued, stuck."""
    st = workers.status()
    return [
        ("hoosh_pool_threads", "Threads each pool may use",
         [({"pool": n}, s["threads"]) for n, s in st.items()]),
        ("hoosh_pool_threads_busy", "Threads running a job",
         [({"pool": n}, s["busy"]) for n, s in st.items()]),
        ("hoosh_pool_jobs_queued", "Jobs waiting for a thread",
         [({"pool": n}, s["queued"]) for n, s in st.items()]),
        ("hoosh_stuck_jobs", "Jobs running far past their expected time right now",
         [({"pool": n}, s["stuck"]) for n, s in st.items()]),
    ]  # fmt: skip


def start(metrics: Any = None, interval_s: float | None = None) -> gevent.Greenlet:
    """Check both pools in a background greenlet, a few times per ``stuck_job_s``."""
    every = interval_s or max(0.05, min(1.0, min(p.stuck_job_s for p in workers.POOLS) / 4))

    def loop() -> None:
        while True:
            gevent.sleep(every)
            try:
                check(metrics=metrics)
            except Exception:  # noqa: BLE001 - the watchdog itself must never die
                log.exception("watchdog check failed")

    return gevent.spawn(loop)
