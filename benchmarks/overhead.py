"""Gateway overhead: the same chat request straight to a fake upstream vs through hoosh-edge.

    .venv/bin/python benchmarks/overhead.py [--requests 400] [--concurrency 1,8,32]
        [--durability full,normal] [--stream] [--gateway-root OTHER_CHECKOUT ...]
        [--profile PREFIX]

The fake OpenAI upstream and one gateway per durability setting each run in their own process on
loopback; the load comes from threads here, each with its own keep-alive session (as an SDK client
would). Prints requests per second and p50/p99 latency straight to the upstream and through each
gateway, what the gateway adds to p50, and the CPU time a process spent per call (user + system
time from /proc/PID/stat before and after the run, divided by the calls): the gateway's on its
rows, the fake upstream's on the direct row. ``--gateway-root`` runs the gateway of another
checkout (an older commit, say) under the same load script, for before/after figures; given more
than once, the checkouts run side by side in one run (rows labelled a, b, ...; the same upstream,
the same moment's machine load) and each later one's figures are also given as a ratio to the
first's.
"""

from __future__ import annotations

import argparse
import shutil
import signal
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

from _procs import spawn_fake_openai, spawn_gateway, stop  # noqa: E402
from layers import summarize  # noqa: E402

from tests.procstat import cpu_seconds  # noqa: E402

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello gateway"}]}
STREAM_BODY = {**BODY, "stream": True}


def start_gateway(
    upstream: str, tmp: Path, durability: str, root: Path = ROOT
) -> tuple[subprocess.Popen, str]:
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
        root,
    )
    return proc, url + "/v1"


def run(
    url: str, headers: dict[str, str], total: int, concurrency: int, body: dict
) -> tuple[float, list[float], int]:
    """(requests per second, latencies in seconds, calls made including warm-ups)."""
    per = max(1, total // concurrency)
    lat: list[float] = []
    lock = threading.Lock()
    errors = []

    def worker() -> None:
        s = requests.Session()
        s.post(url + "/chat/completions", json=body, headers=headers).raise_for_status()  # warm
        mine = []
        for _ in range(per):
            t0 = time.perf_counter()
            r = s.post(url + "/chat/completions", json=body, headers=headers)
            _ = r.content  # a stream is timed to its last byte
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
    return len(lat) / elapsed, lat, len(lat) + concurrency


def measure(
    pid: int, url: str, headers: dict[str, str], total: int, concurrency: int, body: dict
) -> tuple[float, list[float], float]:
    """``run`` plus the CPU seconds process ``pid`` spent per call during it."""
    before = cpu_seconds(pid)
    rps, lat, calls = run(url, headers, total, concurrency, body)
    return rps, lat, (cpu_seconds(pid) - before) / calls


def profiled(out: Path | None, pid: int) -> subprocess.Popen | None:
    """Start py-spy on ``pid`` (GIL-holding samples only, 500 a second) writing ``out``."""
    if out is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw",
                             "--output", str(out), "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--durability", default="full,normal",
                    help="server.durability values to compare (comma-separated): full fsyncs "
                         "each paid call's ledger entry")  # fmt: skip
    ap.add_argument("--stream", action="store_true", help="stream=true chat (SSE)")
    ap.add_argument("--profile", metavar="PREFIX",
                    help="py-spy each gateway row into PREFIX-<row>-c<N>.txt, print its layers")  # fmt: skip
    ap.add_argument("--gateway-root", type=Path, action="append",
                    help="a checkout whose hoosh_edge.py to run (default: this one); repeat it "
                         "to compare checkouts in one run")  # fmt: skip
    args = ap.parse_args()
    roots = [r.resolve() for r in args.gateway_root or [ROOT]]
    modes = [m.strip() for m in args.durability.split(",") if m.strip()]
    if not modes or any(m not in ("full", "normal") for m in modes):
        raise SystemExit("--durability takes full, normal or full,normal")
    body = STREAM_BODY if args.stream else BODY
    fake, upstream = spawn_fake_openai()
    print(f"chat {'stream=true' if args.stream else 'JSON'}, {args.requests} requests per row "
          "(every request here is a priced cloud call)")  # fmt: skip
    tags = [chr(ord("a") + i) for i in range(len(roots))] if len(roots) > 1 else [""]
    for tag, root in zip(tags, roots, strict=True):
        print(f"gateway {tag + ': ' if tag else ''}{root}")
    with tempfile.TemporaryDirectory() as tmp:
        gateways: list[tuple[str, subprocess.Popen, str]] = []
        try:
            for tag, root in zip(tags, roots, strict=True):
                for mode in modes:
                    folder = Path(tmp) / f"{tag}{mode}"
                    folder.mkdir()
                    gw, url = start_gateway(upstream, folder, mode, root)
                    gateways.append((f"{tag} {mode}".strip(), gw, url))
                    wait_healthy(url)
            auth = {"Authorization": "Bearer sk-bench"}
            print(f"{'conc':>4} {'path':<17} | {'rps':>6} {'p50 ms':>7} {'p99 ms':>7} | "
                  f"{'added p50 ms':>12} {'CPU ms/call':>11}")  # fmt: skip
            for c in [int(x) for x in args.concurrency.split(",")]:
                d_rps, d_lat, d_cpu = measure(fake.pid, upstream, auth, args.requests, c, body)
                d50 = pct(d_lat, 50)
                print(f"{c:>4} {'direct (upstream)':<17} | {d_rps:>6.0f} {d50 * 1e3:>7.2f} "
                      f"{pct(d_lat, 99) * 1e3:>7.2f} | {'':>12} {d_cpu * 1e3:>11.2f}")  # fmt: skip
                first: dict[str, tuple[float, float]] = {}
                for label, gw, url in gateways:
                    out = None
                    if args.profile:
                        out = Path(f"{args.profile}-{label.replace(' ', '-')}-c{c}.txt").resolve()
                    spy = profiled(out, gw.pid)
                    time.sleep(0.5 if spy else 0)  # py-spy attaches
                    g_rps, g_lat, g_cpu = measure(gw.pid, url, {}, args.requests, c, body)
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(30)
                    g50 = pct(g_lat, 50)
                    mode = label.split()[-1]
                    ratio = ""
                    if mode in first:
                        added0, cpu0 = first[mode]
                        ratio = (f"  (x{(g50 - d50) / added0:.2f} added, x{g_cpu / cpu0:.2f} CPU "
                                 f"of {tags[0]})") if added0 > 0 and cpu0 > 0 else ""  # fmt: skip
                    else:
                        first[mode] = (g50 - d50, g_cpu)
                    print(f"{c:>4} {'gateway ' + label:<17} | {g_rps:>6.0f} {g50 * 1e3:>7.2f} "
                          f"{pct(g_lat, 99) * 1e3:>7.2f} | {(g50 - d50) * 1e3:>12.2f} "
                          f"{g_cpu * 1e3:>11.2f}{ratio}")  # fmt: skip
                    print(
                        f"     (mean latency of {label} at {c}: "
                        f"{statistics.mean(g_lat) * 1e3:.2f} ms)"
                    )
                    if out is not None:
                        print(summarize(out, top=15) if out.exists() else f"no profile: {out}")
        finally:
            for _, gw, _ in gateways:
                stop(gw)
            stop(fake)


def wait_healthy(url: str) -> None:
    """Wait until the gateway at ``url`` (its /v1 base) answers /health."""
    for _ in range(50):
        try:
            requests.get(url.removesuffix("/v1") + "/health", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)


if __name__ == "__main__":
    main()
