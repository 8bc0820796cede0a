"""What the local-serving benchmarks share: one streamed chat over HTTP, timed, and the peer
(llama.cpp's own C++ ``llama-server``) built and started on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "benchmarks" / "build_llama_server.sh"


@dataclass
class Streamed:
    """One streamed answer as the client saw it."""

    ttft_s: float  # request sent -> first non-empty content delta
    wall_s: float  # request sent -> last byte
    tokens: int  # completion tokens (the usage the server sent; content deltas if none)
    decode_s: float  # first content delta -> last content delta
    text: str
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)  # llama-server's own, if sent
    deltas: int = 0  # content deltas received (several tokens may share one)
    started: float = 0.0  # perf_counter at the request
    ended: float = 0.0
    finish: str | None = None  # the choice's finish_reason

    @property
    def text_tokens(self) -> int:
        """Completion tokens that carry text. llama-server counts the end-of-generation token
        too (its usage says 25 for an answer of 24 text tokens that ended by itself); the
        gateway, like OpenAI, does not. That token is no text, so it is not counted here."""
        if self.timings and self.finish == "stop" and self.tokens > 0:
            return self.tokens - 1
        return self.tokens

    @property
    def tok_s(self) -> float:
        """Decode rate: text tokens after the first over the time they took."""
        n = self.text_tokens
        return (n - 1) / self.decode_s if n > 1 and self.decode_s > 0 else 0.0

    @property
    def cached(self) -> int | None:
        """Prompt tokens the server said it reused (OpenAI's usage field, or llama-server's)."""
        details = self.usage.get("prompt_tokens_details") or {}
        if details.get("cached_tokens") is not None:
            return int(details["cached_tokens"])
        return self.timings.get("cache_n")


def stream_chat(session: requests.Session, base: str, body: dict[str, Any],
                headers: dict[str, str] | None = None, timeout: float = 300) -> Streamed:  # fmt: skip
    """POST a stream=true chat to ``base``/v1/chat/completions and time it."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = last = None
    parts: list[str] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    deltas = 0
    finish = None
    with session.post(base + "/v1/chat/completions", json=body, headers=headers or {},
                      stream=True, timeout=timeout) as r:  # fmt: skip
        if r.status_code != 200:
            raise SystemExit(f"{base} answered {r.status_code}: {r.text[:300]}")
        for line in r.iter_lines(chunk_size=None):
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            doc = json.loads(line[6:])
            if "error" in doc:
                raise SystemExit(f"{base} stream failed: {doc['error']}")
            usage = doc.get("usage") or usage
            timings = doc.get("timings") or timings
            for choice in doc.get("choices") or ():
                finish = choice.get("finish_reason") or finish
                text = (choice.get("delta") or {}).get("content")
                if text:
                    last = time.perf_counter()
                    first = first or last
                    parts.append(text)
                    deltas += 1
    ended = time.perf_counter()
    first = first or ended
    return Streamed(ttft_s=first - started, wall_s=ended - started,
                    tokens=int(usage.get("completion_tokens") or deltas),
                    decode_s=(last or first) - first, text="".join(parts), usage=usage,
                    timings=timings, deltas=deltas, started=started, ended=ended,
                    finish=finish)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_mib(pid: int, field_name: str = "VmRSS") -> float:
    """A memory figure of a process from /proc (VmRSS now, VmHWM its peak), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def llama_server_binary(given: str | None) -> Path:
    """The peer's binary: the one given, else built (once) by build_llama_server.sh."""
    if given:
        return Path(given)
    print("llama-server: building or finding it (benchmarks/build_llama_server.sh)...", flush=True)
    out = subprocess.run([str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


class LlamaServer:
    """llama.cpp's own server on 127.0.0.1 with one model; restartable (it restarts cold)."""

    def __init__(self, binary: Path, model: str, *, threads: int, n_ctx: int, slots: int,
                 log: Path, extra: list[str] | None = None) -> None:  # fmt: skip
        self.argv = [str(binary), "-m", model, "-t", str(threads), "-tb", str(threads),
                     "-c", str(n_ctx), "-np", str(slots), "-fa", "off", "--host", "127.0.0.1",
                     "--no-webui", *(extra or [])]  # fmt: skip
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*self.argv, "--port", str(port)], stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"llama-server exited {self.proc.returncode}; see {self.log}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"llama-server did not become healthy; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid
