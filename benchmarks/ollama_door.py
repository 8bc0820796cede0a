"""Latency of one cloud chat call through Ollama's /api/chat beside /v1/chat/completions.

    python benchmarks/ollama_door.py [--calls 300] [--rounds 3]

A gateway and a fake OpenAI upstream, each in its own process on 127.0.0.1; one keep-alive client
sends the same small chat (cache off) through each door in turn, streamed and not. Each figure is
the median of the best round, in milliseconds; the difference between the doors is what Ollama's
translation, NDJSON framing and timing cost per call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._procs import spawn_fake_openai, spawn_gateway, stop, wait_healthy  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me about Paris in three sentences please."}]


def config(fake_url: str, tmp: Path) -> str:
    return f"""
[server]
log_level = "warning"
data_dir = "{tmp / "data"}"
models_dir = "{tmp / "no-models"}"
[cache]
enabled = false
[[providers]]
name = "fake"
type = "openai"
base_url = "{fake_url}"
api_key = "sk-bench"
models = ["gpt-4o-mini"]
"""


def one(session: requests.Session, url: str, door: str, stream: bool) -> float:
    t0 = time.perf_counter()
    if door == "ollama":
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream}
        r = session.post(url + "/api/chat", json=body, stream=stream, timeout=30)
    else:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream}
        r = session.post(url + "/v1/chat/completions", json=body, stream=stream, timeout=30)
    for _ in r.iter_content(None):
        pass
    assert r.status_code == 200, r.text
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    fake, fake_url = spawn_fake_openai()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        gw, url = spawn_gateway(config(fake_url, tmp), tmp)
        try:
            wait_healthy(url)
            session = requests.Session()
            for door in ("openai", "ollama"):
                for _ in range(20):  # warm both paths
                    one(session, url, door, False)
            for stream in (False, True):
                for door in ("openai", "ollama"):
                    best = min(
                        statistics.median(one(session, url, door, stream)
                                          for _ in range(args.calls))
                        for _ in range(args.rounds)
                    )  # fmt: skip
                    kind = "stream" if stream else "json"
                    print(f"{door:7} {kind:7} median {best:.2f} ms over {args.calls} calls")
        finally:
            stop(gw)
            stop(fake)


if __name__ == "__main__":
    main()
