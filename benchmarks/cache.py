"""Response cache: p50/p99 of a hit, a miss and a put in process, then of a hit over HTTP.

    .venv/bin/python benchmarks/cache.py [--dir DIR] [--entries 2000] [--lookups 3000] [--puts 400]
                                         [--http-requests 500 | --no-http]

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

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _procs import spawn_fake_openai, spawn_gateway, wait_healthy  # noqa: E402

from hoosh_edge.books.cache import CachePolicy, ResponseCache, chat_key  # noqa: E402
from hoosh_edge.books.db import Database  # noqa: E402

HIT_BODY = {"model": "gpt-4o-mini", "temperature": 0,
            "messages": [{"role": "user", "content": "What is the boiling point of water?"}]}  # fmt: skip


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


def http_call(session: requests.Session, url: str, body: dict, expect: str | None,
              headers: dict[str, str] | None = None) -> float:  # fmt: skip
    """Seconds for one whole chat request (a stream read to its end); checks X-Hoosh-Cache."""
    t0 = time.perf_counter()
    with session.post(url + "/chat/completions", json=body, headers=headers,
                      stream=bool(body.get("stream"))) as r:  # fmt: skip
        if body.get("stream"):
            for _ in r.iter_lines():
                pass
        else:
            r.content  # noqa: B018 - read the body
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise SystemExit(f"{url} answered {r.status_code}: {r.text[:200]}")
    if expect is not None and r.headers.get("X-Hoosh-Cache") != expect:
        raise SystemExit(f"expected X-Hoosh-Cache {expect}, got {r.headers.get('X-Hoosh-Cache')}")
    return elapsed


def http_row(name: str, seconds: list[float]) -> None:
    s = sorted(seconds)
    p50 = statistics.median(s) * 1e3
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3
    print(f"  {name:<38} n={len(s):>5}  p50 {p50:>7.2f} ms  p99 {p99:>7.2f} ms")


def start_gateway(upstream: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    """A gateway with the fake upstream as its only provider and the cache on (the default)."""
    proc, url = spawn_gateway(
        f"""
[server]
log_level = "warning"
data_dir = "{tmp / "data"}"
models_dir = "{tmp / "no-models"}"
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


def over_http(n: int, base: Path | None) -> None:
    """HIT vs MISS through a gateway in a child process, and the fake upstream on its own."""
    fake, upstream = spawn_fake_openai()
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        gw, gateway = start_gateway(upstream, Path(tmp))
        try:
            wait_healthy(gateway.removesuffix("/v1"))
            s = requests.Session()
            stream_body = {**HIT_BODY, "stream": True}
            # Store one answer per shape, then warm the connection and the code paths.
            http_call(s, gateway, HIT_BODY, None)
            http_call(s, gateway, stream_body, None)
            for _ in range(20):
                http_call(s, gateway, HIT_BODY, "HIT")
                http_call(s, gateway, stream_body, "HIT")
            print(f"\nover HTTP (gateway and fake upstream in child processes, one keep-alive "
                  f"client), load average {os.getloadavg()[0]:.2f}")  # fmt: skip
            hit = [http_call(s, gateway, HIT_BODY, "HIT") for _ in range(n)]
            hit_stream = [http_call(s, gateway, stream_body, "HIT") for _ in range(n)]

            def fresh(i: int, stream: bool = False) -> dict:
                msg = [{"role": "user", "content": f"Question {i} for the upstream?"}]
                return {**HIT_BODY, "messages": msg, "stream": stream}

            miss = [http_call(s, gateway, fresh(i), "MISS") for i in range(n)]
            miss_stream = [http_call(s, gateway, fresh(n + i, True), "MISS") for i in range(n)]
            auth = {"Authorization": "Bearer sk-bench"}
            direct = [http_call(s, upstream, fresh(i), None, auth) for i in range(n)]
            http_row("HIT, JSON", hit)
            http_row("HIT, stream", hit_stream)
            http_row("MISS -> fake upstream, JSON (+ put)", miss)
            http_row("MISS -> fake upstream, stream (+ put)", miss_stream)
            http_row("fake upstream called directly, JSON", direct)
            print(f"  hit p50 / miss p50: JSON {statistics.median(hit) / statistics.median(miss):.2f}"
                  f", stream {statistics.median(hit_stream) / statistics.median(miss_stream):.2f};"
                  f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
        finally:
            for proc in (gw, fake):
                proc.terminate()
            for proc in (gw, fake):
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where to create the database (default: a temporary directory)")
    ap.add_argument("--entries", type=int, default=2000)
    ap.add_argument("--lookups", type=int, default=3000)
    ap.add_argument("--puts", type=int, default=400)
    ap.add_argument("--http-requests", type=int, default=500, help="requests per HTTP row")
    ap.add_argument("--no-http", action="store_true", help="only the in-process part")
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
    if not args.no_http:
        over_http(args.http_requests, base)


if __name__ == "__main__":
    main()
