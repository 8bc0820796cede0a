"""``hoosh-edge models list | pull | verify | rm``: the model store's commands, for people.

Each command prints human output and returns an exit code: 0 done, 1 a failure or a corrupt
file, 2 an unknown model id.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hoosh_edge.backends.modelstore import (
    DEFAULT_MODELS_DIR,
    ModelStoreError,
    Progress,
    list_models,
    load_manifest,
    pull,
    remove,
    verify,
)
from hoosh_edge.backends.modelstore.tree import tree_stat
from hoosh_edge.errors import ModelNotFound


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def _printer(stream: Any = sys.stderr) -> Progress:
    """A progress callback that rewrites one line on a terminal and stays quiet otherwise."""
    last: dict[str, int] = {}

    def show(name: str, done: int, total: int | None) -> None:
        step = done // (8 << 20)  # a line per 8 MiB keeps logs short when not a terminal
        if not done and total is None:
            print(f"  {name} ...", file=stream)
        elif stream.isatty():
            pct = f" {done * 100 // total:3d}%" if total else ""
            stream.write(f"\r  {name}: {_mib(done)}{pct}   ")
            stream.flush()
        elif last.get(name) != step:
            last[name] = step
            print(f"  {name}: {_mib(done)}", file=stream)

    return show


def _guarded(body: Callable[[], int]) -> int:
    """Run a command body; a store error becomes a message on stderr and an exit code."""
    try:
        return body()
    except ModelNotFound as e:  # a usage error: the id is not in the manifest
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except ModelStoreError as e:
        print(f"\nerror: {e.message}", file=sys.stderr)
        return 1


def cmd_list(models_dir: Path = DEFAULT_MODELS_DIR, manifest_path: Path | str | None = None) -> int:
    """``hoosh-edge models list``: print each model, its state and size."""

    def body() -> int:
        listing = list_models(load_manifest(manifest_path), models_dir)
        print(f"{'MODEL':<18}{'KIND':<6}{'STATE':<11}{'SIZE':>11}  FILES")
        for m in listing:
            state = m.status + ("*" if m.status == "installed" and not m.checked else "")
            names = ", ".join(p.name for p in m.files) or "-"
            print(f"{m.id:<18}{m.kind:<6}{state:<11}{_mib(m.size) if m.size else '-':>11}  {names}")
        if any(m.status == "installed" and not m.checked for m in listing):
            print("* changed since last verified: run `hoosh-edge models verify`")
        return 0

    return _guarded(body)


def cmd_pull(
    model_id: str,
    models_dir: Path = DEFAULT_MODELS_DIR,
    manifest_path: Path | str | None = None,
    *,
    prefer: str | None = None,
    verify: bool = True,
) -> int:
    """``hoosh-edge models pull NAME``: install a model; 0 when its files are in place."""

    def body() -> int:
        manifest = load_manifest(manifest_path)
        paths = pull(
            manifest, model_id, models_dir, prefer=prefer, verify=verify, progress=_printer()
        )
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        for p in paths:
            size = tree_stat(p).st_size if p.is_dir() else p.stat().st_size
            print(f"{model_id}: {p} ({_mib(size)})")
        return 0

    return _guarded(body)


def cmd_verify(
    models_dir: Path = DEFAULT_MODELS_DIR,
    manifest_path: Path | str | None = None,
    *,
    full: bool = False,
) -> int:
    """``hoosh-edge models verify``: 1 if any file of an installed model is missing or corrupt."""

    def body() -> int:
        manifest = load_manifest(manifest_path)
        results = verify(manifest, models_dir, full=full)
        bad = 0
        for mid in manifest.models:
            mine = [r for r in results if r.model_id == mid]
            if all(r.status == "missing" for r in mine):
                print(f"{mid}: not installed")
                continue
            for r in mine:
                bad += not r.ok
                line = f"{mid}: {r.name}: {r.status}" + (" (cached)" if r.cached else "")
                if r.status == "mismatch":
                    line += f" — sha256 {r.sha256}, expected {' or '.join(r.expected) or 'unknown'}"
                print(line)
        return 1 if bad else 0

    return _guarded(body)


def cmd_rm(
    model_id: str, models_dir: Path = DEFAULT_MODELS_DIR, manifest_path: Path | str | None = None
) -> int:
    """``hoosh-edge models rm NAME``: delete a model's files."""

    def body() -> int:
        removed = remove(load_manifest(manifest_path), model_id, models_dir)
        for p in removed:
            print(f"removed {p}")
        if not removed:
            print(f"{model_id}: not installed; nothing removed")
        return 0

    return _guarded(body)
