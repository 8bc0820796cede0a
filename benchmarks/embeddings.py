"""Embeddings speed: the engine called directly in-process vs. POST /v1/embeddings through the gateway.

    .venv/bin/python benchmarks/embeddings.py [--runs 20] [--threads 0]

Starts a gateway child process on loopback serving ``models/all-minilm-l6-v2``
(``.venv/bin/hoosh-edge models pull all-minilm-l6-v2``), loads the same folder here with each
forward pass (onnxruntime, numpy), and prints for batch 1 and batch 32:

- p50 latency of one call and texts per second (batch / p50), through the gateway and directly,
  alternated round by round so both paths see the same background load;
- the resident memory the loaded model adds, in the gateway (VmRSS of the child before and after
  its first request) and here (per runtime).

Every gateway request sends ``Cache-Control: no-cache, no-store`` (the run stops if
``X-Hoosh-Cache`` is not BYPASS). The texts are 13-word sentences (17 tokens each with [CLS] and [SEP]). No peer
server is started: llama-server needs a GGUF of the model, which no registry ships and whose
converter needs torch. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _procs import spawn_gateway, stop, wait_healthy  # noqa: E402

from hoosh_edge.backends.engines.embeddings import load_embedder  # noqa: E402

MODEL_DIR = ROOT / "models" / "all-minilm-l6-v2"
NO_CACHE = {"Cache-Control": "no-cache, no-store"}
TEXTS = [
    f"Sentence {i} talks about the weather, the river and a small town nearby." for i in range(32)
]


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def p50(fn: Callable[[], None], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if not MODEL_DIR.is_dir():
        sys.exit(f"{MODEL_DIR} is missing: hoosh-edge models pull all-minilm-l6-v2")
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    toml = f"""
[server]
log_level = "warning"
data_dir = "{tmp / "data"}"
models_dir = "{tmp / "no-models"}"
[local.embeddings]
n_threads = {args.threads}
keep_alive_s = 0
[local.embeddings.models]
all-minilm-l6-v2 = "{MODEL_DIR}"
"""
    proc, url = spawn_gateway(toml, tmp)
    session = requests.Session()
    try:
        wait_healthy(url)
        before = rss_kib(proc.pid)

        def via_gateway(batch: list[str]) -> None:
            r = session.post(url + "/v1/embeddings", headers=NO_CACHE, timeout=120,
                             json={"model": "all-minilm-l6-v2", "input": batch})  # fmt: skip
            r.raise_for_status()
            if r.headers["X-Hoosh-Cache"] != "BYPASS":
                sys.exit("the cache answered: the run measures nothing")

        via_gateway(TEXTS)
        gw_model_mib = (rss_kib(proc.pid) - before) / 1024
        direct = {}
        for runtime in ("onnxruntime", "numpy"):
            base = rss_kib()
            m = load_embedder(MODEL_DIR, args.threads, runtime)
            m.embed(TEXTS)
            direct[runtime] = (m, (rss_kib() - base) / 1024)
        print(f"all-minilm-l6-v2, {len(TEXTS[0].split())}-word texts, p50 of {args.runs} runs "
              f"(batch 32: {max(3, args.runs // 4)})")  # fmt: skip
        print(f"{'path':<24}{'batch':>6}{'p50 ms':>10}{'texts/s':>10}")
        rows: dict[tuple[str, int], list[float]] = {}
        for _ in range(3):  # alternated rounds: the same background load for every path
            for batch in (1, 32):
                runs = args.runs if batch == 1 else max(3, args.runs // 4)
                texts = TEXTS[:batch]
                rows.setdefault(("gateway (auto)", batch), []).append(
                    p50(lambda t=texts: via_gateway(t), runs))  # fmt: skip
                for runtime, (m, _) in direct.items():
                    rows.setdefault((f"direct {runtime}", batch), []).append(
                        p50(lambda t=texts, mm=m: mm.embed(t), runs))  # fmt: skip
        for (path, batch), values in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            s = statistics.median(values)
            print(f"{path:<24}{batch:>6}{s * 1000:>10.1f}{batch / s:>10.1f}")
        print(
            f"model memory: gateway +{gw_model_mib:.0f} MiB RSS after its first request; "
            + ", ".join(f"direct {r} +{mib:.0f} MiB" for r, (_, mib) in direct.items())
        )
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
