"""Bridges between the gevent hub and real OS threads.

llama.cpp, whisper.cpp and onnxruntime block for seconds inside C code. Run on the hub they would
freeze every other request, so they run in OS threads (``workers``: an inference pool, and a
separate pool for the books) and their results travel back to greenlets through the helpers here:

- ``run_blocking(fn, ...)``: call ``fn`` in an inference thread; the calling greenlet waits.
- ``run_books(fn, ...)``: the same in the books pool (ledger and cache reads and writes), which
  no model can fill up.
- ``ThreadStream(gen_fn, ...)``: run a generator in a pool thread and iterate its items in a greenlet,
  with a bounded buffer (the thread pauses when the reader is slow) and cancellation (``close()``
  makes the thread stop at its next item).
- ``pump(iterator, ...)``: read any iterator in its own greenlet into a bounded queue, so the reader
  can wait with a timeout (to send SSE keep-alives) and backpressure reaches the source.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import gevent
import gevent.event
import gevent.monkey
import gevent.queue

from hoosh_edge import workers

T = TypeVar("T")

_os_sleep = gevent.monkey.get_original("time", "sleep")

_DONE = object()
KEEPALIVE = object()  # yielded by pump() when nothing arrived within heartbeat_s
# How long a streamed item may wait for its reader's next look; 0: every item wakes it. At ~70
# tokens a second on 2 cores (SmolLM2), 50 ms groups 3-4 tokens a frame: the hub's CPU a token
# fell from 326 to 182 us, time taken from llama.cpp's threads (15 ms grouped none and cost more).
# Slower models (a token every 50 ms or more) are never held.
LINGER_S = 0.05


def run_blocking(fn: Callable[..., T], *args: Any, owner: str | None = None,
                 expect_s: float = 0.0, **kwargs: Any) -> T:  # fmt: skip
    """Run ``fn`` in an inference thread and return its result (or raise its exception).

    ``owner`` names the model slot the job works for; ``expect_s`` is how long it may
    legitimately take (on top of ``server.stuck_job_s``) before the watchdog calls it stuck.
    """
    return workers.inference.run(fn, *args, owner=owner, expect_s=expect_s, **kwargs)


def run_books(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a ledger or cache call in the books pool, never behind a model."""
    return workers.books.run(fn, *args, **kwargs)


class Cancelled(Exception):
    """Raised inside a producer thread when its reader went away."""


class ThreadStream(Iterator[T]):
    """Iterate, in a greenlet, the items a generator makes in a pool thread.

    Waking the hub from the thread costs a context switch per item, and on a small box the
    switch lands on a core the model's own threads need. So while items come faster than one
    per ``linger_s`` (tokens of a small model), a reader that has just taken items lingers: for
    ``linger_s`` it is not woken (unless the buffer fills half), then takes everything made
    meanwhile at once; no item wakes it. Slower items each wake a sleeping reader, as soon as
    they are made, as does the first. No item waits more than ``linger_s`` (0: never linger).
    """

    def __init__(
        self,
        gen_fn: Callable[..., Iterable[T]],
        *args: Any,
        max_buffer: int = 64,
        owner: str | None = None,
        expect_s: float = 0.0,
        linger_s: float = LINGER_S,
        **kwargs: Any,
    ) -> None:
        self._items: collections.deque = collections.deque()
        self._batch: collections.deque = collections.deque()  # taken by the reader, not yet given
        self._lock = workers.native_lock()
        self._max = max(1, max_buffer)
        self._linger = max(0.0, linger_s)
        self._cancelled = False
        self._finished = False
        # Guarded by _lock: the reader sleeps until woken / waits out its linger.
        self._waiting = False
        self._lingering = False
        # The reader's own: its last look found items, arriving faster than one a linger.
        self._fast = False
        self._took_at = 0.0
        self._hub = gevent.get_hub()
        self._wake = gevent.event.Event()
        # Progress is per item: a long generation that keeps producing is never "stuck".
        self._job = workers.Job(getattr(gen_fn, "__qualname__", "stream"), owner=owner,
                                expect_s=expect_s)  # fmt: skip
        self._result = workers.inference.submit(self._job, self._produce, gen_fn, args, kwargs)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def _notify(self) -> None:
        self._hub.loop.run_callback_threadsafe(self._wake.set)

    def _produce(self, gen_fn: Callable[..., Iterable[T]], args: tuple, kwargs: dict) -> None:
        gen = None
        try:
            gen = iter(gen_fn(*args, **kwargs))
            for item in gen:
                self._job.touch()
                while True:
                    with self._lock:
                        if self._cancelled:
                            return
                        if len(self._items) < self._max:
                            self._items.append(item)
                            wake = self._waiting or (
                                self._lingering and 2 * len(self._items) >= self._max
                            )
                            if wake:
                                self._waiting = self._lingering = False
                            break
                    _os_sleep(0.002)  # reader is slow: pause the producer (backpressure)
                if wake:
                    self._notify()
            with self._lock:
                self._items.append(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, never lost
            with self._lock:
                self._items.append(_Raised(exc))
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass
            self._notify()

    def __next__(self) -> T:
        while True:
            if self._finished:
                raise StopIteration
            if not self._batch:
                with self._lock:
                    if self._items:
                        self._batch, self._items = self._items, self._batch
                        self._waiting = self._lingering = False
                    else:
                        # Linger after a look that found items faster than one a linger; after
                        # one that found none, or items slower than that, sleep until woken.
                        self._lingering = self._fast
                        self._waiting = not self._lingering
                        self._wake.clear()
                if self._batch:
                    now = time.monotonic()
                    self._fast = (now - self._took_at) < self._linger * len(self._batch)
                    self._took_at = now
                else:
                    self._fast = False
                timeout = self._linger if self._lingering else None
                if not self._batch:
                    self._wake.wait(timeout)
                    continue
            item = self._batch.popleft()
            if item is _DONE:
                self._finished = True
                raise StopIteration
            if isinstance(item, _Raised):
                self._finished = True
                raise item.exc
            return item

    def close(self) -> None:
        """Stop the producer at its next item; safe to call more than once."""
        with self._lock:
            self._cancelled = True
            self._items.clear()
        self._batch.clear()
        self._finished = True

    def join(self, timeout: float | None = None) -> None:
        """Wait until the producer thread has returned."""
        self._result.wait(timeout)


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Pump(Iterator[Any]):
    """Read ``source`` in a separate greenlet into a bounded queue.

    Iterating yields the source's items, or ``KEEPALIVE`` whenever ``heartbeat_s`` passes with
    nothing new. Exceptions of the source are re-raised to the reader. ``close()`` stops the reader
    greenlet and closes the source.
    """

    def __init__(
        self, source: Iterator[Any], *, maxsize: int = 16, heartbeat_s: float | None = None
    ) -> None:
        self._source = source
        self._queue: gevent.queue.Queue = gevent.queue.Queue(maxsize=maxsize)
        self._heartbeat = heartbeat_s if heartbeat_s and heartbeat_s > 0 else None
        self._done = False
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        try:
            for item in self._source:
                self._queue.put(item)
            self._queue.put(_DONE)
        except gevent.GreenletExit:
            raise
        except BaseException as exc:  # noqa: BLE001
            self._queue.put(_Raised(exc))

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            item = self._queue.get(timeout=self._heartbeat)
        except gevent.queue.Empty:
            return KEEPALIVE
        if item is _DONE:
            self._done = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._done = True
            raise item.exc
        return item

    def take(self, fits: Callable[[Any], bool]) -> list[Any]:
        """The items already queued, from the front, while ``fits(item)``; never waits."""
        out = []
        queue = self._queue
        while not self._done and queue.qsize():
            item = queue.peek_nowait()
            if item is _DONE or isinstance(item, _Raised) or not fits(item):
                break
            out.append(queue.get_nowait())
        return out

    def close(self) -> None:
        self._done = True
        # Block until the reader greenlet has left the source, or closing it would find it running.
        self._greenlet.kill(block=True, timeout=5)
        close = getattr(self._source, "close", None)
        if close is not None:
            try:
                close()
            except ValueError:  # still executing in a greenlet that ignored the kill
                pass


def pump(source: Iterable[Any], *, maxsize: int = 16, heartbeat_s: float | None = None) -> Pump:
    return Pump(iter(source), maxsize=maxsize, heartbeat_s=heartbeat_s)
