"""What is installed in ``models/``: the state file, and verify / remove against the manifest.

``models/.modelstore.json`` records what was installed, with which sha256, size and mtime; it
doubles as a hash cache so ``verify`` and ``pull`` of a present model need not re-read 100 MB
files whose size and mtime have not changed (``full=True`` re-hashes everything).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hoosh_edge.backends.modelstore.manifest import Manifest, ModelFile, ModelSpec
from hoosh_edge.backends.modelstore.tree import (
    remove_tree,
    sha256_file,
    tree_sha256,
    tree_stat,
)

STATE_FILE = ".modelstore.json"
PARTIAL_DIR = ".partial"
_RACY_NS = 2_000_000_000


class InstallState:
    """``.modelstore.json``: what was installed from where, and a (size, mtime) -> sha256 cache."""

    def __init__(self, models_dir: Path) -> None:
        self.path = models_dir / STATE_FILE
        try:
            self.files: dict[str, dict[str, Any]] = json.loads(self.path.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            self.files = {}  # a lost or broken cache only costs a re-hash
        self.dirty = False

    def fresh(self, name: str, st: os.stat_result) -> dict[str, Any] | None:
        """The entry for ``name`` if the file on disk still has the recorded size and mtime.

        An entry recorded within a couple of seconds of the file's mtime is not trusted: file
        times are coarse (a few ms), so a rewrite in that window could keep the same mtime.
        """
        e = self.files.get(name)
        if e and e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns:
            if e.get("recorded_ns", 0) - st.st_mtime_ns >= _RACY_NS:
                return e
        return None

    def put(self, path: Path, sha256: str, **info: Any) -> None:
        st = tree_stat(path) if path.is_dir() else path.stat()
        old = self.files.get(path.name, {})
        self.files[path.name] = {
            **old,
            **info,
            "sha256": sha256,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "recorded_ns": time.time_ns(),
        }
        self.dirty = True

    def drop(self, name: str) -> None:
        if self.files.pop(name, None) is not None:
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "files": self.files}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
        self.dirty = False


@dataclass(frozen=True)
class VerifyResult:
    model_id: str
    name: str
    path: Path
    status: str  # "ok" | "missing" | "mismatch"
    sha256: str | None = None
    expected: tuple[str, ...] = ()
    cached: bool = False  # True when the (size, mtime) cache answered without hashing

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_file(
    spec: ModelSpec, f: ModelFile, models_dir: Path, state: InstallState, full: bool = False
) -> VerifyResult:
    path = models_dir / f.name
    if not (path.is_dir() if f.tree else path.is_file()):
        return VerifyResult(spec.id, f.name, path, "missing")
    st = tree_stat(path) if f.tree else path.stat()
    entry = state.fresh(f.name, st)
    if entry and not full:
        return VerifyResult(spec.id, f.name, path, "ok", entry["sha256"], (entry["sha256"],), True)
    accepted = spec.known_sha256(f.name)
    if f.name in state.files:  # what we installed ourselves (converted or trusted on first use)
        accepted.add(state.files[f.name]["sha256"])
    digest = tree_sha256(path) if f.tree else sha256_file(path)
    if digest in accepted:
        state.put(path, digest, model=spec.id)
        return VerifyResult(spec.id, f.name, path, "ok", digest, tuple(sorted(accepted)))
    return VerifyResult(spec.id, f.name, path, "mismatch", digest, tuple(sorted(accepted)))


def verify(
    manifest: Manifest,
    models_dir: Path,
    *,
    full: bool = False,
    model_ids: Sequence[str] | None = None,
) -> list[VerifyResult]:
    """Check every file of the manifest's models: present and ok, missing, or sha mismatch."""
    models_dir = Path(models_dir)
    state = InstallState(models_dir)
    specs = [manifest.get(m) for m in model_ids] if model_ids else list(manifest.models.values())
    try:
        return [check_file(s, f, models_dir, state, full) for s in specs for f in s.files]
    finally:
        if models_dir.is_dir():
            state.save()


def remove(manifest: Manifest, model_id: str, models_dir: Path) -> list[Path]:
    """Delete a model's files (and any partial download of them); return what was deleted."""
    spec = manifest.get(model_id)
    models_dir = Path(models_dir)
    state = InstallState(models_dir)
    removed = []
    for f in spec.files:
        if f.tree and remove_tree(models_dir / f.name):
            removed.append(models_dir / f.name)
        if f.tree and (models_dir / PARTIAL_DIR).is_dir():  # scratch of a pull that was killed
            for stale in (models_dir / PARTIAL_DIR).glob(f"{f.name}.tree-*"):
                remove_tree(stale)
        for p in (
            models_dir / f.name,
            models_dir / PARTIAL_DIR / (f.name + ".part"),
            models_dir / PARTIAL_DIR / (f.name + ".part.json"),
        ):
            if p.is_file():
                p.unlink()
                removed.append(p)
        state.drop(f.name)
    if models_dir.is_dir():
        state.save()
    return removed
