"""Wyoming peers for the tests: the ``wyoming`` package's own AsyncTcpClient, and raw sockets."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from typing import Any

from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from tests.conftest import ROOT, GatewayProcess

MODELS = ROOT / "models"
VOICE, WHISPER, LLM = (MODELS / "en_US-joe-medium.onnx", MODELS / "ggml-tiny.en.bin",
                       MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf")  # fmt: skip


def wyoming_port(gw: GatewayProcess, timeout: float = 10) -> int:
    """The Wyoming port the gateway printed in its banner."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(gw.banner):
            m = re.search(r"wyoming: tcp://127\.0\.0\.1:(\d+)", line)
            if m:
                return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no wyoming line in the banner: {gw.banner}")


def wyoming_toml(extra: str = "", **keys: Any) -> str:
    """A ``[wyoming]`` table on a free port with ``keys``, after ``extra``."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join([extra, "[wyoming]", "port = 0", *lines, ""])


def speech_toml(**wyoming: Any) -> str:
    """The real joe voice and whisper-tiny.en, and a Wyoming listener."""
    return wyoming_toml(f"""
[local.stt.models]
"whisper-tiny.en" = "{WHISPER}"
[local.tts.voices]
joe = "{VOICE}"
""", **wyoming)  # fmt: skip


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def exchange(port: int, events: list[Event], until: tuple[str, ...],
                   timeout: float = 120) -> list[Event]:  # fmt: skip
    """Send ``events`` on a new connection; the events back up to one of type ``until``."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        for e in events:
            await client.write_event(e)
        out: list[Event] = []
        while True:
            event = await asyncio.wait_for(client.read_event(), timeout)
            assert event is not None, f"connection closed after {[e.type for e in out]}"
            out.append(event)
            if event.type in until:
                return out


def describe(port: int) -> tuple[Info, float]:
    """``info`` and how long it took to arrive."""
    started = time.monotonic()
    events = run(exchange(port, [Describe().event()], ("info",), timeout=5))
    return Info.from_event(events[-1]), time.monotonic() - started


def synthesize(port: int, text: str, voice: str | None = None) -> tuple[bytes, int, list[Event]]:
    """(PCM, its rate, every event) for ``text``."""
    v = SynthesizeVoice(name=voice) if voice else None
    events = run(exchange(port, [Synthesize(text=text, voice=v).event()], ("audio-stop", "error")))
    chunks = [AudioChunk.from_event(e) for e in events if e.type == "audio-chunk"]
    rate = chunks[0].rate if chunks else 0
    return b"".join(c.audio for c in chunks), rate, events


def as_home_assistant_sends(pcm: bytes, rate: int) -> bytes:
    """16 kHz, 16-bit mono: what Home Assistant streams to a Wyoming speech-to-text service."""
    chunk = AudioChunk(rate=rate, width=2, channels=1, audio=pcm)
    return AudioChunkConverter(rate=16000, width=2, channels=1).convert(chunk).audio


def transcribe_events(pcm: bytes, rate: int = 16000, width: int = 2, channels: int = 1,
                      language: str | None = "en", chunk_bytes: int = 2048) -> list[Event]:  # fmt: skip
    """The events a client sends to transcribe ``pcm``."""
    out = [Transcribe(language=language).event(),
           AudioStart(rate=rate, width=width, channels=channels).event()]  # fmt: skip
    for i in range(0, len(pcm), chunk_bytes):
        out.append(AudioChunk(rate=rate, width=width, channels=channels,
                              audio=pcm[i : i + chunk_bytes]).event())  # fmt: skip
    out.append(AudioStop().event())
    return out


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> tuple[list[dict], bool]:
    """Send raw bytes; (the header lines read back, whether the server closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may close before taking it all (an endless line)
        return read_until_closed(s, timeout)


def read_until_closed(s: socket.socket, timeout: float = 10) -> tuple[list[dict], bool]:
    """Every event header (with its data merged) until the server closes, or the timeout."""
    s.settimeout(timeout)
    buf = b""
    closed = False
    try:
        while True:
            got = s.recv(65536)
            if not got:
                closed = True
                break
            buf += got
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        closed = False
    headers = []
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        h = json.loads(line)
        n = h.get("data_length") or 0
        if n:
            h["data"] = {**(h.get("data") or {}), **json.loads(buf[:n])}
            buf = buf[n:]
        buf = buf[h.get("payload_length") or 0 :]
        headers.append(h)
    return headers, closed


def access_lines(
    gw: GatewayProcess, path: str, at_least: int = 1, timeout: float = 5
) -> list[dict]:
    """The access lines of ``path`` (``wyoming:tts`` ...), once ``at_least`` of them are written:
    a line follows the last event the peer got."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(x) for x in list(gw.stderr_lines)
                 if x.startswith("{") and f'"path":"{path}"' in x]  # fmt: skip
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)
