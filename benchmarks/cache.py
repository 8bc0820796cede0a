"""Response cache, in process: p50/p99 of a hit, a miss and a put, and what a hit's bookkeeping costs.

    .venv/bin/python benchmarks/cache.py [--dir DIR] [--entries 2000] [--lookups 3000] [--puts 400]

The database is a real file (WAL, synchronous=FULL as the gateway runs it), so a put includes its
fsync: run it on the storage the box will use (``--dir`` on the SD card or SSD); a tmpfs makes puts
look far cheaper than they are. "hit, write per hit" is the same cache writing each hit's last-use
time in its own transaction — the cost the batched default avoids.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hoosh_edge.cache import CachePolicy, ResponseCache, chat_key  # noqa: E402
from hoosh_edge.db import Database  # noqa: E402


def completion(i: int) -> dict:
    """A chat answer of about 1 KB, like a short local reply."""
    text = f"Answer {i}: " + "lorem ipsum dolor sit amet " * 36
    return {
        "object": "chat.completion",
        "model": "qwen2.5-0.5b-instruct",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 240, "total_tokens": 280},
    }  # fmt: skip


def request(i: int) -> dict:
    return {"model": "fast", "temperature": 0, "max_tokens": 256,
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": f"Question number {i}?"}]}  # fmt: skip


def timed(fn: Callable[[int], object], n: int) -> list[float]:
    """Microseconds per call."""
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def row(name: str, samples: list[float]) -> None:
    s = sorted(samples)
    p50 = statistics.median(s)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    print(f"  {name:<34} n={len(s):>5}  p50 {p50:>9.1f} µs  p99 {p99:>9.1f} µs")


def filesystem(path: Path) -> str:
    try:
        out = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True)
        return out.stdout.split()[-1]
    except (OSError, IndexError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where to create the database (default: a temporary directory)")
    ap.add_argument("--entries", type=int, default=2000)
    ap.add_argument("--lookups", type=int, default=3000)
    ap.add_argument("--puts", type=int, default=400)
    args = ap.parse_args()
    base = Path(args.dir) if args.dir else None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        db = Database.open(tmp)
        print(f"database on {filesystem(Path(tmp))}, synchronous={db.synchronous}, "
              f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")  # fmt: skip
        cache = ResponseCache(db, CachePolicy(max_entries=args.entries * 2))
        keys = [chat_key("local", "qwen", request(i)) for i in range(args.entries)]
        docs = [completion(i) for i in range(args.entries)]
        for key, doc in zip(keys, docs, strict=True):
            cache.put_chat(key, doc, provider="local", model="qwen")
        rng = random.Random(7)
        pick = [rng.randrange(args.entries) for _ in range(args.lookups)]
        print(f"{args.entries} chat entries of ~{len(json.dumps(docs[0]))} bytes")

        row("chat_key (hash a request)", timed(lambda i: chat_key("local", "qwen", request(i)),
                                               args.lookups))  # fmt: skip
        row("get, hit (batched last use)", timed(lambda i: cache.get(keys[pick[i]]), args.lookups))
        row("get_chat, hit (+ parsed doc)",
            timed(lambda i: cache.get_chat(keys[pick[i]]), args.lookups))  # fmt: skip
        row("get, miss", timed(lambda i: cache.get(f"absent-{i}"), args.lookups))
        eager = ResponseCache(db, cache.policy, touch_interval_s=0)
        row("get, hit, write per hit", timed(lambda i: eager.get(keys[pick[i]]), args.puts))

        row("put_chat, ~1 KB", timed(lambda i: cache.put_chat(f"new-{i}", docs[i % len(docs)],
                                     provider="local", model="qwen"), args.puts))  # fmt: skip
        audio = os.urandom(100_000)
        row("put, 100 KB speech", timed(lambda i: cache.put(f"wav-{i}", "speech", audio,
                                        {"provider": "local", "model": "amy"}), args.puts))  # fmt: skip
        full = ResponseCache(db, CachePolicy(max_entries=args.entries))
        full.put("warm-up", "speech", b"x", {})  # evicts the surplus of the runs above at once
        full.evictions = 0
        row("put at the bound (evicts one)", timed(lambda i: full.put_chat(f"full-{i}",
            docs[i % len(docs)], provider="local", model="qwen"), args.puts))  # fmt: skip
        s = full.stats()
        print(f"after: {s['entries']} entries, {s['bytes'] / 1e6:.1f} MB, "
              f"{s['evictions']} evictions in that run")  # fmt: skip
        db.close()


if __name__ == "__main__":
    main()
