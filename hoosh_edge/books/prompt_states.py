"""Saved model states for prompt prefixes: a RAM LRU bounded in bytes, spilling to files.

An engine captures its state after evaluating a prompt (an opaque blob) and files it here with
the tokens it covers, in a *space*: one model file with the load parameters that shape its state,
named by the engine. Before the next generation ``lookup`` finds the entry sharing the longest
token prefix with the new prompt, and ``load`` gives its blob back to restore.

- RAM holds at most ``ram_bytes``; the least recently used blobs leave RAM first.
- A new entry drops the entries it supersedes (same space, their tokens a prefix of its own), so
  a conversation keeps one entry however many turns it takes.
- With a folder, every entry is also written to a file by a writer thread, never on the request
  path, and the folder holds at most ``disk_bytes``; the files outlive a restart. A file is a
  magic line, a JSON header (space, token count, blob size and sha256), the tokens (int32, little
  endian) and the blob. Written under a temporary name and renamed, so a file is whole or absent;
  one that fails a check (magic, header, length, checksum) is deleted and logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"hoosh-edge prompt state 1\n"
SUFFIX = ".state"
WRITE_QUEUE = 8  # captures waiting for the disk; more are kept in RAM only
MiB = 1 << 20


@dataclass(eq=False)
class Entry:
    """One saved state: the tokens it covers, and where its blob is (RAM, disk or both)."""

    space: str
    tokens: np.ndarray  # int32
    nbytes: int
    blob: bytearray | None = None
    path: Path | None = None
    used: float = field(default_factory=time.monotonic)
    dropped: bool = False


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    m = min(len(a), len(b))
    if m == 0:
        return 0
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


def as_tokens(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int32)


class PromptStateStore:
    """Prompt-prefix states in RAM (LRU, bounded in bytes) and, with a folder, on disk."""

    def __init__(self, folder: Path | None, *, ram_bytes: int, disk_bytes: int = 0) -> None:
        self.ram_limit = max(0, ram_bytes)
        self.disk_limit = max(0, disk_bytes) if folder is not None else 0
        self.folder = folder if self.disk_limit else None
        self._entries: list[Entry] = []
        self._lock = threading.Lock()
        self.lookups = self.hits = self.dropped_files = 0
        self._queue: queue.Queue[Entry | None] = queue.Queue(WRITE_QUEUE)
        self._writer: threading.Thread | None = None
        self._failing = False
        if self.folder is not None:
            # The tokens in a state file are the prompt itself: for the gateway's user alone.
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._scan()
            self._writer = threading.Thread(target=self._write_loop, name="prompt-states",
                                            daemon=True)  # fmt: skip
            self._writer.start()

    # -- the engine's side -------------------------------------------------------------------

    def lookup(self, space: str, tokens: Sequence[int] | np.ndarray) -> tuple[int, Entry | None]:
        """The entry of ``space`` sharing the most leading tokens with ``tokens``, and how many."""
        want = as_tokens(tokens)
        best, best_n = None, 0
        with self._lock:
            self.lookups += 1
            for e in self._entries:
                if e.space == space:
                    n = common_prefix(e.tokens, want)
                    if n > best_n:
                        best, best_n = e, n
        return best_n, best

    def load(self, entry: Entry) -> bytearray | None:
        """The blob of ``entry`` (from RAM, or read back from its file); None if it is gone."""
        with self._lock:
            blob, path = entry.blob, entry.path
            entry.used = time.monotonic()
        if blob is None and path is not None:
            blob = self._read(entry, path)
            if blob is not None:
                with self._lock:
                    if not entry.dropped and entry.nbytes <= self.ram_limit:
                        entry.blob = blob
                        self._evict_ram()
        if blob is not None:
            with self._lock:
                self.hits += 1
        return blob

    def put(self, space: str, tokens: Sequence[int] | np.ndarray, blob: bytearray, *,
            persist: bool = True) -> Entry | None:  # fmt: skip
        """File a captured state (``persist``: on disk too); the entries it supersedes go.

        None if it fits nowhere.
        """
        toks = as_tokens(tokens)
        entry = Entry(space, toks, len(blob))
        keep_ram = entry.nbytes <= self.ram_limit
        keep_disk = persist and self.folder is not None and entry.nbytes <= self.disk_limit
        if not (keep_ram or keep_disk):
            return None
        entry.blob = blob
        with self._lock:
            for old in list(self._entries):
                if old.space == space and len(old.tokens) <= len(toks):
                    if common_prefix(old.tokens, toks) == len(old.tokens):
                        self._drop(old)
            self._entries.append(entry)
        if keep_disk:
            try:
                self._queue.put_nowait(entry)
            except queue.Full:
                log.debug("prompt states: the disk is behind; this one stays in RAM only")
        if not keep_ram:
            return entry  # the writer drops the blob from RAM once it is on disk
        with self._lock:
            self._evict_ram()
        return entry

    def drop(self, entry: Entry) -> None:
        """Forget an entry whose state the engine could not use."""
        with self._lock:
            self._drop(entry)

    def cap_ram_room(self, room: int) -> None:
        """Let RAM grow by at most ``room`` more bytes from now on (memory is short)."""
        with self._lock:
            self.ram_limit = min(self.ram_limit, self._ram_used() + max(0, room))

    def ram_room(self) -> int:
        """How much more RAM the cache may still take."""
        with self._lock:
            return max(0, self.ram_limit - self._ram_used())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            in_ram = [e for e in self._entries if e.blob is not None]
            on_disk = [e for e in self._entries if e.path is not None]
            return {
                "entries": len(self._entries),
                "ram_entries": len(in_ram),
                "ram_bytes": sum(e.nbytes for e in in_ram),
                "ram_limit_bytes": self.ram_limit,
                "disk_entries": len(on_disk),
                "disk_bytes": sum(e.nbytes for e in on_disk),
                "disk_limit_bytes": self.disk_limit,
                "lookups": self.lookups,
                "hits": self.hits,
                "dropped_files": self.dropped_files,
            }

    def close(self, timeout: float = 10.0) -> None:
        """Let queued writes finish (up to ``timeout``), then stop the writer."""
        if self._writer is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._writer.join(timeout)
        self._writer = None

    # -- internals (the lock held where it says so) ------------------------------------------

    def _ram_used(self) -> int:
        return sum(e.nbytes for e in self._entries if e.blob is not None)

    def _evict_ram(self, limit: int | None = None) -> None:
        """Lock held: drop the least recently used blobs from RAM until under ``limit``."""
        limit = self.ram_limit if limit is None else limit
        used = self._ram_used()
        for e in sorted(self._entries, key=lambda x: x.used):
            if used <= limit:
                break
            if e.blob is None or self._queued(e):
                continue  # a queued entry keeps its blob until the writer has it on disk
            used -= e.nbytes
            e.blob = None
            if e.path is None:
                self._entries.remove(e)  # it was in RAM only: gone
                e.dropped = True

    def _queued(self, entry: Entry) -> bool:
        return self.folder is not None and entry in list(self._queue.queue)

    def _drop(self, entry: Entry) -> None:
        """Lock held: forget ``entry`` everywhere."""
        entry.dropped = True
        entry.blob = None
        if entry in self._entries:
            self._entries.remove(entry)
        if entry.path is not None:
            _unlink(entry.path)
            entry.path = None

    def _write_loop(self) -> None:
        while (entry := self._queue.get()) is not None:
            try:
                self._write(entry)
                self._failing = False
            except OSError as e:
                if not self._failing:  # once until a write succeeds again: no log flood
                    log.warning("prompt states: cannot write to %s (%s); kept in RAM only",
                                self.folder, e)  # fmt: skip
                self._failing = True
            except Exception:  # noqa: BLE001 - the writer thread must outlive any one file
                log.exception("prompt states: writing a state failed")

    def _write(self, entry: Entry) -> None:
        assert self.folder is not None
        with self._lock:
            blob = entry.blob
            if entry.dropped or blob is None:
                return
        digest = hashlib.sha256(blob).hexdigest()
        header = json.dumps({"space": entry.space, "n_tokens": len(entry.tokens),
                             "nbytes": entry.nbytes, "sha256": digest}).encode()  # fmt: skip
        name = hashlib.sha256(entry.space.encode() + entry.tokens.tobytes()).hexdigest()[:40]
        path = self.folder / (name + SUFFIX)
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "wb") as fh:
                fh.write(MAGIC + struct.pack("<I", len(header)) + header)
                fh.write(entry.tokens.astype("<i4").tobytes())
                fh.write(blob)
            os.replace(tmp, path)
        except OSError:
            _unlink(tmp)  # a full disk leaves no half file behind
            raise
        with self._lock:
            if entry.dropped:
                _unlink(path)
                return
            entry.path = path
            if entry.nbytes > self.ram_limit:
                entry.blob = None
            self._evict_ram()
            self._evict_disk()

    def _evict_disk(self) -> None:
        """Lock held: delete the least recently used files until the folder fits its bound."""
        files = sorted((e for e in self._entries if e.path is not None), key=lambda x: x.used)
        used = sum(e.nbytes for e in files)
        for e in files:
            if used <= self.disk_limit:
                break
            used -= e.nbytes
            _unlink(e.path)
            e.path = None
            if e.blob is None:
                self._entries.remove(e)
                e.dropped = True

    def _read_header(self, fh: Any) -> dict[str, Any]:
        if fh.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a prompt state file of this version")
        (n,) = struct.unpack("<I", fh.read(4))
        if n > MiB:
            raise ValueError("header too long")
        head = json.loads(fh.read(n))
        if not (isinstance(head, dict) and isinstance(head.get("space"), str)
                and isinstance(head.get("n_tokens"), int) and isinstance(head.get("nbytes"), int)
                and isinstance(head.get("sha256"), str)):  # fmt: skip
            raise ValueError("header lacks space, n_tokens, nbytes or sha256")
        return head

    def _scan(self) -> None:
        """Index the files of earlier runs (headers only); delete what fails its checks."""
        assert self.folder is not None
        for tmp in self.folder.glob("*.tmp"):
            _unlink(tmp)  # a write a crash interrupted
        for path in sorted(self.folder.glob("*" + SUFFIX)):
            try:
                size = path.stat().st_size
                with open(path, "rb") as fh:
                    head = self._read_header(fh)
                    raw = fh.read(4 * head["n_tokens"])
                    body = fh.tell()
                if len(raw) != 4 * head["n_tokens"] or size - body != head["nbytes"]:
                    raise ValueError("length does not match its header")
            except (OSError, ValueError, struct.error) as e:
                self._bad(path, str(e))
                continue
            tokens = np.frombuffer(raw, dtype="<i4").astype(np.int32)
            used = path.stat().st_mtime  # oldest files leave first; monotonic starts below now
            entry = Entry(head["space"], tokens, head["nbytes"], path=path,
                          used=time.monotonic() - max(0.0, time.time() - used))  # fmt: skip
            self._entries.append(entry)
        self._evict_disk()

    def _read(self, entry: Entry, path: Path) -> bytearray | None:
        try:
            with open(path, "rb") as fh:
                head = self._read_header(fh)
                fh.seek(4 * head["n_tokens"], os.SEEK_CUR)
                blob = bytearray(fh.read())
            if head["space"] != entry.space or len(blob) != entry.nbytes:
                raise ValueError("does not match its index entry")
            if hashlib.sha256(blob).hexdigest() != head["sha256"]:
                raise ValueError("checksum mismatch")
        except (OSError, ValueError, struct.error) as e:
            self._bad(path, str(e))
            with self._lock:
                entry.path = None
                if entry.blob is None:
                    self._drop(entry)
            return None
        return blob

    def _bad(self, path: Path, why: str) -> None:
        log.warning("prompt states: dropping %s: %s", path.name, why)
        self.dropped_files += 1
        _unlink(path)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("prompt states: cannot delete %s: %s", path, e)
