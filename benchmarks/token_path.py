"""The per-token path: a streamed local answer through the gateway vs llama.cpp called directly.

    .venv/bin/python benchmarks/token_path.py [--runs 7] [--max-tokens 256] [--threads 2]
        [--gateway-root CHECKOUT ...] [--llama-server PATH | --peer] [--profile PREFIX]

"direct" is llama-cpp-python in this process with the gateway's own prompt tokens and sampling
(``llama_prompt.prepare``), each token detokenized: what llama.cpp costs with no gateway around
it. "gateway" is the same request streamed over HTTP from a gateway child process (one model,
preloaded, the same threads and n_ctx); ``--peer`` (or ``--llama-server PATH``) adds llama.cpp's
own llama-server (built by benchmarks/build_llama_server.sh) with the same request. Runs
alternate path by path so the machine's noise hits all alike; every run starts its system
message with a fresh tag, so no path reuses an earlier prompt and all decode alike (temperature
0: the same tokens). Prints medians of TTFT and decode tokens/s, the ratio gateway/direct, and
the CPU the gateway spent per streamed token (all threads, and its main thread alone: the part
that is not llama.cpp). ``--profile PREFIX`` records the gateway with py-spy (GIL samples) into
PREFIX-gateway.txt and prints its layers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _peer import LlamaServer, llama_server_binary, proc_mib, stream_chat  # noqa: E402
from _procs import local_llm_toml, spawn_gateway, stop, wait_healthy  # noqa: E402
from layers import summarize  # noqa: E402

MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
USER = "Write a long story about a small robot who learns to cook soup."
NO_STORE = {"Cache-Control": "no-cache, no-store"}


def messages(run: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"[{run}] You are a helpful assistant."},
            {"role": "user", "content": USER}]  # fmt: skip


def request(run: int, args: argparse.Namespace) -> dict:
    return {"model": "smollm2", "messages": messages(run), "temperature": 0, "seed": args.seed,
            "max_tokens": args.max_tokens}  # fmt: skip


def direct(args: argparse.Namespace):  # noqa: ANN201 - a callable returning (ttft, tokens, tok/s)
    """llama-cpp-python in-process: the gateway's prompt and sampling, no gateway."""
    import llama_cpp

    from hoosh_edge.backends.engines.llama_prompt import loaded, prepare, template_messages

    n_ctx = args.n_ctx
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=n_ctx, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)  # fmt: skip
    m = loaded(llm, n_ctx)
    vocab = llm._model.vocab

    def call(run: int) -> tuple[float, int, float]:
        req = request(run, args)
        prep = prepare(m, template_messages(req), req)
        started = time.perf_counter()
        llm.set_seed(prep.seed)
        first = last = None
        n = 0
        for tok in llm.generate(prep.prompt, **prep.sampling):
            if tok in m.stop_ids or llama_cpp.llama_vocab_is_eog(vocab, tok):
                break
            llm.detokenize([tok])
            last = time.perf_counter()
            first = first or last
            n += 1
            if n >= prep.max_tokens:
                break
        first = first or time.perf_counter()
        return first - started, n, (n - 1) / (last - first) if n > 1 and last else 0.0

    return call


def over_http(url: str, args: argparse.Namespace):  # noqa: ANN201
    def call(run: int) -> tuple[float, int, float]:
        # A fresh connection a run: a kept-alive one may have been closed while idle.
        got = stream_chat(requests.Session(), url, request(run, args), NO_STORE)
        return got.ttft_s, got.tokens, got.tok_s

    return call


def cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (or one of its threads) from /proc."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_gateway(args: argparse.Namespace, tmp: Path, root: Path) -> tuple[subprocess.Popen, str]:
    config = local_llm_toml(tmp, "smollm2", args.model, threads=args.threads, n_ctx=args.n_ctx)
    proc, url = spawn_gateway(config, tmp, root)
    wait_healthy(url)
    return proc, url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--gateway-root", type=Path, action="append",
                    help="a checkout whose gateway to run (default: this one); repeat it to "
                         "compare checkouts in one run, rows alternating")  # fmt: skip
    ap.add_argument("--peer", action="store_true", help="add llama-server (built if needed)")
    ap.add_argument("--llama-server", help="add this llama-server binary")
    ap.add_argument(
        "--profile", metavar="PREFIX", help="py-spy the gateway into PREFIX-gateway.txt"
    )
    args = ap.parse_args()
    print(f"model {Path(args.model).name}, {args.threads} threads, n_ctx {args.n_ctx}, max_tokens "
          f"{args.max_tokens}, temperature 0, {args.runs} runs (medians), "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    roots = [r.resolve() for r in args.gateway_root or [ROOT]]
    names = (
        ["gateway"] if len(roots) == 1 else [f"gateway {chr(97 + i)}" for i in range(len(roots))]
    )
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        gateways: dict[str, subprocess.Popen] = {}
        peer = None
        try:
            paths = {"direct": direct(args)}
            for name, root in zip(names, roots, strict=True):
                print(f"{name}: {root}")
                (tmp / name).mkdir()
                gateways[name], url = start_gateway(args, tmp / name, root)
                paths[name] = over_http(url, args)
            if args.peer or args.llama_server:
                peer = LlamaServer(llama_server_binary(args.llama_server), args.model,
                                   threads=args.threads, n_ctx=args.n_ctx, slots=1,
                                   log=tmp / "llama-server.log")  # fmt: skip
                peer.start()
                paths["llama-server"] = over_http(peer.url, args)
            measure(paths, args, gateways)
        finally:
            if peer is not None:
                peer.stop()
            for gw in gateways.values():
                stop(gw)


def measure(paths: dict, args: argparse.Namespace, gateways: dict[str, subprocess.Popen]) -> None:
    for call in paths.values():
        call(-1)  # warm: first-touch page faults, thread start-up
    spies = {}
    for name, gw in gateways.items() if args.profile else ():
        out = Path(f"{args.profile}-{name.replace(' ', '-')}.txt").resolve()
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spies[out] = subprocess.Popen([exe, "record", "--pid", str(gw.pid), "--rate", "250",
                                       "--format", "raw", "--output", str(out), "--nonblocking",
                                       "--gil"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(1 if spies else 0)
    res: dict[str, list[tuple[float, int, float]]] = {name: [] for name in paths}
    cpu = {name: [0.0, 0.0, 0] for name in gateways}  # all threads, main thread, tokens
    for i in range(args.runs):
        for name, call in paths.items():
            gw = gateways.get(name)
            if gw is not None:
                c0, m0 = cpu_s(gw.pid), cpu_s(gw.pid, gw.pid)
            res[name].append(call(i))
            if gw is not None:
                cpu[name][0] += cpu_s(gw.pid) - c0
                cpu[name][1] += cpu_s(gw.pid, gw.pid) - m0
                cpu[name][2] += res[name][-1][1]
    for spy in spies.values():
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    med = {}
    for name, rs in res.items():
        ttft = statistics.median(r[0] for r in rs) * 1000
        tok_s = statistics.median(r[2] for r in rs)
        med[name] = tok_s
        print(f"{name:<13} TTFT {ttft:7.1f} ms   decode {tok_s:6.1f} tok/s   "
              f"tokens/run {sorted({r[1] for r in rs})}")  # fmt: skip
    for name, gw in gateways.items():
        all_s, main_s, tokens = cpu[name]
        peer = med.get("llama-server")
        print(f"{name}/direct tok/s {med[name] / med['direct']:.3f}"
              + (f"   {name}/llama-server {med[name] / peer:.3f}" if peer else "")
              + f"   CPU per streamed token {all_s / tokens * 1e6:.0f} us in all, "
              f"{main_s / tokens * 1e6:.0f} us on its main (gevent) thread; RSS "
              f"{proc_mib(gw.pid):.0f} MiB")  # fmt: skip
    if "llama-server" in med:
        print(f"llama-server/direct tok/s {med['llama-server'] / med['direct']:.3f}")
    for out in spies:
        print(summarize(out, top=20) if out.exists() else f"no profile: {out}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
