"""What a durable ledger commit costs, on the hub or through the books thread pool.

    .venv/bin/python benchmarks/commit_hop.py [--n 2000] [--dir FOLDER]

A paid call's commit at ``durability = "full"`` fsyncs (``synchronous=FULL``) and runs in the
books pool (``run_books``) so a slow disk never freezes the hub; a free on-device call's commit
(no fsync) runs on the hub. This prints p50/p90 of: a thread hop alone, a commit without and with
fsync on the hub, and the fsync commit through the hop, with the gateway's own ``Database`` on
``--dir`` (default: a temporary folder on the disk /tmp lives on; point it at the data disk).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hoosh_edge.serve.boot import patch_gevent  # noqa: E402

patch_gevent()

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from hoosh_edge.books.db import Database  # noqa: E402
from hoosh_edge.threads import run_books  # noqa: E402


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """p50 and p90 of ``fn()`` in microseconds."""
    took = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        took.append(time.perf_counter() - t0)
    took.sort()
    return took[n // 2] * 1e6, took[int(n * 0.9)] * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        db = Database.open(tmp)
        with db.write() as w:
            w.execute("CREATE TABLE bench (request_id TEXT, cost INTEGER)")

        def commit(durable: bool) -> None:
            with db.write(durable=durable) as w:
                w.execute("INSERT INTO bench VALUES (?, ?)", ["r", 1])

        rows = [
            ("thread hop alone (run_books of a no-op)", lambda: run_books(int)),
            ("commit, no fsync, on the hub", lambda: commit(False)),
            ("commit with fsync, on the hub", lambda: commit(True)),
            ("commit with fsync, through run_books", lambda: run_books(commit, True)),
        ]
        print(f"{args.n} each, on {tmp}")
        for label, fn in rows:
            p50, p90 = timed(fn, args.n)
            print(f"  {label:<42} p50 {p50:7.0f} us   p90 {p90:7.0f} us")
        db.close()


if __name__ == "__main__":
    main()
