"""Shared fixtures: real gateway processes and real fake upstreams on 127.0.0.1."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, settings

from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent

# GitHub Actions and most CI services set CI=true; .ci/run sets it too. There, everything the
# tests need is installed by .ci/run, so a missing piece is a broken run, not a reason to skip.
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(condition: object, why: str) -> None:
    """Skip unless ``condition`` holds on a developer's machine; fail instead under CI.

    For what .ci/run installs (model packages and files, llama_cpp, system tools): a CI run
    that lacks one must go red, not green with a skip nobody reads. Genuinely environment-bound
    checks (tmpfs mounts, root) stay plain ``pytest.skip``.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this (see .ci/run): {why}", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def require_module(name: str, why: str) -> Any:
    """``import name``, or ``require`` fails/skips with ``why``."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        require(False, f"{why} ({e})")


def require_tool(*names: str, why: str) -> str:
    """The path of the first of ``names`` on PATH, or ``require`` fails/skips with ``why``."""
    found = next((p for p in map(shutil.which, names) if p), None)
    require(found, why)
    assert found is not None
    return found


# System tools .ci/run installs with apt; a test that needs one asks for its fixture (or uses
# ``pytest.mark.usefixtures``), so it skips here and fails in CI when the tool is missing.
@pytest.fixture(scope="session")
def chromium_path() -> str:
    return require_tool(
        "chromium", "chromium-browser", why="chromium is not installed (apt-get install chromium)"
    )


@pytest.fixture(scope="session")
def systemd_analyze_path() -> str:
    return require_tool(
        "systemd-analyze", why="systemd-analyze is not installed (apt-get install systemd)"
    )


@pytest.fixture(scope="session")
def shellcheck_path() -> str:
    return require_tool(
        "shellcheck", why="shellcheck is not installed (apt-get install shellcheck)"
    )


# Example budgets for the fuzz tests (test_fuzz_input.py): small by default so the suite stays
# fast; ``pytest --hypothesis-profile=long tests/test_fuzz_input.py`` for a long soak.
_FUZZ = {"deadline": None, "print_blob": True,
         "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}  # fmt: skip
settings.register_profile("fast", max_examples=30, **_FUZZ)
settings.register_profile("long", max_examples=2000, **_FUZZ)


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("--hypothesis-profile", None):
        settings.load_profile("fast")
    config.addinivalue_line(
        "markers",
        "expect_gateway_errors: the test provokes a 500 or a traceback in the gateway on purpose",
    )


class GatewayProcess:
    """``python hoosh_edge.py`` in a child process, on a free port.

    When it stops, a traceback or a 500 access line in its log fails the test (see
    ``log_problems``) unless the test set ``expect_errors`` or carries the
    ``expect_gateway_errors`` marker: bad input must get a 4xx, never a crash.
    """

    expect_errors = False

    def __init__(self, config_text: str, tmp: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None, preexec_fn: Any = None) -> None:  # fmt: skip
        self.tmp = tmp
        self.config_path = tmp / "hoosh-edge.toml"
        self.config_path.write_text(config_text)
        self.env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        self.env.update(env or {})
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.args = args or []
        self.preexec_fn = preexec_fn  # runs in the child before exec, e.g. to set rlimits
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.stderr_lines: list[str] = []
        self._drains: list[threading.Thread] = []

    def command(self) -> list[str]:
        """How the gateway is started: the checkout's quick start (a subclass may differ)."""
        return [sys.executable, str(ROOT / "hoosh_edge.py"), "--config", str(self.config_path),
                "--port", "0", *self.args]  # fmt: skip

    def start(self, timeout: float = 60) -> GatewayProcess:
        cmd = self.command()
        self.proc = subprocess.Popen(
            cmd, cwd=self.tmp, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, preexec_fn=self.preexec_fn,
        )  # fmt: skip
        self._drains = [threading.Thread(target=self._drain_stderr, daemon=True)]
        self._drains[0].start()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if "listening on" not in first:
            self.proc.wait(5)
            raise RuntimeError(f"gateway did not start: {first!r}\n{''.join(self.stderr_lines)}")
        self.url = first.strip().rsplit(" ", 1)[-1]
        self.banner = [first]
        self._drains.append(threading.Thread(target=self._drain_stdout, daemon=True))
        self._drains[-1].start()
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("gateway never became healthy")

    def _drain_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.banner.append(line)

    def _drain_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.stderr_lines)

    def log_problems(self) -> list[str]:
        """Tracebacks and 500 access lines in the log so far (all of it once stopped)."""
        if self.proc is not None and self.proc.poll() is not None:
            for t in self._drains:
                t.join(5)  # the pipes are closed: read what is left
        out = []
        lines = list(self.stderr_lines)
        for i, line in enumerate(lines):
            if line.startswith("Traceback (most recent call last)"):
                out.append("".join(lines[max(0, i - 1) : i + 40]))
            elif line.startswith("{") and '"status":500' in line:
                try:
                    if json.loads(line).get("status") == 500:
                        out.append(line)
                except ValueError:
                    pass
        return out

    def check_log(self) -> None:
        """Fail the test if the gateway crashed on something and the test did not expect it."""
        problems = self.log_problems()
        if problems and not self.expect_errors:
            pytest.fail(
                "the gateway logged a traceback or a 500 (set gw.expect_errors = True or mark "
                "the test expect_gateway_errors if that is the point):\n" + "\n".join(problems),
                pytrace=False,
            )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.stop()
        if exc_type is None:
            self.check_log()


@pytest.fixture
def fake_openai():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def gateway_factory(tmp_path, request):
    started: list[GatewayProcess] = []
    expected = request.node.get_closest_marker("expect_gateway_errors") is not None

    def make(config_text: str, env: dict[str, str] | None = None, **kw: Any) -> GatewayProcess:
        sub = tmp_path / f"gw{len(started)}"
        sub.mkdir()
        gw = GatewayProcess(config_text, sub, env, **kw)
        gw.expect_errors = expected
        started.append(gw)
        return gw.start()

    yield make
    for gw in started:
        gw.stop()
    for gw in started:
        gw.check_log()


def openai_provider_toml(fake: FakeOpenAI, *, name: str = "fake", models: str = '["gpt-*"]',
                         extra: str = "", timeout_s: float = 2) -> str:  # fmt: skip
    return f"""
[[providers]]
name = "{name}"
type = "openai"
base_url = "{fake.url}"
api_key = "{fake.api_key}"
models = {models}
timeout_s = {timeout_s}
connect_timeout_s = 1
retry_max_s = 5
{extra}
"""


# ---- PostgreSQL (the shared books of several boxes) ------------------------------------------


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server on a free loopback port, for the whole run."""
    require_module("psycopg", "psycopg is not installed (pip install 'psycopg[binary]')")
    from tests.pg_server import PgServer, pg_tools

    require(pg_tools(), "initdb / pg_ctl are not installed (apt-get install postgresql)")
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a fresh, empty database on the test server."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def books_db(request, tmp_path):
    """The books' database on each engine: the SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        from hoosh_edge.books.db import Database

        db = Database.open(tmp_path)
    else:
        from hoosh_edge.books.pg import PgDatabase

        db = PgDatabase.open(request.getfixturevalue("pg_url"))
    yield db
    db.close()
