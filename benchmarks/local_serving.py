"""Local serving beside llama.cpp's own llama-server: prompt reuse across turns and restarts.

    .venv/bin/python benchmarks/local_serving.py [--max-tokens 96] [--threads 2]
        [--prompt-cache-mb N] [--prompt-cache-disk-mb N] [--llama-server PATH] [--no-peer]
        [--gateway-root OTHER_CHECKOUT]

One run, two servers on loopback serving models/SmolLM2-135M-Instruct.Q4_1.gguf with the same
threads: the gateway (``python hoosh_edge.py``, the model preloaded) and llama-server with a slot
per conversation (``-np 3``, ``-c`` 3x the gateway's n_ctx). Three conversations, each with its
own ~650-token system prompt (a home's device list), take turns; every turn runs on the gateway,
then on llama-server (conversation by conversation, so the machine's noise hits both alike), over
their OpenAI-compatible streaming endpoints (temperature 0, one seed, the same max_tokens). Time to first token (TTFT) is the time to the first content delta.

Steps: a first turn of each (cold), a second (warm), a third for all three at once (tokens/s in
all: completion tokens over the wall time of the round), a restart of both servers and a fourth
turn (llama-server restarts cold), a fifth turn; then the Home Assistant case: one conversation
whose system prompt carries the current time near the top, a different time each turn. Last,
single stream: ``--stream-runs`` long answers a server (``--stream-tokens``) in pairs, which
server goes first taking turns; its ratio is the median of the pairs' ratios.

Ratios are hoosh-edge / llama-server, beside the goals of the issue. ``--prompt-cache-mb`` and
``--prompt-cache-disk-mb`` set ``[local.llm] prompt_cache_mb`` / ``prompt_cache_disk_mb``; left
out, the gateway's own defaults apply (and a checkout without those keys runs as well). The
peer is built on first use by benchmarks/build_llama_server.sh (~10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _peer import LlamaServer, Streamed, llama_server_binary, proc_mib, stream_chat  # noqa: E402
from _procs import local_llm_toml, spawn_gateway, stop, wait_healthy  # noqa: E402

MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOMS = ["kitchen", "living room", "bedroom", "office", "hallway", "garage", "bathroom", "porch",
         "basement", "attic", "garden", "nursery"]  # fmt: skip
KINDS = [("light", "on, brightness {}%"), ("switch", "off"), ("sensor", "{}.{} °C"),
         ("cover", "open {}%"), ("climate", "heat, target {} °C"), ("lock", "locked"),
         ("media_player", "playing, volume {}%"), ("fan", "on, speed {}%")]  # fmt: skip
TURNS = ["Which lights are on right now?", "Turn off the lights in the kitchen, please.",
         "What is the temperature in the bedroom?", "Is the garage door open?",
         "Summarize the state of the house in three sentences.", "Lock every door."]  # fmt: skip


def home_prompt(home: int, clock: str | None = None, devices: int = 27) -> str:
    """A Home-Assistant-like system prompt: about 650 tokens of devices and their states."""
    rnd = random.Random(home)
    lines = [f"You are the voice assistant of home number {home}. Answer briefly and truthfully."]
    if clock is not None:
        lines.append(f"Current time: {clock}. Today is Tuesday, 1 December.")
    lines.append("These are the devices of the house and their states:")
    for i in range(devices):
        kind, state = KINDS[rnd.randrange(len(KINDS))]
        room = ROOMS[rnd.randrange(len(ROOMS))]
        name = f"{kind}.{room.replace(' ', '_')}_{i}"
        lines.append(f"- {name} ({room.title()} {kind.replace('_', ' ')} {i}): "
                     + state.format(rnd.randrange(5, 95), rnd.randrange(10)))  # fmt: skip
    lines.append("Use only these devices. If a request is unclear, ask one short question.")
    return "\n".join(lines)


class Conversation:
    """One client's chat history, resent whole each turn (as chat clients do)."""

    def __init__(self, system: str) -> None:
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}]
        self.turn = 0

    def ask(self) -> list[dict[str, str]]:
        self.messages.append({"role": "user", "content": TURNS[self.turn % len(TURNS)]})
        self.turn += 1
        return list(self.messages)

    def answered(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})


class Gateway:
    """hoosh-edge as a child process with one model; restartable on the same data_dir."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        cache = ""
        if args.prompt_cache_mb is not None:
            cache += f"prompt_cache_mb = {args.prompt_cache_mb}\n"
        if args.prompt_cache_disk_mb is not None:
            cache += f"prompt_cache_disk_mb = {args.prompt_cache_disk_mb}\n"
        self.config = local_llm_toml(tmp, "smollm2", args.model, threads=args.threads,
                                     n_ctx=args.n_ctx, extra=cache)  # fmt: skip
        self.tmp = tmp
        self.root = args.gateway_root
        self.proc: Any = None
        self.url = ""

    def start(self) -> None:
        self.proc, self.url = spawn_gateway(self.config, self.tmp, self.root)
        wait_healthy(self.url)
        # Preloading happens at start-up; a tiny call makes sure the model is in.
        stream_chat(requests.Session(), self.url, {"model": "smollm2", "max_tokens": 1,
                    "messages": [{"role": "user", "content": "hi"}]}, NO_STORE)  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid


NO_STORE = {"Cache-Control": "no-cache, no-store"}  # the response cache must not answer
STORY = "Write a long story about a small robot who learns to cook soup."
STREAM_ROW = "single stream"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048, help="the gateway's; llama-server: x3")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--stream-runs", type=int, default=8, help="single-stream answers a server")
    ap.add_argument("--stream-tokens", type=int, default=256, help="their max_tokens")
    ap.add_argument("--prompt-cache-mb", type=int, help="[local.llm] prompt_cache_mb")
    ap.add_argument("--prompt-cache-disk-mb", type=int, help="[local.llm] prompt_cache_disk_mb")
    ap.add_argument("--llama-server", help="the peer's binary (default: build or find it)")
    ap.add_argument("--no-peer", action="store_true", help="measure the gateway alone")
    ap.add_argument(
        "--peer-args", default="", help="more llama-server flags, e.g. '--cache-reuse 256'"
    )
    ap.add_argument("--gateway-root", type=Path, default=ROOT, help="checkout whose gateway to run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        servers: dict[str, Any] = {"hoosh-edge": Gateway(tmp, args)}
        if not args.no_peer:
            servers["llama-server"] = LlamaServer(
                llama_server_binary(args.llama_server), args.model, threads=args.threads,
                n_ctx=args.n_ctx * 3, slots=3, log=tmp / "llama-server.log",
                extra=args.peer_args.split())  # fmt: skip
        try:
            run(args, servers, tmp)
        finally:
            for s in servers.values():
                s.stop()


def run(args: argparse.Namespace, servers: dict[str, Any], tmp: Path) -> None:
    print(f"model {Path(args.model).name}, {args.threads} threads, max_tokens {args.max_tokens}, "
          f"temperature 0, seed {args.seed}, gateway {args.gateway_root}, prompt_cache_mb "
          f"{args.prompt_cache_mb if args.prompt_cache_mb is not None else 'default'}, "
          f"prompt_cache_disk_mb "
          f"{args.prompt_cache_disk_mb if args.prompt_cache_disk_mb is not None else 'default'}, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    for s in servers.values():
        s.start()
    convs = {name: [Conversation(home_prompt(h)) for h in (1, 2, 3)] for name in servers}
    rows: dict[str, dict[str, list[Streamed]]] = {name: {} for name in servers}

    def body(messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"model": "smollm2", "messages": messages, "temperature": 0, "seed": args.seed,
                "max_tokens": args.max_tokens}  # fmt: skip

    def turn(row: str, name: str, conv: Conversation, sess: requests.Session | None = None) -> None:
        # A fresh connection a turn: a kept-alive one may have been closed while idle.
        got = stream_chat(sess or requests.Session(), servers[name].url, body(conv.ask()), NO_STORE)
        conv.answered(got.text)
        rows[name].setdefault(row, []).append(got)
        print(f"  {name:<12} {row:<24} TTFT {got.ttft_s:6.3f} s  {got.tok_s:6.1f} tok/s  "
              f"{got.text_tokens:3d} tokens ({got.finish}), prompt {got.usage.get('prompt_tokens')}, "
              f"reused {got.cached}", flush=True)  # fmt: skip

    def each(step: Callable[[str], None]) -> None:
        for name in servers:
            step(name)

    def interleaved(row: str) -> None:
        # Conversation by conversation, server by server: a noisy second hits both alike.
        for i in range(3):
            each(lambda n, i=i: turn(row, n, convs[n][i]))

    for row in ("first turn (cold)", "second turn (warm)"):
        interleaved(row)
    each(lambda n: concurrent(turn, n, convs[n]))
    rss_before = {n: proc_mib(s.pid) for n, s in servers.items()}
    for s in servers.values():
        s.stop()
        s.start()
    for row in ("after restart: 4th turn", "5th turn"):
        interleaved(row)
    home = {n: Conversation(home_prompt(9, "16:00")) for n in servers}
    for i, row in enumerate(("HA: first turn (cold)", "HA: clock changed", "HA: clock changed")):
        for n in servers:
            home[n].messages[0]["content"] = home_prompt(9, f"16:{i:02d}")
            turn(row, n, home[n])
    # Single stream: long answers in pairs, the server going first taking turns; every run has a
    # system message of its own, so each decodes from a freshly evaluated prompt.
    names = list(servers)
    for i in range(args.stream_runs):
        order = names if i % 2 == 0 else names[::-1]
        for n in order:
            story = [{"role": "system", "content": f"[{i}] You are a helpful assistant."},
                     {"role": "user", "content": STORY}]  # fmt: skip
            got = stream_chat(requests.Session(), servers[n].url,
                              {**body(story), "max_tokens": args.stream_tokens}, NO_STORE)  # fmt: skip
            rows[n].setdefault(STREAM_ROW, []).append(got)
            print(f"  {n:<12} {STREAM_ROW:<24} {got.tok_s:6.1f} tok/s  {got.text_tokens} tokens",
                  flush=True)  # fmt: skip
    report(rows, servers, rss_before, tmp)


def concurrent(turn: Callable[..., None], name: str, convs: list[Conversation]) -> None:
    """The third turn of all three conversations at once, each on its own connection."""
    threads = [threading.Thread(target=turn, args=("3 streams at once", name, c,
                                                   requests.Session())) for c in convs]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return (fmt.format(lo) if fmt.format(lo) == fmt.format(hi)
            else f"{fmt.format(lo)}–{fmt.format(hi)}")  # fmt: skip


GOALS = {"second turn (warm)": ("TTFT", "<= 1.10"), "after restart: 4th turn": ("TTFT", "<= 0.15"),
         "single stream": ("tok/s", ">= 0.97")}  # fmt: skip


def report(rows: dict[str, dict[str, list[Streamed]]], servers: dict[str, Any],
           rss_before: dict[str, float], tmp: Path) -> None:  # fmt: skip
    names = list(rows)
    first = rows[names[0]]
    print(
        f"prompt tokens per first turn: {[r.usage.get('prompt_tokens') for r in first['first turn (cold)']]}"
    )
    print(f"{'':<26}| " + " | ".join(f"{n:^26}" for n in names)
          + (" | ratio  | goal" if len(names) > 1 else ""))  # fmt: skip
    table: list[tuple[str, str, list[list[float]]]] = []
    for row in first:
        if row in ("3 streams at once", STREAM_ROW):
            continue
        table.append((row, "TTFT s", [[r.ttft_s for r in rows[n][row]] for n in names]))
        if row == "second turn (warm)":
            table.append(("turns 1-2, decoding", "tok/s",
                          [[r.tok_s for r in rows[n][row] + rows[n]["first turn (cold)"]]
                           for n in names]))  # fmt: skip
            table.append((STREAM_ROW, "tok/s", [[r.tok_s for r in rows[n][STREAM_ROW]]
                                                for n in names]))  # fmt: skip
            together = [rows[n]["3 streams at once"] for n in names]
            table.append(("3 streams at once, in all", "tok/s",
                          [[sum(r.text_tokens for r in rs) / (max(r.ended for r in rs)
                                                        - min(r.started for r in rs))]
                           for rs in together]))  # fmt: skip
    for row, unit, values in table:
        cells = [span(v, "{:.3f}" if unit == "TTFT s" else "{:.1f}") + f" {unit}" for v in values]
        line = f"{row:<26}| " + " | ".join(f"{c:^26}" for c in cells)
        if len(names) > 1:
            ratio = statistics.median(values[0]) / statistics.median(values[1])
            if row == STREAM_ROW:  # paired runs: the median of the ratios of neighbours
                ratio = statistics.median(a / b for a, b in zip(*values, strict=True) if b)
            goal = GOALS.get(row, ("", ""))[1]
            line += f" | {ratio:5.2f}x | {goal}"
        print(line)
    for n in names:
        cached = {row: [r.cached for r in rs] for row, rs in rows[n].items()}
        print(f"{n}: prompt tokens reused per turn (as the server reported): {cached}")
    for n, s in servers.items():
        print(f"{n} RSS: {rss_before[n]:.0f} MiB before the restart, {proc_mib(s.pid):.0f} MiB "
              f"at the end (peak since restart {proc_mib(s.pid, 'VmHWM'):.0f} MiB)")  # fmt: skip
    data = tmp / "data"
    disk = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) if data.exists() else 0
    print(f"hoosh-edge data_dir on disk: {disk / 2**20:.1f} MiB")
    metrics = requests.get(servers["hoosh-edge"].url + "/metrics", timeout=10).text
    wanted = [ln for ln in metrics.splitlines() if "prompt" in ln and not ln.startswith("#")]
    if wanted:
        print("hoosh-edge prompt metrics:\n  " + "\n  ".join(wanted))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
