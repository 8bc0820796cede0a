"""Model lifecycle on a small box: lazy load, idle unload, a memory check, one job per model.

Every on-device model (LLM, whisper, Piper voice) lives in a ``ModelSlot`` registered with the
``ModelPool``. ``slot.use()`` is the only way in:

    with pool.slot("smollm2").use() as model:   # waits in a bounded queue, loads if needed
        ...                                      # this request owns the model until it leaves

Loading runs in a pool thread (it reads hundreds of MB). Before a load the pool compares the
model's estimated footprint with free memory (``device.mem_available_bytes``: ``MemAvailable`` or
the cgroup headroom, whichever is less): idle models are unloaded first (least recently used
first); if it still does not fit the load is refused with ``InsufficientMemory``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent
import gevent.lock

from hoosh_edge import workers
from hoosh_edge.device import mem_available_bytes
from hoosh_edge.errors import InsufficientMemory, QueueFull
from hoosh_edge.threads import run_blocking

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Slowest model-file read expected (an SD card): how long a load may take before it is "stuck".
LOAD_BYTES_PER_S = 10 * MiB


@dataclass
class ModelSlot:
    """One on-device model: how to load it, what it costs, and who is using it."""

    key: str
    kind: str  # "llm" | "stt" | "tts"
    loader: Callable[[], Any]
    estimate_bytes: int
    keep_alive_s: float = 300.0
    max_queue: int = 4
    unloader: Callable[[Any], None] | None = None
    pool: ModelPool | None = field(default=None, repr=False)
    model: Any = field(default=None, repr=False)
    loaded_at: float | None = None
    last_used: float = 0.0
    waiting: int = 0
    busy: bool = False
    # A caller's own keep-alive (Ollama's keep_alive): unload at this monotonic time instead of
    # keep_alive_s after the last use; inf keeps the model loaded. None: keep_alive_s applies.
    expires_at: float | None = None
    load_s: float = 0.0  # how long the last load took

    def __post_init__(self) -> None:
        self._lock = gevent.lock.Semaphore(1)
        self._load_lock = gevent.lock.Semaphore(1)

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def queue_depth(self) -> int:
        return self.waiting

    @contextlib.contextmanager
    def use(self, timeout: float | None = None) -> Iterator[Any]:
        """Own this model for the duration of the block, loading it first if needed."""
        if self.busy and self.waiting >= self.max_queue:
            raise QueueFull(
                f"Model '{self.key}' is busy and {self.waiting} requests are already waiting; "
                "try again shortly.",
                retry_after=5,
            )
        self.waiting += 1
        try:
            acquired = self._lock.acquire(timeout=timeout)
        finally:
            self.waiting -= 1
        if not acquired:
            raise QueueFull(f"Timed out waiting for model '{self.key}'.", retry_after=5)
        self.busy = True
        try:
            model = self.ensure_loaded()
            yield model
        finally:
            self.busy = False
            self.last_used = time.monotonic()
            self._lock.release()
            if self.expires_at is not None and self.expires_at <= self.last_used:
                self.unload()  # asked to go right after this use (keep_alive 0)

    def ensure_loaded(self) -> Any:
        """Load the model if it is not in memory (checking free RAM first)."""
        with self._load_lock:
            if self.model is None:
                if self.pool is not None:
                    self.pool.make_room(self)
                started = time.monotonic()
                self.model = run_blocking(self.loader, owner=self.key,
                                          expect_s=self.estimate_bytes / LOAD_BYTES_PER_S)  # fmt: skip
                self.loaded_at = time.monotonic()
                self.load_s = self.loaded_at - started
                log.info(
                    "loaded %s model %s in %.2fs", self.kind, self.key, self.loaded_at - started
                )
            self.last_used = time.monotonic()
            return self.model

    def unload(self) -> bool:
        """Free the model if nobody is using it; True if it was unloaded."""
        if self.model is None or self.busy:
            return False
        model, self.model, self.loaded_at = self.model, None, None
        self.expires_at = None  # the next load starts with the default keep-alive
        try:
            if self.unloader is not None:
                self.unloader(model)
            else:
                close = getattr(model, "close", None)
                if close is not None:
                    close()
        except Exception:  # noqa: BLE001 - an unload failure must not take the server down
            log.exception("error while unloading %s", self.key)
        log.info("unloaded %s model %s", self.kind, self.key)
        return True


class RamCache(Protocol):
    """A cache whose RAM the pool counts (``books.prompt_states.PromptStateStore``)."""

    def ram_room(self) -> int: ...
    def cap_ram_room(self, room: int) -> None: ...


class ModelPool:
    """All on-device models of this box and the memory they may use."""

    def __init__(
        self,
        *,
        reserve_bytes: int = 256 * MiB,
        mem_available: Callable[[], int | None] = mem_available_bytes,
    ) -> None:
        self.slots: dict[str, ModelSlot] = {}
        self.reserve_bytes = reserve_bytes
        self._mem_available = mem_available
        self._reaper: gevent.Greenlet | None = None
        # RAM caches beside the models (saved prompt states): what they may still grow by counts
        # in every load, and they give their RAM back before a model is refused.
        self.caches: list[RamCache] = []

    def register(self, slot: ModelSlot) -> ModelSlot:
        slot.pool = self
        self.slots[slot.key] = slot
        return slot

    def slot(self, key: str) -> ModelSlot:
        return self.slots[key]

    def make_room(self, slot: ModelSlot) -> None:
        """Unload idle models until ``slot`` fits in free memory, or refuse."""
        avail = self._mem_available()
        if avail is None:
            return  # neither /proc/meminfo nor a cgroup limit: nothing to judge by
        growth = sum(c.ram_room() for c in self.caches)
        need = slot.estimate_bytes + self.reserve_bytes + growth
        if need <= avail:
            return
        idle = sorted(
            (s for s in self.slots.values() if s.loaded and not s.busy and s is not slot),
            key=lambda s: s.last_used,
        )
        for other in idle:
            other.unload()
            avail = self._mem_available() or 0
            if need <= avail:
                return
        model_need = slot.estimate_bytes + self.reserve_bytes
        if growth and model_need <= avail:
            # The model fits, its caches' full bound does not: the caches get what is left.
            room = avail - model_need
            for c in self.caches:
                given = min(c.ram_room(), room)
                c.cap_ram_room(given)
                room -= given
            log.warning("less memory than %s and the saved prompt states' bound need: the "
                        "prompt states may now grow by %d MiB only", slot.key,
                        (avail - model_need) // MiB)  # fmt: skip
            return
        raise InsufficientMemory(
            f"Not enough free memory to load '{slot.key}': it needs about "
            f"{slot.estimate_bytes // MiB} MiB (+{self.reserve_bytes // MiB} MiB reserve"
            + (f", +{growth // MiB} MiB for saved prompt states" if growth else "")
            + f") and {avail // MiB} MiB is available.",
        )

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Unload every model idle for longer than its keep_alive_s (or past its expires_at)."""
        now = time.monotonic() if now is None else now
        done = []
        for s in self.slots.values():
            if not s.loaded or s.busy:
                continue
            if s.expires_at is not None:
                due = now >= s.expires_at
            else:
                due = s.keep_alive_s > 0 and now - s.last_used >= s.keep_alive_s
            if due and s.unload():
                done.append(s.key)
        return done

    def keep(self, key: str, seconds: float | None) -> None:
        """Keep model ``key`` loaded ``seconds`` from now (inf: always; 0: unload now, or as soon
        as its current use ends); None goes back to its keep_alive_s."""
        slot = self.slots[key]
        if seconds is None or not slot.loaded:
            slot.expires_at = None  # a model not in memory starts afresh at its next load
            return
        slot.expires_at = time.monotonic() + seconds
        if seconds <= 0:
            slot.unload()  # refused while busy: the end of that use unloads it

    def expires_in(self, key: str) -> float | None:
        """Seconds until model ``key`` is unloaded when left idle (inf: never; None: not loaded)."""
        slot = self.slots[key]
        if not slot.loaded:
            return None
        if slot.expires_at is not None:
            return max(0.0, slot.expires_at - time.monotonic())
        if slot.keep_alive_s <= 0:
            return math.inf
        return max(0.0, slot.last_used + slot.keep_alive_s - time.monotonic())

    def loaded_since(self, key: str, since: float) -> float:
        """Seconds spent loading model ``key`` if its current load began after ``since``, else 0."""
        slot = self.slots.get(key)
        if slot is None or slot.loaded_at is None or slot.loaded_at - slot.load_s < since:
            return 0.0
        return slot.load_s

    def start_reaper(self, interval_s: float = 5.0) -> None:
        """Check for idle models every ``interval_s`` seconds in a background greenlet."""
        if self._reaper is not None:
            return

        def loop() -> None:
            while True:
                gevent.sleep(interval_s)
                try:
                    self.unload_idle()
                except Exception:  # noqa: BLE001
                    log.exception("idle unload failed")

        self._reaper = gevent.spawn(loop)

    def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.kill(block=False)
            self._reaper = None
        for s in self.slots.values():
            s.unload()

    def status(self) -> list[dict[str, Any]]:
        """What /metrics and the status page show about each model.

        ``threads`` counts the model's jobs really running in an OS thread; ``busy`` is true while
        a request holds the model or a thread still works for it.
        """
        return [
            {
                "id": s.key,
                "kind": s.kind,
                "loaded": s.loaded,
                "busy": s.busy or threads > 0,
                "threads": threads,
                "queue_depth": s.waiting,
                "estimate_bytes": s.estimate_bytes,
                "idle_s": round(time.monotonic() - s.last_used, 1) if s.loaded else None,
            }
            for s in self.slots.values()
            for threads in (workers.inference.running_for(s.key),)
        ]
