"""``hoosh-edge doctor``: Python, packages, models, memory, disk, config and the database file.

Read-only: it opens the database without changing it and says how to recover a damaged one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hoosh_edge.config import Config, LocalEngineConfig


def _recover_command(broken: Path, new: Path) -> str:
    """The best way the installed ``sqlite3`` command has to copy out what a damaged file holds.

    ``.recover`` reads page by page and saves the most, but needs the ``sqlite_dbpage`` table,
    which Debian's build (bookworm, and so Raspberry Pi OS) lacks: there ``.recover`` fails with
    "no such table: sqlite_dbpage". ``.dump`` works everywhere; it ends with ROLLBACK when it met
    damage, which the ``sed`` turns into COMMIT so what it could read is kept.
    """
    recover = f"sqlite3 {broken} .recover | sqlite3 {new}"
    dump = (f"sqlite3 {broken} .dump | sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' "
            f"| sqlite3 {new}")  # fmt: skip
    exe = shutil.which("sqlite3")
    if exe is None:
        return f"{dump}   (first: sudo apt-get install sqlite3)"
    try:
        probe = subprocess.run([exe, ":memory:", "SELECT count(*) FROM sqlite_dbpage"],
                               capture_output=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return dump
    return recover if probe.returncode == 0 and not probe.stderr else dump


def _recovery_steps(path: Path) -> list[str]:
    """How to get a working database back from a damaged one, a line a step."""
    broken = path.with_name(path.name + ".broken")
    new = path.with_name(path.name + ".recovered")
    return [
        "the gateway will not start on it, and nothing has changed it. To recover:",
        "1. stop the service: sudo systemctl stop hoosh-edge",
        f"2. copy it aside (with its -wal file, if there is one): cp -a {path} {broken}",
        "3. as the service user (sudo -u hoosh-edge sh -c '...'), so the new file is its own,",
        "   copy out what SQLite can still read into a new file:",
        f"   {_recover_command(broken, new)}",
        f"   then put it in place: mv {new} {path} (and remove {path}-wal and {path}-shm)",
        f"   or start fresh: mv {path} {broken} (budgets in the config come back; API keys,",
        "   the spend ledger and the cache are lost)",
        "4. check, then start: hoosh-edge doctor && sudo systemctl start hoosh-edge",
    ]


def _doctor_database(data_dir: Path) -> int:
    """Check the database file read-only (``PRAGMA integrity_check``); 1 if it is damaged."""
    from hoosh_edge.books import storage
    from hoosh_edge.books.db import DB_FILENAME

    path = data_dir / DB_FILENAME
    if not path.exists():
        print(f"[--] database {path}: not created yet (the gateway creates it at start)")
        return 0
    try:
        with path.open("rb") as f:
            header = f.read(100)
            size = os.fstat(f.fileno()).st_size
        found = [] if size == 0 else [p for p in [storage.header_problem(header, size)] if p]
        found = found or storage.integrity_problems(path)
    except OSError as e:
        print(f"[!!] database {path}: cannot read it ({e.strerror or e})\n"
              "     fix: make it readable and writable by the user running hoosh-edge")  # fmt: skip
        return 1
    except Exception as e:  # noqa: BLE001 - the doctor reports, never crashes
        found = [f"{type(e).__name__}: {e}"]
    if not found:
        print(f"[ok] database {path}: integrity_check ok")
        return 0
    print(f"[!!] database {path}: damaged ({'; '.join(found[:3])})")
    for line in _recovery_steps(path):
        print(f"     fix: {line}")
    return 1


def _doctor_phonemizer(
    tts: LocalEngineConfig, models_dir: Path, report: Callable[..., None]
) -> None:
    """Which phonemizer Piper voices would use, on which espeak-ng data, or what to install."""
    from hoosh_edge.backends.engines.phonemizer import PULL_DATA, espeak_data, status

    choice = tts.phonemizer
    state = status(choice, espeak_data(tts.espeak_data, models_dir))
    if state.in_use is not None:
        report(
            True, f"phonemizer {state.in_use} (local.tts.phonemizer = {choice!r}): {state.detail}"
        )
        if state.warning:  # it speaks, so no failure; the phonemes may still not be the voice's
            print(f"[--] espeak-ng data {state.data} is the system's: phoneme ids may differ "
                  f"from the voice's training\n     fix: {PULL_DATA} (read from the gateway's "
                  "next start)")  # fmt: skip
    else:
        report(False, f"phonemizer (local.tts.phonemizer = {choice!r}): none can be used; "
               "text-to-speech voices will answer 503", state.fix)  # fmt: skip


def cmd_doctor(args: argparse.Namespace, config: Config) -> int:
    """Check what the gateway needs and say what to fix."""
    import importlib.util

    problems = 0

    def report(ok: bool, what: str, fix: str = "") -> None:
        nonlocal problems
        print(f"[{'ok' if ok else '!!'}] {what}" + ("" if ok else f"\n     fix: {fix}"))
        problems += 0 if ok else 1

    report(sys.version_info >= (3, 10), f"Python {sys.version.split()[0]}", "use Python 3.10+")
    for mod, pkg in (("flask", "flask"), ("gevent", "gevent"), ("requests", "requests"),
                     ("sqlite_utils", "sqlite-utils"), ("llama_cpp", "llama-cpp-python"),
                     ("pywhispercpp", "pywhispercpp"), ("onnxruntime", "onnxruntime"),
                     ("soundfile", "soundfile"), ("soxr", "soxr")):  # fmt: skip
        found = importlib.util.find_spec(mod) is not None
        report(found, f"package {pkg}", f"pip install '{pkg}' (or scripts/setup)")
    models_dir = Path(config.server.models_dir)
    _doctor_phonemizer(config.tts, models_dir, report)
    from hoosh_edge.backends import modelstore
    from hoosh_edge.device import mem_available_bytes

    try:
        results = modelstore.verify(modelstore.load_manifest(), models_dir)
        seen: set[tuple[str, str]] = set()
        for res in results:
            if (res.model_id, res.status) in seen:
                continue
            seen.add((res.model_id, res.status))
            if res.status == "missing":
                print(f"[--] model {res.model_id}: not installed "
                      f"(hoosh-edge models pull {res.model_id})")  # fmt: skip
            else:
                report(res.status == "ok", f"model {res.model_id}: {res.status}",
                       f"hoosh-edge models rm {res.model_id} && hoosh-edge models pull "
                       f"{res.model_id}")  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the doctor reports, never crashes
        report(False, f"model check: {e}", "see models/README.md")
    avail = mem_available_bytes()
    if avail is not None:
        report(avail > 512 * 1024 * 1024, f"free memory {avail // (1024 * 1024)} MiB",
               "stop other programs or use smaller models")  # fmt: skip
    data_dir = Path(config.server.data_dir)
    probe = data_dir if data_dir.exists() else data_dir.parent
    free = shutil.disk_usage(probe if probe.exists() else Path.cwd()).free
    report(free > 1024**3, f"free disk {free // (1024 * 1024)} MiB at {probe}",
           "free some disk space: the database and models live there")  # fmt: skip
    problems += _doctor_database(data_dir)
    report(True, f"config {config.source or '(defaults)'} is valid")
    for w in config.warnings:
        report(False, f"config: {w}", "set the variable or fix the config")
    print("All good." if not problems else f"{problems} problem(s) found.")
    return 0 if not problems else 1
