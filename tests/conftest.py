"""Shared fixtures: real gateway processes and real fake upstreams on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent


class GatewayProcess:
    """``python hoosh_edge.py`` in a child process, on a free port."""

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

    def start(self, timeout: float = 60) -> GatewayProcess:
        cmd = [sys.executable, str(ROOT / "hoosh_edge.py"), "--config", str(self.config_path),
               "--port", "0", *self.args]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=self.tmp, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, preexec_fn=self.preexec_fn,
        )  # fmt: skip
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if "listening on" not in first:
            self.proc.wait(5)
            raise RuntimeError(f"gateway did not start: {first!r}\n{''.join(self.stderr_lines)}")
        self.url = first.strip().rsplit(" ", 1)[-1]
        self.banner = [first]
        threading.Thread(target=self._drain_stdout, daemon=True).start()
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

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@pytest.fixture
def fake_openai():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def gateway_factory(tmp_path):
    started: list[GatewayProcess] = []

    def make(config_text: str, env: dict[str, str] | None = None, **kw: Any) -> GatewayProcess:
        sub = tmp_path / f"gw{len(started)}"
        sub.mkdir()
        gw = GatewayProcess(config_text, sub, env, **kw)
        started.append(gw)
        return gw.start()

    yield make
    for gw in started:
        gw.stop()


def openai_provider_toml(fake: FakeOpenAI, *, name: str = "fake", models: str = '["gpt-*"]',
                         extra: str = "") -> str:  # fmt: skip
    return f"""
[[providers]]
name = "{name}"
type = "openai"
base_url = "{fake.url}"
api_key = "{fake.api_key}"
models = {models}
timeout_s = 2
connect_timeout_s = 1
retry_max_s = 5
{extra}
"""
