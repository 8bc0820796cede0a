"""One client holds many idle connections; do other clients still get answers, and how fast?

    .venv/bin/python benchmarks/idle_flood.py [--sockets 1000] [--nofile 1024] [--root CHECKOUT]

The flood comes from 127.0.0.2, the other clients from 127.0.0.3 (another LAN host) and
127.0.0.1 (the box itself); loopback aliases are different clients to the gateway. ``--nofile``
sets the gateway's open-file limit (soft and hard), ``--root`` runs another checkout's gateway.
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from _procs import ROOT, spawn_fake_openai, stop


def spawn(root: Path, config: str, tmp: Path, nofile: int) -> tuple[subprocess.Popen, str]:
    cfg = tmp / "flood.toml"
    cfg.write_text(config)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen([sys.executable, str(root / "hoosh_edge.py"), "--config", str(cfg),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=tmp, preexec_fn=limit)  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if "listening on" not in first:
        raise SystemExit(f"gateway did not start: {first!r}")
    return proc, first.strip().rsplit(" ", 1)[-1]


def one_health(port: int, source: str) -> float | None:
    """ms for a fresh-connection GET /health from ``source``; None if it failed within 3 s."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), 3, (source, 0)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    return (time.monotonic() - started) * 1000 if data.startswith(b"HTTP/1.1 200") else None


def open_flood(port: int, count: int, source: str = "127.0.0.2") -> list[socket.socket]:
    """Open up to ``count`` idle connections from ``source``; stop at the first refusal."""
    flood = []
    for _ in range(count):
        try:
            flood.append(socket.create_connection(("127.0.0.1", port), 3, (source, 0)))
        except OSError:
            break
    return flood


def report(label: str, times: list[float | None]) -> None:
    ok = sorted(t for t in times if t is not None)
    if not ok:
        print(f"  {label}: 0/{len(times)} answered")
        return
    p50 = statistics.median(ok)
    print(f"  {label}: {len(ok)}/{len(times)} answered, p50 {p50:.2f} ms, max {ok[-1]:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sockets", type=int, default=1000)
    ap.add_argument("--nofile", type=int, default=1024)
    ap.add_argument("--root", type=Path, default=ROOT)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.sockets + 256)), hard))
    fake, fake_url = spawn_fake_openai()
    config = f"""
[[providers]]
name = "fake"
type = "openai"
base_url = "{fake_url}"
api_key = "sk-bench"
models = ["gpt-*"]
timeout_s = 3
"""
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = spawn(args.root.resolve(), config, Path(tmp), args.nofile)
        port = int(url.rsplit(":", 1)[1])
        print(f"gateway from {args.root}, open-file limit {args.nofile}, "
              f"{args.sockets} idle sockets from 127.0.0.2")  # fmt: skip
        flood: list[socket.socket] = []
        try:
            flood = open_flood(port, args.sockets)
            time.sleep(1)
            for source in ("127.0.0.3", "127.0.0.1"):
                report(f"/health from {source}", [one_health(port, source) for _ in range(20)])
            chat = []
            for _ in range(5):
                started = time.monotonic()
                try:
                    r = requests.post(url + "/v1/chat/completions", timeout=3, json={
                        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
                    chat.append((time.monotonic() - started) * 1000 if r.ok else None)
                except requests.RequestException:
                    chat.append(None)
            report("chat from 127.0.0.1", chat)
        finally:
            for s in flood:
                s.close()
            stop(proc)
            stop(fake)


if __name__ == "__main__":
    main()
