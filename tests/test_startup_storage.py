"""A data folder or database file the gateway cannot use stops start-up with one line, untouched.

Each case runs the real ``hoosh_edge.py``: its exit code, its one ``cannot start`` line, and the
bytes and mtime of what it was pointed at. ``hoosh-edge doctor`` then checks a damaged file and
explains the recovery, which is followed once to the end with Debian's ``sqlite3``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hoosh_edge.books.db import DB_FILENAME
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
# Root passes every permission check; these capabilities gone, it meets mode bits like anyone.
DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search"]  # fmt: skip


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and k != "HOOSH_EDGE_CONFIG"}  # fmt: skip
    out["PYTHONUNBUFFERED"] = "1"
    out["PYTHONPATH"] = str(ROOT)  # `-m hoosh_edge` imports this checkout, whatever is installed
    return out


def start(
    tmp: Path, data_dir: Path, prefix: list[str] | None = None
) -> subprocess.CompletedProcess:
    """Start the gateway on ``data_dir``; it must stop by itself (a started one times out)."""
    cfg = tmp / "hoosh-edge.toml"
    cfg.write_text(f'[server]\ndata_dir = "{data_dir}"\nmodels_dir = "{tmp / "no-models"}"\n')
    cmd = [*(prefix or []), sys.executable, str(ROOT / "hoosh_edge.py"), "--config", str(cfg),
           "--port", "0"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env(), cwd=tmp)


def doctor(tmp: Path, data_dir: Path) -> subprocess.CompletedProcess:
    cfg = tmp / "doctor.toml"
    cfg.write_text(f'[server]\ndata_dir = "{data_dir}"\nmodels_dir = "{tmp / "no-models"}"\n')
    return subprocess.run([sys.executable, "-m", "hoosh_edge", "doctor", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120, env=env(), cwd=tmp)  # fmt: skip


def fingerprint(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size


def one_line(r: subprocess.CompletedProcess) -> str:
    """The single line a refused start prints; nothing on stdout, nothing else on stderr."""
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hoosh-edge: cannot start: "), r.stderr
    return lines[0]


def real_database(data_dir: Path, rows: int = 3000) -> Path:
    """A gateway database with a few hundred KB of ledger in it, closed cleanly."""
    from hoosh_edge.books.db import Database

    db = Database.open(data_dir)
    with db.write() as w:
        w.conn.executemany(
            "INSERT INTO ledger (ts, request_id, provider, model, is_local, prompt_tokens) "
            "VALUES (?, ?, 'openai', 'gpt-4o-mini', 0, ?)",
            [(i, f"req-{i:08d}-{'x' * 40}", i) for i in range(rows)],
        )
    db.close()
    path = data_dir / DB_FILENAME
    for extra in ("-wal", "-shm"):
        Path(str(path) + extra).unlink(missing_ok=True)  # checkpointed at close
    return path


@pytest.fixture
def tmpfs(tmp_path: Path):
    """Mount a small tmpfs; yields its path and a function to remount it read-only."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")

    def read_only() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)

    yield mnt, read_only
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_data_dir_that_is_a_file(tmp_path):
    data = tmp_path / "state"
    data.write_bytes(b"not a folder\n")
    before = fingerprint(data)
    line = one_line(start(tmp_path, data))
    assert str(data) in line and "is not a folder" in line and "server.data_dir" in line
    assert fingerprint(data) == before


def test_a_data_dir_under_a_file(tmp_path):
    (tmp_path / "plain").write_text("x")
    line = one_line(start(tmp_path, tmp_path / "plain" / "state"))
    assert f"cannot create data_dir {tmp_path / 'plain' / 'state'}" in line


def test_a_read_only_data_dir_with_its_database(tmp_path, tmpfs):
    mnt, read_only = tmpfs
    data = mnt / "state"
    db = real_database(data)
    before = fingerprint(db)
    read_only()
    line = one_line(start(tmp_path, data))
    assert f"data_dir {data} is read-only" in line and "make it writable" in line
    assert fingerprint(db) == before
    assert sorted(p.name for p in data.iterdir()) == [DB_FILENAME]


def test_a_data_dir_to_create_on_a_read_only_disk(tmp_path, tmpfs):
    mnt, read_only = tmpfs
    read_only()
    line = one_line(start(tmp_path, mnt / "state"))
    assert f"cannot create data_dir {mnt / 'state'} (Read-only file system)" in line


def test_a_full_disk_at_start(tmp_path, tmpfs):
    from tests.test_storage import fill

    mnt, _ = tmpfs
    data = mnt / "state"
    db = real_database(data)
    before = fingerprint(db)
    fill(mnt)
    line = one_line(start(tmp_path, data))
    assert f"the database {db} (the disk is full" in line and "free some space there" in line
    assert fingerprint(db) == before


def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: mode bits cannot stop this process")
    return DROP_DAC


def test_an_unreadable_data_dir(tmp_path):
    prefix = _unprivileged()
    data = tmp_path / "state"
    db = real_database(data)
    before = fingerprint(db)
    data.chmod(0)
    try:
        line = one_line(start(tmp_path, data, prefix))
    finally:
        data.chmod(0o700)
    assert f"data_dir {data} is not readable and writable for this user" in line
    assert "chown" in line
    assert fingerprint(db) == before


def test_an_unreadable_database_file(tmp_path):
    prefix = _unprivileged()
    data = tmp_path / "state"
    db = real_database(data)
    before = fingerprint(db)
    db.chmod(0)
    try:
        line = one_line(start(tmp_path, data, prefix))
    finally:
        db.chmod(0o600)
    assert f"cannot read the database {db} (Permission denied)" in line
    assert fingerprint(db) == before


def test_random_bytes_for_a_database(tmp_path):
    data = tmp_path / "state"
    data.mkdir()
    db = data / DB_FILENAME
    db.write_bytes(os.urandom(64 * 1024))
    before = fingerprint(db)
    line = one_line(start(tmp_path, data))
    assert f"the database {db} is damaged (it does not start with the SQLite header)" in line
    assert "hoosh-edge doctor" in line and "left untouched" in line
    assert fingerprint(db) == before
    assert sorted(p.name for p in data.iterdir()) == [DB_FILENAME]  # no -wal, no -shm made


def test_a_truncated_database(tmp_path):
    data = tmp_path / "state"
    db = real_database(data)
    full = db.stat().st_size
    assert full > 64 * 1024
    with db.open("r+b") as f:
        f.truncate(full // 2 + 100)  # mid-page, as a copy cut short would be
    before = fingerprint(db)
    line = one_line(start(tmp_path, data))
    assert f"the database {db} is damaged" in line
    assert fingerprint(db) == before

    with db.open("r+b") as f:
        f.truncate(full // 2 // 4096 * 4096)  # whole pages, fewer than the header counts
    before = fingerprint(db)
    line = one_line(start(tmp_path, data))
    assert "truncated" in line and str(db) in line
    assert fingerprint(db) == before


def test_a_database_damaged_inside(tmp_path):
    data = tmp_path / "state"
    db = real_database(data)
    with db.open("r+b") as f:  # header and length intact: only reading every page shows it
        f.seek(db.stat().st_size // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096)
    before = fingerprint(db)
    line = one_line(start(tmp_path, data))
    assert f"the database {db} is damaged (" in line and "hoosh-edge doctor" in line
    assert fingerprint(db) == before


def test_doctor_finds_the_damage_and_the_recovery_it_gives_works(tmp_path, gateway_factory):
    data = tmp_path / "state"
    db = real_database(data)
    good = doctor(tmp_path, data)
    assert f"[ok] database {db}: integrity_check ok" in good.stdout, good.stdout

    # Damage a page in the middle (the header stays valid): only a full check can see it.
    with db.open("r+b") as f:
        f.seek(db.stat().st_size // 2 // 4096 * 4096)  # a ledger page, past the schema
        f.write(os.urandom(4096))
    before = fingerprint(db)
    r = doctor(tmp_path, data)
    assert r.returncode == 1
    assert f"[!!] database {db}: damaged (" in r.stdout, r.stdout
    for line in r.stdout.splitlines()[:-1]:  # the doctor's line format holds for the recovery too
        assert re.match(r"^(\[(ok|!!|--)\] |     fix: )", line), line
    for step in ("sudo systemctl stop hoosh-edge", f"cp -a {db} {db}.broken",
                 f"sqlite3 {db}.broken .", f"| sqlite3 {db}.recovered",
                 f"mv {db}.recovered {db}", "start fresh"):  # fmt: skip
        assert step in r.stdout, (step, r.stdout)
    assert fingerprint(db) == before

    require_tool("sqlite3", why="the sqlite3 command is not installed (apt-get install sqlite3)")
    # Follow the advice as printed: the copy, then the one command it gives for this sqlite3.
    shutil.copy2(db, f"{db}.broken")
    steps = [line.removeprefix("     fix:").strip() for line in r.stdout.splitlines()]
    command = next(step for step in steps if step.startswith(f"sqlite3 {db}.broken"))
    recover = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
    assert recover.returncode == 0, recover.stderr
    os.replace(f"{db}.recovered", db)
    assert f"[ok] database {db}: integrity_check ok" in doctor(tmp_path, data).stdout
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
    assert 0 < kept <= 3000
    gw = gateway_factory(f'[server]\ndata_dir = "{data}"\n')  # and the gateway takes it
    assert gw.proc is not None and gw.proc.poll() is None
