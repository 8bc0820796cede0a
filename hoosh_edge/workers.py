"""The OS thread pools: one for inference, one for the books, every job counted while it runs.

Native inference (llama.cpp, whisper.cpp, onnxruntime, audio decoding) blocks for seconds, and a
ledger commit waits for an fsync; neither may run on the gevent hub. They also must not share
threads: fifty transcriptions queued behind each other must never make a paid cloud call wait
for a thread to write its ledger row. So there are two gevent ThreadPools:

- ``inference``: model loads, decoding, transcription, synthesis, generation (``server.inference_threads``);
- ``books``: ledger reservations, commits and releases, response-cache reads and writes
  (``server.books_threads``); every write is serialized by the database anyway, so two threads
  are plenty.

gevent's own default threadpool (the hub's) is left to gevent, which resolves host names in it.

Each job is a ``Job`` in its pool's table from the moment it is submitted until it returns: the
truth behind ``/v1/health`` (threads in use, jobs queued) and what the watchdog looks at.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gevent
import gevent.monkey
import gevent.threadpool

T = TypeVar("T")

# Real OS primitives even after monkey.patch_all(): jobs start and finish in pool threads while
# the hub reads the table. ``native_lock()`` is the one place every module gets such a lock.
native_lock = gevent.monkey.get_original("_thread", "allocate_lock")
_get_ident = gevent.monkey.get_original("_thread", "get_ident")

DEFAULT_INFERENCE_THREADS = 32
DEFAULT_BOOKS_THREADS = 2
DEFAULT_STUCK_JOB_S = 120.0

_ids = itertools.count(1)


@dataclass
class Job:
    """One call submitted to a pool: what it is, when it started, in which thread, how it moves."""

    label: str
    owner: str | None = None  # the model slot it works for, if any
    expect_s: float = 0.0  # how long it may legitimately run without progress
    id: int = field(default_factory=lambda: next(_ids))
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    progress_at: float | None = None  # last sign of life (start, or an item a stream made)
    ident: int | None = None  # OS thread running it
    reported: bool = False  # the watchdog logged it already

    def touch(self) -> None:
        """The job made progress (a stream produced an item): it is not stuck."""
        self.progress_at = time.monotonic()

    def idle_s(self, now: float) -> float:
        return 0.0 if self.progress_at is None else now - self.progress_at

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "owner": self.owner,
            "running_s": round(now - self.started_at, 1) if self.started_at else 0.0,
            "idle_s": round(self.idle_s(now), 1),
            "expect_s": round(self.expect_s, 1),
        }


class WorkerPool:
    """A named gevent ThreadPool that keeps a table of its jobs."""

    def __init__(self, name: str, maxsize: int, stuck_job_s: float = DEFAULT_STUCK_JOB_S) -> None:
        self.name = name
        self.maxsize = maxsize
        self.stuck_job_s = stuck_job_s
        self._lock = native_lock()
        self._jobs: dict[int, Job] = {}
        self._pool: gevent.threadpool.ThreadPool | None = None

    def _threadpool(self) -> gevent.threadpool.ThreadPool:
        # Made on first use, in the thread of the hub that will wait for its results.
        if self._pool is None:
            self._pool = gevent.threadpool.ThreadPool(self.maxsize)
        return self._pool

    def resize(self, maxsize: int) -> None:
        self.maxsize = maxsize
        if self._pool is not None:
            self._pool.maxsize = maxsize

    def submit(self, job: Job, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Any:
        """Start ``fn`` in a pool thread as ``job``; returns gevent's result object."""
        with self._lock:
            self._jobs[job.id] = job
        try:
            return self._threadpool().spawn(self._run, job, fn, args, kwargs)
        except BaseException:
            self._forget(job)
            raise

    def run(self, fn: Callable[..., T], *args: Any, label: str | None = None,
            owner: str | None = None, expect_s: float = 0.0, **kwargs: Any) -> T:  # fmt: skip
        """Call ``fn`` in a pool thread and return its result; the calling greenlet waits."""
        job = Job(label or _name_of(fn), owner=owner, expect_s=expect_s)
        result = self.submit(job, fn, *args, **kwargs)
        try:
            ok, value = result.get()
        except BaseException:
            if not result.ready():
                # Killed while the thread still runs: whoever holds a model until we return
                # must keep holding it, or the next request would enter the same native context.
                _wait_out(result)
            raise
        if ok:
            return value
        raise value

    def _run(self, job: Job, fn: Callable[..., T], args: tuple, kwargs: dict) -> tuple[bool, Any]:
        job.ident = _get_ident()
        job.started_at = job.progress_at = time.monotonic()
        try:
            return True, fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - raised again in the waiting greenlet
            # Returned, not raised: gevent would print a traceback for every refused request.
            return False, exc
        finally:
            self._forget(job)

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def is_stuck(self, job: Job, now: float) -> bool:
        """Running with no progress for longer than its expected time plus ``stuck_job_s``."""
        return job.started_at is not None and job.idle_s(now) > job.expect_s + self.stuck_job_s

    def status(self) -> dict[str, Any]:
        """Threads in use, jobs waiting for a thread, stuck jobs: counted from the jobs."""
        now = time.monotonic()
        jobs = self.jobs()
        started = [j.started_at for j in jobs if j.started_at is not None]
        stuck = [j for j in jobs if self.is_stuck(j, now)]
        return {
            "threads": self.maxsize,
            "busy": len(started),
            "queued": len(jobs) - len(started),
            "stuck": len(stuck),
            "stuck_jobs": [j.to_dict(now) for j in stuck],
            "longest_s": round(max((now - t for t in started), default=0.0), 1),
        }

    def running_for(self, owner: str) -> int:
        """Jobs of ``owner`` (a model slot) running in a thread right now."""
        return sum(1 for j in self.jobs() if j.owner == owner and j.started_at is not None)


def _wait_out(result: Any) -> None:
    """Wait for a thread's result even if this greenlet is killed again meanwhile."""
    while not result.ready():
        try:
            result.wait()
        except BaseException:  # noqa: BLE001 - re-raised by the caller once the thread is out
            continue


def _name_of(fn: Callable[..., Any]) -> str:
    owner = getattr(getattr(fn, "__self__", None), "__class__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    if owner is not None and "." not in name:
        return f"{owner.__name__}.{name}"
    return name


inference = WorkerPool("inference", DEFAULT_INFERENCE_THREADS)
books = WorkerPool("books", DEFAULT_BOOKS_THREADS)
POOLS = (inference, books)


def configure(*, inference_threads: int, books_threads: int, stuck_job_s: float) -> None:
    """Size both pools and set when a job counts as stuck (from ``[server]``)."""
    inference.resize(inference_threads)
    books.resize(books_threads)
    for pool in POOLS:
        pool.stuck_job_s = stuck_job_s


def status() -> dict[str, dict[str, Any]]:
    """Every pool's state, for ``/v1/health`` and ``/metrics``."""
    return {pool.name: pool.status() for pool in POOLS}
