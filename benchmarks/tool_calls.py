"""Tool-call and structured answers vs a plain answer on SmolLM2: time to first token, tokens/s.

    .venv/bin/python benchmarks/tool_calls.py [--runs 5] [--max-tokens 64] [--threads 2]

Five kinds of answer to one question, side by side, run after run in turn (so the machine's noise
hits all alike), each request with a fresh tag in its system message so no prompt is reused (the
gateway keeps prompt states):

- plain: no tools; "auto text": the two tools offered, tool_choice auto, the model answering in
  text; "required call" and "named call": a grammar-constrained call; "json_schema": a
  grammar-constrained object.

Two views of each. "engine": ``LlamaEngine.chat_stream`` in this process with every sampled
token timed where llama.cpp hands it over: TTFT is request → first token, tok/s the decode rate
after it (tokens − 1 over first → last token). "gateway": the same request streamed over HTTP
from a gateway child process: TTFT is request → first delta (for a call, its name: the call's
opening tokens come before it), "answer" the whole streamed answer. Temperature 0, medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _procs import local_llm_toml, spawn_gateway, stop, wait_healthy  # noqa: E402

MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
NO_STORE = {"Cache-Control": "no-cache, no-store"}
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 40},
    "days": {"type": "integer", "minimum": 1, "maximum": 7},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "days", "unit"]}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                      "description": "The weather forecast of a city"}},
    {"type": "function", "function": {"name": "start_timer", "description": "A kitchen timer",
                                      "parameters": {"type": "object", "properties": {
                                          "minutes": {"type": "integer", "minimum": 1}}}}},
]  # fmt: skip
KINDS: dict[str, dict[str, Any]] = {
    "plain": {},
    "auto text": {"tools": TOOLS},
    "required call": {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False},
    "named call": {"tools": TOOLS, "parallel_tool_calls": False,
                   "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "forecast", "schema": WEATHER}}},
}  # fmt: skip


def request(kind: str, run: int, args: argparse.Namespace) -> dict[str, Any]:
    user = "Tell me about the weather in Paris for the next three days."
    if kind == "auto text":
        user = "Tell me a short story about the weather."  # a question no tool answers
    return {"model": "smollm2", "temperature": 0, "max_tokens": args.max_tokens,
            "messages": [{"role": "system", "content": f"[{run} {kind}] You are a helpful assistant."},
                         {"role": "user", "content": user}], **KINDS[kind]}  # fmt: skip


def answer_kind(chunks: list[dict[str, Any]]) -> str:
    delta = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    return "call" if any(d.get("tool_calls") for d in delta) else "text"


def engine_path(args: argparse.Namespace):  # noqa: ANN201 - a callable of (kind, run)
    """The engine in this process, each token timed as llama.cpp yields it."""
    from hoosh_edge.backends.engines.llama import LlamaEngine
    from hoosh_edge.backends.engines.pool import ModelPool

    pool = ModelPool(reserve_bytes=0, mem_available=lambda: None)
    engine = LlamaEngine({"smollm2": args.model}, pool, n_threads=args.threads, n_ctx=args.n_ctx)
    engine.preload()
    llm = pool.slot("smollm2").ensure_loaded().llm
    stamps: list[float] = []
    generate = llm.generate

    def timed(*a: Any, **kw: Any):  # noqa: ANN202
        for tok in generate(*a, **kw):
            stamps.append(time.perf_counter())
            yield tok

    llm.generate = timed

    def call(kind: str, run: int) -> tuple[float, float, int, str]:
        stamps.clear()
        started = time.perf_counter()
        chunks = list(engine.chat_stream("smollm2", request(kind, run, args)))
        n = len(stamps)
        rate = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else 0.0
        return (stamps[0] - started) * 1000, rate, n, answer_kind(chunks)

    return call


def gateway_path(url: str, args: argparse.Namespace):  # noqa: ANN201
    def call(kind: str, run: int) -> tuple[float, float, int, str]:
        body = {**request(kind, run, args), "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        started = time.perf_counter()
        first = None
        chunks = []
        with requests.post(url + "/v1/chat/completions", json=body, headers=NO_STORE,
                           stream=True, timeout=300) as r:  # fmt: skip
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk.get("choices"):
                    first = time.perf_counter()
                chunks.append(chunk)
        done = time.perf_counter()
        tokens = next(c["usage"]["completion_tokens"] for c in chunks if c.get("usage"))
        return (
            ((first or done) - started) * 1000,
            (done - started) * 1000,
            tokens,
            answer_kind(chunks),
        )

    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    args = ap.parse_args()
    print(f"model {Path(args.model).name}, {args.threads} threads, n_ctx {args.n_ctx}, "
          f"max_tokens {args.max_tokens}, temperature 0, {args.runs} runs (medians), "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        config = local_llm_toml(tmp, "smollm2", args.model, threads=args.threads, n_ctx=args.n_ctx)
        gw, url = spawn_gateway(config, tmp)
        try:
            wait_healthy(url)
            paths = {"engine": engine_path(args), "gateway": gateway_path(url, args)}
            results = {(p, k): [] for p in paths for k in KINDS}
            for run in range(-1, args.runs):  # run -1 warms both paths up
                for kind in KINDS:
                    for name, call in paths.items():
                        got = call(kind, run)
                        if run >= 0:
                            results[(name, kind)].append(got)
        finally:
            stop(gw)
    print(f"{'':14} | {'engine: TTFT':>13} {'tok/s':>7} {'tokens':>7} | "
          f"{'gateway: TTFT':>14} {'answer':>9} {'tokens':>7} | answered as")  # fmt: skip
    for kind in KINDS:
        e, g = results[("engine", kind)], results[("gateway", kind)]
        med = [statistics.median(r[i] for r in rs) for rs in (e, g) for i in (0, 1, 2)]
        seen = sorted({r[3] for r in e + g})
        print(f"{kind:<14} | {med[0]:10.1f} ms {med[1]:7.1f} {med[2]:7.0f} | "
              f"{med[3]:11.1f} ms {med[4]:6.0f} ms {med[5]:7.0f} | {'/'.join(seen)}")  # fmt: skip


if __name__ == "__main__":
    main()
