"""Wyoming vs. HTTP in one gateway: time to the first audio chunk and the transcription real-time
factor, with the real whisper tiny.en and the joe voice.

    .venv/bin/python benchmarks/wyoming_door.py [--runs 5] [--threads N]

Starts one gateway child process on loopback serving both doors (``[wyoming] port = 0``) with the
response cache off, then alternates, ``--runs`` times each:

- text-to-speech of three sentences: Wyoming ``synthesize`` → first ``audio-chunk`` event, vs.
  ``POST /v1/audio/speech`` (``response_format=pcm``, streamed) → first body byte; and the time
  to the whole answer;
- speech-to-text of a ~6 s and a ~25 s clip (made by Piper at start, sent as Home Assistant sends
  it: 16 kHz, 16-bit mono, 1024-sample chunks): Wyoming ``transcribe`` … ``audio-stop`` →
  ``transcript``, vs. ``POST /v1/audio/transcriptions`` with the same samples as a WAV; real-time
  factor = wall time from the first byte sent to the transcript / clip duration.

Medians are printed; the ratio column is the median over rounds of HTTP time / Wyoming time (the
two paths of one round see the same background load). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import re
import socket
import statistics
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _procs import spawn_gateway, stop, wait_healthy  # noqa: E402
from speech import TEXTS, THREE, VOICE, WHISPER, default_threads  # noqa: E402
from wyoming.asr import Transcribe  # noqa: E402
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop  # noqa: E402
from wyoming.event import Event, read_event, write_event  # noqa: E402
from wyoming.tts import Synthesize  # noqa: E402

CHUNK = 2048  # bytes: 1024 samples of 16-bit mono, as Home Assistant sends


def start(tmp: Path, threads: int) -> tuple[object, str, int]:
    """The gateway, its HTTP URL and its Wyoming port."""
    proc, url = spawn_gateway(f"""
[server]
log_level = "warning"
data_dir = "{tmp / "data"}"
models_dir = "{tmp / "no-models"}"
[cache]
enabled = false
[wyoming]
port = 0
[local.stt]
n_threads = {threads}
keep_alive_s = 0
[local.stt.models]
"whisper-tiny.en" = "{WHISPER}"
[local.tts]
n_threads = {threads}
keep_alive_s = 0
[local.tts.voices]
joe = "{VOICE}"
""", tmp)  # fmt: skip
    port = 0
    while not port:
        line = proc.stdout.readline()  # type: ignore[attr-defined]
        if not line:
            raise SystemExit("the gateway printed no Wyoming listener")
        m = re.search(r"wyoming: tcp://127\.0\.0\.1:(\d+)", line)
        port = int(m.group(1)) if m else 0
    wait_healthy(url)
    return proc, url, port


def wyoming(port: int, events: list[Event], until: str,
            on_event: Callable[[Event], None] | None = None) -> list[Event]:  # fmt: skip
    """Send ``events`` on a new connection and read back up to an event of type ``until``."""
    with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r, w = s.makefile("rb"), s.makefile("wb")
        for e in events:
            write_event(e, w)
        out = []
        while True:
            e = read_event(r)
            if e is None:
                raise SystemExit(f"Wyoming closed the connection after {[x.type for x in out]}")
            if e.type == "error":
                raise SystemExit(f"Wyoming error: {e.data}")
            if on_event is not None:
                on_event(e)
            out.append(e)
            if e.type == until:
                return out


def tts_wyoming(port: int, text: str) -> tuple[float, float, bytes, int]:
    """(time to the first audio chunk, time to audio-stop, PCM, rate)."""
    started, first = time.perf_counter(), []

    def seen(e: Event) -> None:
        if e.type == "audio-chunk" and not first:
            first.append(time.perf_counter() - started)

    events = wyoming(port, [Synthesize(text=text).event()], "audio-stop", seen)
    chunks = [AudioChunk.from_event(e) for e in events if e.type == "audio-chunk"]
    return (
        first[0],
        time.perf_counter() - started,
        b"".join(c.audio for c in chunks),
        chunks[0].rate,
    )


def tts_http(url: str, text: str) -> tuple[float, float]:
    """(time to the first body byte, time to the whole body) of streamed pcm."""
    started = time.perf_counter()
    body = {"model": "tts-1", "voice": "joe", "input": text, "response_format": "pcm"}
    with requests.post(url + "/v1/audio/speech", json=body, stream=True, timeout=300) as r:
        r.raise_for_status()
        chunks = r.iter_content(chunk_size=None)
        next(chunks)
        first = time.perf_counter() - started
        for _ in chunks:
            pass
    return first, time.perf_counter() - started


def stt_wyoming(port: int, pcm16k: bytes) -> str:
    events = [
        Transcribe(language="en").event(),
        AudioStart(rate=16000, width=2, channels=1).event(),
    ]
    events += [AudioChunk(rate=16000, width=2, channels=1, audio=pcm16k[i : i + CHUNK]).event()
               for i in range(0, len(pcm16k), CHUNK)]  # fmt: skip
    events.append(AudioStop().event())
    return wyoming(port, events, "transcript")[-1].data["text"]


def stt_http(url: str, pcm16k: bytes) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm16k)
    r = requests.post(url + "/v1/audio/transcriptions", data={"model": "whisper-1"},
                      files={"file": ("a.wav", buf.getvalue(), "audio/wav")}, timeout=300)  # fmt: skip
    r.raise_for_status()
    return r.json()["text"]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=default_threads())
    args = ap.parse_args()
    if not (WHISPER.exists() and VOICE.exists()):
        raise SystemExit("pull the models first: hoosh-edge models pull whisper-tiny.en; ... joe")
    with tempfile.TemporaryDirectory() as d:
        proc, url, port = start(Path(d), args.threads)
        try:
            clips = {}
            for name, text in TEXTS.items():
                _, _, pcm, rate = tts_wyoming(port, text)
                chunk = AudioChunk(rate=rate, width=2, channels=1, audio=pcm)
                clips[name] = (
                    AudioChunkConverter(rate=16000, width=2, channels=1).convert(chunk).audio
                )
            tts_wyoming(port, THREE), tts_http(url, THREE)  # warm both paths
            rows: dict[str, list[tuple[float, float]]] = {}
            for _ in range(args.runs):
                wf, ww, _, _ = tts_wyoming(port, THREE)
                hf, hw = tts_http(url, THREE)
                rows.setdefault("tts first chunk (s)", []).append((wf, hf))
                rows.setdefault("tts whole answer (s)", []).append((ww, hw))
                for name, pcm in clips.items():
                    seconds = len(pcm) / 32000
                    w = timed(lambda p=pcm: stt_wyoming(port, p)) / seconds
                    h = timed(lambda p=pcm: stt_http(url, p)) / seconds
                    rows.setdefault(f"stt real-time factor, {name} clip", []).append((w, h))
            print(f"{args.runs} runs, {args.threads} threads, cache off; medians")
            print(f"{'':40} {'wyoming':>9} {'http':>9} {'http/wyoming':>13}")
            for label, pairs in rows.items():
                w = statistics.median(p[0] for p in pairs)
                h = statistics.median(p[1] for p in pairs)
                ratio = statistics.median(p[1] / p[0] for p in pairs)
                print(f"{label:40} {w:9.3f} {h:9.3f} {ratio:13.2f}")
        finally:
            stop(proc)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
