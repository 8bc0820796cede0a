"""A real PostgreSQL server for the tests: a throwaway cluster on a free loopback port.

``initdb`` and ``pg_ctl`` run as the ``postgres`` user when the tests run as root (PostgreSQL
refuses to run as root), in a folder that user owns; the server listens on 127.0.0.1 only and
trusts local connections, which is what a test cluster that lives for one run needs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_tools() -> tuple[str, str] | None:
    """``initdb`` and ``pg_ctl`` on PATH (or in Debian's versioned folder), or None."""
    found = [shutil.which("initdb"), shutil.which("pg_ctl")]
    if all(found):
        return found[0], found[1]  # type: ignore[return-value]
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return str(bindir / "initdb"), str(bindir / "pg_ctl")
    return None


class PgServer:
    """One cluster: ``start()``, ``url(dbname)``, ``new_database()``, ``stop()``."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync  # off for tests (speed); on for benchmarks (what a box would run)
        tools = pg_tools()
        if tools is None:
            raise RuntimeError("initdb / pg_ctl not found (apt-get install postgresql)")
        self.initdb, self.pg_ctl = tools
        self.root = Path(tempfile.mkdtemp(prefix="hoosh-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> PgServer:
        if self.user:
            shutil.chown(self.root, self.user)
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")  # fmt: skip
        self.resume()
        return self

    @property
    def options(self) -> str:
        return (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.root} -c fsync={'on' if self.fsync else 'off'} -c max_connections=100")  # fmt: skip

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def pause(self) -> None:
        """Stop the server, keeping its data: the database is unreachable until ``resume``."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start it again on the same port with the same data."""
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "log"), "-o",
                  self.options, "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
