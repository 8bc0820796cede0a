"""A paid call's overhead with the books in PostgreSQL vs the SQLite file.

    .venv/bin/python benchmarks/fleet_books.py [--requests 300] [--concurrency 1,8]

One fake OpenAI upstream; gateways with one usd block rule (so every call reserves, then commits):
``sqlite`` (the default file, durability full), ``postgres`` (one box on a local PostgreSQL with
fsync on, started here in a temporary folder as tests/pg_server.py does) and ``2 boxes`` (two
gateways on that database, the load split between them: max(1, conc / 2) clients each, so its
conc-1 row has two clients). Prints requests per second, p50 / p99 latency, what the gateway adds
to p50 over the direct call, and the gateways' CPU per call.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _procs import spawn_fake_openai, spawn_gateway, stop, wait_healthy  # noqa: E402
from overhead import BODY, pct, run  # noqa: E402

from tests.pg_server import PgServer  # noqa: E402
from tests.procstat import cpu_seconds  # noqa: E402

RULE = """
[pricing."gpt-4o-mini"]
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6
[[budgets]]
name = "bench"
scope = "cloud"
metric = "usd"
limit = "1000000"
period = "total"
action = "block"
"""


def config(upstream: str, database: str | None) -> str:
    db = f'[database]\nurl = "{database}"\n' if database else ""
    return f"""
[server]
log_level = "warning"
durability = "full"
{db}
[[providers]]
name = "fake"
type = "openai"
base_url = "{upstream}"
api_key = "sk-bench"
models = ["gpt-*"]
{RULE}"""


def split_run(urls: list[str], total: int, concurrency: int) -> tuple[float, list[float], int]:
    """``run`` against several gateways at once, the load split evenly; summed figures."""
    out: list[tuple[float, list[float], int]] = []
    threads = [threading.Thread(target=lambda u=u: out.append(
        run(u, {}, total // len(urls), max(1, concurrency // len(urls)), BODY)))
        for u in urls]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(o[0] for o in out), [x for o in out for x in o[1]], sum(o[2] for o in out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", default="1,8")
    args = ap.parse_args()
    pg = PgServer(fsync=True).start()
    fake, upstream = spawn_fake_openai()
    procs = [fake]
    try:
        url = pg.new_database()
        rows: list[tuple[str, list]] = []
        with tempfile.TemporaryDirectory() as tmp:
            for label, database, boxes in (("sqlite", None, 1), ("postgres", url, 1),
                                           ("2 boxes", url, 2)):  # fmt: skip
                gws = []
                for i in range(boxes):
                    folder = Path(tmp) / f"{label.replace(' ', '')}{i}"
                    folder.mkdir()
                    proc, gurl = spawn_gateway(config(upstream, database), folder)
                    procs.append(proc)
                    wait_healthy(gurl)
                    gws.append((proc, gurl + "/v1"))
                rows.append((label, gws))
            print(f"paid chat JSON, {args.requests} requests per row, one usd block rule; "
                  "PostgreSQL on 127.0.0.1 with fsync on")  # fmt: skip
            print(f"{'conc':>4} {'books':<18} | {'rps':>6} {'p50 ms':>7} {'p99 ms':>7} | "
                  f"{'added p50 ms':>12} {'CPU ms/call':>11}")  # fmt: skip
            for c in [int(x) for x in args.concurrency.split(",")]:
                d_rps, d_lat, _ = run(upstream, {"Authorization": "Bearer sk-bench"},
                                      args.requests, c, BODY)  # fmt: skip
                d50 = pct(d_lat, 50)
                print(f"{c:>4} {'direct (upstream)':<18} | {d_rps:>6.0f} {d50 * 1e3:>7.2f} "
                      f"{pct(d_lat, 99) * 1e3:>7.2f} |")  # fmt: skip
                for label, gws in rows:
                    before = sum(cpu_seconds(p.pid) for p, _ in gws)
                    rps, lat, calls = split_run([u for _, u in gws], args.requests, c)
                    cpu = (sum(cpu_seconds(p.pid) for p, _ in gws) - before) / calls
                    g50 = pct(lat, 50)
                    print(f"{c:>4} {'gateway ' + label:<18} | {rps:>6.0f} {g50 * 1e3:>7.2f} "
                          f"{pct(lat, 99) * 1e3:>7.2f} | {(g50 - d50) * 1e3:>12.2f} "
                          f"{cpu * 1e3:>11.2f}")  # fmt: skip
    finally:
        for proc in procs:
            stop(proc)
        pg.stop()


if __name__ == "__main__":
    main()
