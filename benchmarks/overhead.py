"""Gateway overhead: the same chat request straight to a fake upstream vs through hoosh-edge.

    .venv/bin/python benchmarks/overhead.py [--requests 400] [--concurrency 1,8,32]

The fake OpenAI upstream and the gateway each run in their own process on loopback; the load comes
from threads here, each with its own keep-alive session (as an SDK client would). Prints requests
per second and p50/p99 latency for both paths, and what the gateway adds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _procs import spawn_fake_openai, spawn_gateway  # noqa: E402

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello gateway"}]}


def start_gateway(upstream: str, tmp: Path, durability: str) -> tuple[subprocess.Popen, str]:
    proc, url = spawn_gateway(
        f"""
[server]
log_level = "warning"
durability = "{durability}"
[[providers]]
name = "fake"
type = "openai"
base_url = "{upstream}"
api_key = "sk-bench"
models = ["gpt-*"]
""",
        tmp,
    )
    return proc, url + "/v1"


def run(
    url: str, headers: dict[str, str], total: int, concurrency: int
) -> tuple[float, list[float]]:
    """(requests per second, latencies in seconds)."""
    per = max(1, total // concurrency)
    lat: list[float] = []
    lock = threading.Lock()
    errors = []

    def worker() -> None:
        s = requests.Session()
        s.post(url + "/chat/completions", json=BODY, headers=headers).raise_for_status()  # warm
        mine = []
        for _ in range(per):
            t0 = time.perf_counter()
            r = s.post(url + "/chat/completions", json=BODY, headers=headers)
            mine.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(r.status_code)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {errors[:5]}")
    return len(lat) / elapsed, lat


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--durability", default="full", choices=["full", "normal"],
                    help="server.durability: full fsyncs each paid call's ledger entry")  # fmt: skip
    args = ap.parse_args()
    fake, upstream = spawn_fake_openai()
    print(f"server.durability = {args.durability} (every request here is a priced cloud call)")
    with tempfile.TemporaryDirectory() as tmp:
        gw, gateway = start_gateway(upstream, Path(tmp), args.durability)
        try:
            for _ in range(50):
                try:
                    requests.get(gateway.removesuffix("/v1") + "/health", timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
            auth = {"Authorization": "Bearer sk-bench"}
            print(f"{'conc':>4} | {'direct rps':>10} {'p50 ms':>7} {'p99 ms':>7} | "
                  f"{'gateway rps':>11} {'p50 ms':>7} {'p99 ms':>7} | {'rps ratio':>9} "
                  f"{'added p50 ms':>12}")  # fmt: skip
            for c in [int(x) for x in args.concurrency.split(",")]:
                d_rps, d_lat = run(upstream, auth, args.requests, c)
                g_rps, g_lat = run(gateway, {}, args.requests, c)
                d50, d99, g50, g99 = (
                    pct(d_lat, 50),
                    pct(d_lat, 99),
                    pct(g_lat, 50),
                    pct(g_lat, 99),
                )
                print(f"{c:>4} | {d_rps:>10.0f} {d50 * 1e3:>7.2f} {d99 * 1e3:>7.2f} | "
                      f"{g_rps:>11.0f} {g50 * 1e3:>7.2f} {g99 * 1e3:>7.2f} | "
                      f"{g_rps / d_rps:>9.2f} {(g50 - d50) * 1e3:>12.2f}")  # fmt: skip
            print(f"(mean of gateway latencies at the last level: "
                  f"{statistics.mean(g_lat) * 1e3:.2f} ms)")  # fmt: skip
        finally:
            gw.terminate()
            fake.terminate()
            gw.wait(10)
            fake.wait(10)


if __name__ == "__main__":
    main()
