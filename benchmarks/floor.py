"""The floor of the gateway's stack: minimal proxies on it beside the gateway, under one load.

    .venv/bin/python benchmarks/floor.py [--requests 1000] [--concurrency 1,8]
        [--gateway-root CHECKOUT ...] [--pre-issue-root OLD_CHECKOUT]

The same non-streamed chat request goes straight to the fake upstream, then through each of these,
each its own process on loopback forwarding to that one upstream (``_floor_proxy.py``):

1. ``wsgi``: gevent's pywsgi server, a bare WSGI function, a keep-alive urllib3 PoolManager;
2. ``flask``: the same with one Flask route (``request.get_json()``, ``jsonify``);
3. ``flask+sqlite``: (2) plus one durable ledger row per call (WAL, ``synchronous=FULL``) written
   in a gevent ThreadPool, as the gateway's books pool writes;
4. the gateway (``durability = "full"``) of each ``--gateway-root`` (default: this checkout).

The rows take turns in ``--rounds`` rounds. Load, latency and CPU accounting are ``overhead.py``'s (a keep-alive session per client thread;
the server process's utime+stime ÷ calls). Per row: p50/p90, what it adds to the direct p50, CPU
ms per call, and both as a ratio to row 1 and to the (first) gateway. With ``--pre-issue-root``
the tree before issue 13 runs too, and the issue's goal (under 1.0 ms added, at most 0.5 ms CPU
a call, set on a VM where that tree measured 1.5 ms and 1.27 ms) is scaled to this machine by
that tree's figures here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import spawn_fake_openai, spawn_listening, stop  # noqa: E402
from overhead import BODY, ROOT, measure, pct, start_gateway, wait_healthy  # noqa: E402

PROXY = Path(__file__).resolve().parent / "_floor_proxy.py"
FLOORS = [("wsgi+urllib3", "wsgi"), ("flask", "flask"), ("flask+sqlite", "flask-sqlite")]
# The issue's goal and the figures of the pre-issue tree on the VM where it was set.
GOAL_ADDED_MS, GOAL_CPU_MS = 1.0, 0.5
THERE_ADDED_MS, THERE_CPU_MS = 1.5, 1.27
AUTH = {"Authorization": "Bearer sk-bench"}  # the fake upstream's key; the proxies hold it


def start_floor(kind: str, upstream: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    """One minimal proxy of ``kind`` in its own process; the child and its /v1 base URL."""
    proc, url = spawn_listening([str(PROXY), kind, upstream, str(tmp)], tmp)
    return proc, url + "/v1"


def ratio(value: float, of: float) -> str:
    return f"x{value / of:5.2f}" if of > 0 else "    -"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--rounds", type=int, default=4,
                    help="split each row's requests into this many rounds over all rows")  # fmt: skip
    ap.add_argument("--gateway-root", type=Path, action="append",
                    help="a checkout whose gateway to run (default: this one); repeatable")  # fmt: skip
    ap.add_argument("--pre-issue-root", type=Path,
                    help="the tree before issue 13, to scale the issue's goal to this machine")  # fmt: skip
    args = ap.parse_args()
    roots = [r.resolve() for r in args.gateway_root or [ROOT]]
    fake, upstream = spawn_fake_openai()
    print(f"chat JSON, {args.requests} requests per row in {args.rounds} interleaved rounds, "
          "gateway durability full")  # fmt: skip
    rows: list[tuple[str, subprocess.Popen, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for label, kind in FLOORS:
                folder = Path(tmp) / kind
                folder.mkdir()
                rows.append((label, *start_floor(kind, upstream, folder)))
            gateways = [(f"gateway {chr(ord('a') + i)}" if len(roots) > 1 else "gateway", root)
                        for i, root in enumerate(roots)]  # fmt: skip
            if args.pre_issue_root:
                gateways.append(("pre-issue", args.pre_issue_root.resolve()))
            for label, root in gateways:
                print(f"{label}: {root}")
                folder = Path(tmp) / label.replace(" ", "-")
                folder.mkdir()
                proc, url = start_gateway(upstream, folder, "full", root)
                wait_healthy(url)
                rows.append((label, proc, url))
            for c in [int(x) for x in args.concurrency.split(",")]:
                block(
                    c, fake, upstream, rows, args.requests, args.rounds, bool(args.pre_issue_root)
                )
        finally:
            for _, proc, _ in rows:
                stop(proc)
            stop(fake)


def block(c: int, fake: subprocess.Popen, upstream: str,
          rows: list[tuple[str, subprocess.Popen, str]], total: int, rounds: int,
          scale: bool) -> None:  # fmt: skip
    """Measure every row at concurrency ``c`` and print it with its ratios."""
    print(f"{'conc':>4} {'path':<17} | {'rps':>6} {'p50 ms':>7} {'p90 ms':>7} | "
          f"{'added p50 ms':>12} {'CPU ms/call':>11} | {'vs wsgi: added':>14} {'CPU':>6} | "
          f"{'vs gateway: added':>17} {'CPU':>6}")  # fmt: skip
    paths = [("direct (upstream)", fake, upstream, AUTH)] + [(lb, p, u, {}) for lb, p, u in rows]
    runs: dict[str, list[tuple[float, list[float], float]]] = {label: [] for label, *_ in paths}
    for _ in range(rounds):  # rounds interleave the rows: a drift of the machine hits all alike
        for label, proc, url, headers in paths:
            runs[label].append(measure(proc.pid, url, headers, total // rounds, c, BODY))
    got: dict[str, tuple[float, float, float, float, float]] = {}
    for label, done in runs.items():
        lat = [x for _, lats, _ in done for x in lats]
        rps, cpu = (sum(r[i] for r in done) / len(done) for i in (0, 2))
        got[label] = (rps, pct(lat, 50), pct(lat, 90), 0.0, cpu)
    d_rps, d50, d90, _, d_cpu = got.pop("direct (upstream)")
    print(f"{c:>4} {'direct (upstream)':<17} | {d_rps:>6.0f} {d50 * 1e3:>7.2f} "
          f"{d90 * 1e3:>7.2f} | {'':>12} {d_cpu * 1e3:>11.2f}")  # fmt: skip
    got = {label: (rps, p50, p90, p50 - d50, cpu) for label, (rps, p50, p90, _, cpu) in got.items()}
    floor_added, floor_cpu = got[FLOORS[0][0]][3:]
    gw = next(label for label in got if label.startswith("gateway"))
    gw_added, gw_cpu = got[gw][3:]
    for label, (rps, p50, p90, added, cpu) in got.items():
        print(f"{c:>4} {label:<17} | {rps:>6.0f} {p50 * 1e3:>7.2f} {p90 * 1e3:>7.2f} | "
              f"{added * 1e3:>12.2f} {cpu * 1e3:>11.2f} | {ratio(added, floor_added):>14} "
              f"{ratio(cpu, floor_cpu):>6} | {ratio(added, gw_added):>17} "
              f"{ratio(cpu, gw_cpu):>6}")  # fmt: skip
    if scale and c == 1:
        old_added, old_cpu = got["pre-issue"][3:]
        goal_added = GOAL_ADDED_MS * old_added * 1e3 / THERE_ADDED_MS
        goal_cpu = GOAL_CPU_MS * old_cpu * 1e3 / THERE_CPU_MS
        print(f"     goal scaled to this machine by the pre-issue tree (added {old_added * 1e3:.2f} "
              f"ms, CPU {old_cpu * 1e3:.2f} ms here vs {THERE_ADDED_MS} / {THERE_CPU_MS} there): "
              f"added < {goal_added:.2f} ms, CPU <= {goal_cpu:.2f} ms/call")  # fmt: skip


if __name__ == "__main__":
    main()
