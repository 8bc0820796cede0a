"""sd_notify against real AF_UNIX datagram sockets: path and abstract, readiness and the watchdog."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest

from hoosh_edge.serve import sdnotify


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str, env_value: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.env_value = env_value

    def recv(self, timeout: float = 2.0) -> str:
        """The next message, waiting up to ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        """Every message already queued, without waiting (and without yielding to the hub)."""
        self.sock.setblocking(False)
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    path = str(tmp_path / "notify.sock")
    listener = NotifyListener(path, path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield listener
    listener.close()


@pytest.fixture
def abstract_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    name = f"hoosh-edge-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifyListener("\0" + name, "@" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield listener
    listener.close()


def test_ready_status_stopping_reach_a_path_socket(path_listener: NotifyListener) -> None:
    assert sdnotify.notify_ready() is True
    assert path_listener.recv() == "READY=1"
    assert sdnotify.notify_ready("listening on 127.0.0.1:8088") is True
    assert path_listener.recv() == "READY=1\nSTATUS=listening on 127.0.0.1:8088"
    assert sdnotify.notify_status("draining\n3 requests") is True
    # A newline in the text must not smuggle in a second assignment.
    assert path_listener.recv() == "STATUS=draining 3 requests"
    assert sdnotify.notify_stopping() is True
    assert path_listener.recv() == "STOPPING=1"


def test_abstract_socket(abstract_listener: NotifyListener) -> None:
    assert sdnotify.notify("READY=1") is True
    assert abstract_listener.recv() == "READY=1"


def test_unicode_is_sent_as_utf8(path_listener: NotifyListener) -> None:
    assert sdnotify.notify_status("modèle chargé") is True
    assert path_listener.recv() == "STATUS=modèle chargé"


def test_no_socket_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify_ready() is False
    assert sdnotify.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": ""}) is False


def test_unreachable_or_foreign_socket_returns_false(tmp_path: Path) -> None:
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False
    # vsock addresses exist in newer systemd; we do not speak them, and must not crash on them.
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "relative.sock"}) is False


def test_watchdog_interval_from_environment() -> None:
    me = str(os.getpid())
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 30.0
    # Set for another process (we are a child that inherited it): not ours to serve.
    other = str(os.getpid() + 1)
    assert (
        sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other}) is None
    )
    assert sdnotify.watchdog_interval_s({}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_interval_pid_check_in_a_child_process() -> None:
    """WATCHDOG_PID naming the parent disables the watchdog in a child, naming itself enables it."""
    code = "from hoosh_edge.serve import sdnotify; print(sdnotify.watchdog_interval_s())"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "None"
    env.pop("WATCHDOG_PID")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "2.0"


def test_no_watchdog_no_greenlet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.start_watchdog(lambda: True) is None


def test_watchdog_pings_at_half_the_interval(
    path_listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: pings every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    g = sdnotify.start_watchdog(lambda: True)
    assert g is not None
    try:
        gevent.sleep(0.55)
        pings = path_listener.drain()
    finally:
        g.kill()
    assert set(pings) == {"WATCHDOG=1"}
    assert 4 <= len(pings) <= 7, pings  # ~6 in 0.55 s (one at once, then every 0.1 s)


def test_watchdog_holds_pings_while_unhealthy_and_resumes(path_listener: NotifyListener) -> None:
    healthy = {"ok": False}
    g = sdnotify.start_watchdog(lambda: healthy["ok"], interval_s=0.1)
    assert g is not None
    try:
        gevent.sleep(0.3)
        assert path_listener.drain() == []
        healthy["ok"] = True
        gevent.sleep(0.2)
        assert "WATCHDOG=1" in path_listener.drain()
    finally:
        g.kill()


def test_watchdog_treats_a_raising_check_as_unhealthy(path_listener: NotifyListener) -> None:
    def broken() -> bool:
        raise RuntimeError("database locked")

    g = sdnotify.start_watchdog(broken, interval_s=0.1)
    assert g is not None
    try:
        gevent.sleep(0.3)
        assert not g.dead  # the watchdog itself survives; only the pings stop
        assert path_listener.drain() == []
    finally:
        g.kill()


def test_a_wedged_hub_sends_no_pings(path_listener: NotifyListener) -> None:
    """A blocking call on the hub starves the watchdog greenlet: exactly what systemd must see."""
    g = sdnotify.start_watchdog(lambda: True, interval_s=0.1)
    assert g is not None
    try:
        gevent.sleep(0.12)
        assert path_listener.drain()  # it was pinging
        time.sleep(0.5)  # not cooperative: the hub cannot run for 0.5 s (10 ping periods)
        assert path_listener.drain() == []
        gevent.sleep(0.12)
        assert "WATCHDOG=1" in path_listener.drain()  # and pings again once the hub is free
    finally:
        g.kill()


def test_gateway_tells_systemd_ready_watchdog_and_stopping(
    tmp_path: Path, path_listener: NotifyListener
) -> None:
    """The real gateway under a stand-in systemd: READY=1 once listening, pings, STOPPING=1."""
    root = Path(__file__).resolve().parent.parent
    config = tmp_path / "hoosh-edge.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nmodels_dir = "{tmp_path / "m"}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    # No WATCHDOG_PID: the child cannot know its pid in advance; systemd sets it, we need not.
    env.update(NOTIFY_SOCKET=path_listener.env_value, WATCHDOG_USEC="1000000", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(root / "hoosh_edge.py"), "--config", str(config), "--port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        messages: list[str] = []
        deadline = time.monotonic() + 60
        while not any(m.startswith("READY=1") for m in messages):
            assert time.monotonic() < deadline and proc.poll() is None, messages
            try:
                messages.append(path_listener.recv(timeout=1))
            except TimeoutError:
                pass
        assert proc.stdout is not None
        assert "listening on" in proc.stdout.readline()  # READY=1 came after the socket was bound
        assert path_listener.recv(timeout=3) == "WATCHDOG=1"  # every 0.5 s with a 1 s interval
        proc.terminate()
        rest = []
        while "STOPPING=1" not in rest:
            rest.append(path_listener.recv(timeout=10))
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
