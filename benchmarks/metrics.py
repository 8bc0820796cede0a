"""Metrics facade: cost of one ``inc``, one ``observe`` and one /metrics render, in process.

    .venv/bin/python benchmarks/metrics.py [--routes 30] [--incs 200000] [--renders 300]

The registry is filled the way a busy gateway fills it: every route with a few statuses, a
latency histogram per route, the token and spend counters per provider and a gauge callback of
two dozen gauges (no disk or device reads, so only the rendering is timed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hoosh_edge.metrics import Metrics  # noqa: E402

STATUSES = ("200", "400", "401", "429", "502")
PROVIDERS = ("local", "openai", "anthropic")


def filled(routes: int) -> Metrics:
    """A registry with the series a gateway with ``routes`` routes has after a while."""
    m = Metrics()
    for r in range(routes):
        route = f"/v1/route{r}"
        for st in STATUSES:
            m.inc("hoosh_requests_total", {"route": route, "status": st}, 7, help="HTTP requests")
        for i in range(20):
            m.observe("hoosh_request_duration_seconds", 0.003 * i, {"route": route}, help="Latency")
    for p in PROVIDERS:
        m.inc("hoosh_tokens_in_total", {"provider": p}, 1000, help="Prompt tokens")
        m.inc("hoosh_tokens_out_total", {"provider": p}, 500, help="Completion tokens")
        m.inc("hoosh_spend_usd_total", {"provider": p}, 0.0123, help="USD spent")
    gauges = [
        (f"hoosh_bench_gauge{i}", "A gauge", [({"pool": "books"}, float(i))]) for i in range(24)
    ]
    m.gauge_callback(lambda: gauges)
    return m


def per_call_us(fn, n: int) -> float:
    """Mean microseconds per call of ``fn`` over ``n`` calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=int, default=30)
    ap.add_argument("--incs", type=int, default=200_000)
    ap.add_argument("--renders", type=int, default=300)
    args = ap.parse_args()
    m = filled(args.routes)
    labels = {"route": "/v1/route3", "status": "200"}
    inc_us = per_call_us(lambda: m.inc("hoosh_requests_total", labels, help="HTTP requests"),
                         args.incs)  # fmt: skip
    obs_us = per_call_us(lambda: m.observe("hoosh_request_duration_seconds", 0.042,
                                           {"route": "/v1/route3"}, help="Latency"),
                         args.incs)  # fmt: skip
    val_us = per_call_us(lambda: m.value("hoosh_requests_total", labels), args.incs)
    renders = []
    for _ in range(args.renders):
        t0 = time.perf_counter()
        text = m.render()
        renders.append((time.perf_counter() - t0) * 1e3)
    renders.sort()
    print(f"series lines: {sum(1 for x in text.splitlines() if not x.startswith('#'))}, "
          f"bytes: {len(text.encode())}")  # fmt: skip
    print(f"inc:     {inc_us:.2f} us/call")
    print(f"observe: {obs_us:.2f} us/call")
    print(f"value:   {val_us:.2f} us/call")
    print(f"render:  p50 {statistics.median(renders):.2f} ms, "
          f"p99 {renders[int(len(renders) * 0.99) - 1]:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
