"""What the Responses and legacy completions doors cost over chat, and what a raw prompt saves.

    .venv/bin/python benchmarks/responses_doors.py [--requests 300] [--smollm2 PATH]

Part 1: one gateway in front of a fake OpenAI upstream (both on loopback, in their own
processes); the same one-line question, sequentially on one keep-alive session, through
``/v1/chat/completions``, ``/v1/responses`` (store on and off) and ``/v1/completions`` taking
turns: p50 and p99 latency per door and what each adds to chat's p50. Part 2 (with SmolLM2): the prompt tokens of one
short prompt as a chat turn and as a legacy raw prompt, and the time to the whole answer of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _procs import spawn_fake_openai, spawn_gateway, stop  # noqa: E402

QUESTION = "The capital of France is"


def _bodies(model: str, max_tokens: int) -> dict[str, tuple[str, dict]]:
    chat = {"model": model, "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": max_tokens}  # fmt: skip
    resp = {"model": model, "input": QUESTION, "max_output_tokens": max_tokens}
    return {
        "chat": ("/v1/chat/completions", chat),
        "responses": ("/v1/responses", resp),
        "responses store=false": ("/v1/responses", {**resp, "store": False}),
        "completions": (
            "/v1/completions",
            {"model": model, "prompt": QUESTION, "max_tokens": max_tokens},
        ),  # fmt: skip
    }


def _times(session: requests.Session, url: str, body: dict, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = session.post(url, json=body, timeout=120)
        r.raise_for_status()
        out.append(time.perf_counter() - t0)
    return out


def cloud(n: int) -> None:
    fake, fake_url = spawn_fake_openai()
    with tempfile.TemporaryDirectory() as tmp:
        gw, url = spawn_gateway(f"""
[server]
log_level = "warning"
[cache]
enabled = false
[[providers]]
name = "fake"
type = "openai"
base_url = "{fake_url}"
api_key = "sk-bench"
models = ["gpt-*"]
""", Path(tmp))  # fmt: skip
        try:
            with requests.Session() as s:
                doors = _bodies("gpt-4o-mini", 16)
                rows: dict[str, list[float]] = {name: [] for name in doors}
                for i in range(n + 20):  # the doors take turns: the same moment's machine load
                    for name, (path, body) in doors.items():
                        t = _times(s, url + path, body, 1)
                        if i >= 20:  # the first rounds warm up
                            rows[name] += t
                rows = {name: sorted(ts) for name, ts in rows.items()}
            base = statistics.median(rows["chat"])
            print(f"fake cloud, {n} sequential requests per door")
            print(f"{'door':24} {'p50 ms':>8} {'p99 ms':>8} {'+p50 vs chat':>13}")
            for name, ts in rows.items():
                p50, p99 = statistics.median(ts), ts[int(len(ts) * 0.99) - 1]
                print(f"{name:24} {p50 * 1e3:8.2f} {p99 * 1e3:8.2f} {(p50 - base) * 1e3:+12.2f}")
        finally:
            stop(gw)
            stop(fake)


def local(path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        gw, url = spawn_gateway(f"""
[server]
log_level = "warning"
[cache]
enabled = false
[local.llm]
n_threads = 1
n_ctx = 2048
preload = ["smollm2"]
[local.llm.models]
smollm2 = "{path}"
""", Path(tmp))  # fmt: skip
        try:
            with requests.Session() as s:
                print(f"\nSmolLM2 on the box, {QUESTION!r}, 8 tokens, temperature 0")
                for name in ("chat", "completions"):
                    path_, body = _bodies("smollm2", 8)[name]
                    body = {**body, "temperature": 0}
                    s.post(url + path_, json=body, timeout=120).raise_for_status()  # warm up
                    ts = []
                    for _ in range(5):
                        t0 = time.perf_counter()
                        doc = s.post(url + path_, json=body, timeout=120).json()
                        ts.append(time.perf_counter() - t0)
                    print(f"{name:12} prompt_tokens {doc['usage']['prompt_tokens']:3}  "
                          f"p50 {statistics.median(ts) * 1e3:7.1f} ms")  # fmt: skip
        finally:
            stop(gw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--smollm2", type=Path,
                    default=ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")  # fmt: skip
    args = ap.parse_args()
    cloud(args.requests)
    if args.smollm2.exists():
        local(args.smollm2)


if __name__ == "__main__":
    main()
