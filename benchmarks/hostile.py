"""Hostile input: what the gateway spends on requests built to hurt it.

    .venv/bin/python benchmarks/hostile.py [--runs 3] [--only audio_bombs,audio_deadline]

Each section starts its own gateway child process on loopback, sends its requests and prints one
row per case; nothing is asserted. Sections so far:

- ``audio_bombs``: for each hostile upload, the HTTP status, the time to answer and the growth of
  the gateway's peak RSS (VmHWM, reset through /proc/PID/clear_refs before each request, so an
  earlier peak cannot hide a new one): 30 minutes of 8-channel 48 kHz silence as a 0.7 MB FLAC
  (refused by the default ``local.stt.max_audio_s``, and decoded with the limit raised to 1800 s
  and the fake cloud as the only target), a FLAC whose header claims 2^36 samples, a WAV whose
  header claims 4 GB, and a valid 29-minute MP3.
- ``audio_deadline``: a valid 29-minute MP3 with ``max_audio_s = 1800`` and
  ``request_timeout_s = 10`` against whisper tiny.en (``models/ggml-tiny.en.bin``; the synthetic
  model if it is missing): time to the 504, how long after it the gateway goes idle (whisper.cpp
  stops at its next graph, but the log-mel of the whole clip, computed first, cannot be
  interrupted), and the time a 1 s clip takes right after.

- ``idle_connections``: ``/health`` latency from another LAN client (127.0.0.3) and from the box
  (127.0.0.1) with no load, then while one client (127.0.0.2) holds 1,000 idle connections.
- ``concurrent_transcriptions``: 50 transcriptions at once of 1-4 s clips in wav, flac, ogg and
  mp3 at varied rates and channel counts, queued for one model (``max_queue = 64``): how many
  answer 200 within 120 s, and how fast.

A section is a function ``(args) -> None`` listed in ``SECTIONS``; add a new one there with the
helpers below.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _procs import spawn_fake_openai, spawn_gateway, stop, wait_healthy  # noqa: E402

from tests.audio_bombs import (  # noqa: E402
    encode,
    lying_flac,
    silence_flac,
    tone,
    wav_claiming_more,
)
from tests.procstat import peak_rss, reset_peak_rss, seconds_until_idle  # noqa: E402

MiB = 1024 * 1024
NO_CACHE = {"Cache-Control": "no-cache, no-store"}
WHISPER = ROOT / "models" / "ggml-tiny.en.bin"


# -- helpers any section may use ---------------------------------------------------------------


@contextmanager
def gateway(config_text: str):
    """A gateway child process with this config, healthy; yields (proc, url)."""
    with tempfile.TemporaryDirectory() as tmp:
        text = f'[server]\nlog_level = "warning"\ndata_dir = "{tmp}/data"\n' + config_text
        proc, url = spawn_gateway(text, Path(tmp))
        try:
            wait_healthy(url)
            yield proc, url
        finally:
            stop(proc)


def post_audio(url: str, data: bytes, name: str, **form: str) -> tuple[requests.Response, float]:
    """One transcription request; returns the response and the seconds it took."""
    t0 = time.perf_counter()
    r = requests.post(url + "/v1/audio/transcriptions", headers=NO_CACHE, timeout=600,
                      data={"model": "whisper-1", **form},
                      files={"file": (name, data, "application/octet-stream")})  # fmt: skip
    return r, time.perf_counter() - t0


def measure(proc: Any, url: str, data: bytes, name: str, runs: int) -> dict[str, Any]:
    """Median time and largest peak-RSS growth over ``runs`` uploads of ``data``."""
    times, grew, status, message = [], [], 0, ""
    for _ in range(runs):
        before = reset_peak_rss(proc.pid)
        r, took = post_audio(url, data, name)
        grew.append(peak_rss(proc.pid) - before)
        times.append(took)
        status = r.status_code
        message = r.json().get("error", {}).get("message", "") if status != 200 else "ok"
    return {"status": status, "s": statistics.median(times), "rss": max(grew), "msg": message}


def row(case: str, size: int, m: dict[str, Any]) -> None:
    print(f"  {case:<44} {size / MiB:7.2f} MB  {m['status']}  {m['s']:7.3f} s  "
          f"+{m['rss'] / MiB:7.1f} MiB  {m['msg'][:70]}")  # fmt: skip


def whisper_toml() -> str:
    if WHISPER.exists():
        return f'[local.stt.models]\n"whisper-tiny.en" = "{WHISPER}"\n'
    from tests.synth_whisper import make_synthetic_whisper

    path = make_synthetic_whisper(Path(tempfile.mkdtemp()) / "ggml-synth.bin")
    return f'[local.stt.models]\nsynth = "{path}"\n'


# -- sections ----------------------------------------------------------------------------------


def audio_bombs(args: argparse.Namespace) -> None:
    print("audio bombs: status, median time to answer, peak RSS growth of the gateway")
    t0 = time.perf_counter()
    bomb = silence_flac(1800, channels=8, rate=48000)
    mp3 = encode(tone(1740, 16000), 16000, "MP3", "MPEG_LAYER_III")
    print(f"  (made the uploads in {time.perf_counter() - t0:.1f} s)")
    cases = [
        ("30 min 8 ch 48 kHz silence (FLAC)", bomb, "bomb.flac"),
        ("FLAC header claiming 2^36 samples", lying_flac(), "lie.flac"),
        ("WAV header claiming 4 GB (1 s sent)", wav_claiming_more(1.0), "lie.wav"),
        ("valid 29 min MP3", mp3, "long.mp3"),
    ]
    normal = encode(tone(1.0), 16000, "WAV", "PCM_16")
    with gateway(whisper_toml()) as (proc, url):
        post_audio(url, normal, "warm.wav")  # load the model first: its memory is not the bomb's
        print(f"  default limits (max_audio_s = 600), local whisper loaded; RSS "
              f"{peak_rss(proc.pid) / MiB:.0f} MiB")  # fmt: skip
        row("a normal 1 s WAV (for comparison)", len(normal),
            measure(proc, url, normal, "normal.wav", args.runs))  # fmt: skip
        for case, data, name in cases:
            row(case, len(data), measure(proc, url, data, name, args.runs))
    fake, fake_url = spawn_fake_openai()
    try:
        cfg = (f'[[providers]]\nname = "fake"\ntype = "openai"\nbase_url = "{fake_url}"\n'
               f'api_key = "sk-bench"\nmodels = ["whisper-1"]\n'
               f'[local.stt]\nmax_audio_s = 1800\n')  # fmt: skip
        with gateway(cfg) as (proc, url):
            print("  max_audio_s = 1800, decoded here, then sent to a fake cloud upstream")
            row(cases[0][0], len(bomb), measure(proc, url, bomb, "bomb.flac", args.runs))
            row(cases[3][0], len(mp3), measure(proc, url, mp3, "long.mp3", args.runs))
    finally:
        stop(fake)


def audio_deadline(args: argparse.Namespace) -> None:
    print("audio deadline: a 29 min MP3, request_timeout_s = 10, max_audio_s = 1800")
    mp3 = encode(tone(1740, 16000), 16000, "MP3", "MPEG_LAYER_III")
    short = encode(tone(1.0), 16000, "WAV", "PCM_16")
    cfg = "request_timeout_s = 10\n[local.stt]\nmax_audio_s = 1800\n" + whisper_toml()
    with gateway(cfg) as (proc, url):
        post_audio(url, short, "warm.wav")  # load the model first
        for _ in range(args.runs):
            r, took = post_audio(url, mp3, "long.mp3")
            idle = seconds_until_idle(proc.pid, 120, window_s=0.25)
            r2, after = post_audio(url, short, "short.wav")
            print(f"  {r.status_code} after {took:6.2f} s; whisper.cpp done {idle:5.2f} s later; "
                  f"then a 1 s clip: {r2.status_code} in {after:.2f} s")  # fmt: skip


def idle_connections(args: argparse.Namespace) -> None:
    import resource

    from idle_flood import one_health, open_flood, report

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 1300)), hard))
    print("idle connections: /health while 127.0.0.2 holds 1,000 idle sockets")
    with gateway("") as (_proc, url):
        port = int(url.rsplit(":", 1)[1])
        for source in ("127.0.0.3", "127.0.0.1"):
            report(
                f"no flood, /health from {source}", [one_health(port, source) for _ in range(20)]
            )
        flood: list[Any] = []
        try:
            flood = open_flood(port, 1000)
            time.sleep(1)
            closed = sum(1 for s in flood if _closed_by_peer(s))
            print(f"  {len(flood)} opened from 127.0.0.2, {closed} closed by the gateway at accept")
            for source in ("127.0.0.3", "127.0.0.1"):
                report(
                    f"flood, /health from {source}", [one_health(port, source) for _ in range(20)]
                )
        finally:
            for s in flood:
                s.close()


def _closed_by_peer(sock: Any) -> bool:
    """Whether the gateway closed this idle socket (EOF, or the short 503 it sends first)."""
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return False  # nothing to read and still open: an idle connection the gateway holds
    except OSError:
        pass
    return True


def concurrent_transcriptions(args: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor

    clips = []
    for i in range(50):
        rate = (8000, 16000, 22050, 44100, 48000)[i % 5]
        fmt, sub, ext = (("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"),
                         ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3"))[i % 4]  # fmt: skip
        mono = tone(1 + i % 4, rate)
        samples = mono if i % 2 == 0 else np.stack([mono, mono], axis=1)
        clips.append((encode(samples, rate, fmt, sub), ext))
    print(f"concurrent transcriptions: 50 at once (max_queue 64, so none is refused), "
          f"{args.runs} round(s)")  # fmt: skip
    with gateway("[local.stt]\nmax_queue = 64\n" + whisper_toml()) as (_proc, url):
        post_audio(url, clips[0][0], "warm.wav")  # the model loaded once, first
        for _ in range(args.runs):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(50) as pool:
                done = list(pool.map(lambda c: _timed_post(url, *c), clips))
            ok = sorted(t for status, t in done if status == 200)
            print(f"  {len(ok)}/50 answered 200 in {time.perf_counter() - t0:.1f} s; "
                  f"p50 {statistics.median(ok) if ok else 0:.2f} s, max {ok[-1] if ok else 0:.2f} s; "
                  f"others: {sorted(status for status, _ in done if status != 200)}")  # fmt: skip


def _timed_post(url: str, data: bytes, ext: str) -> tuple[int, float]:
    try:
        r = requests.post(url + "/v1/audio/transcriptions", headers=NO_CACHE, timeout=120,
                          data={"model": "whisper-1"},
                          files={"file": (f"clip.{ext}", data, "application/octet-stream")})  # fmt: skip
    except requests.RequestException:
        return 0, 120.0
    return r.status_code, r.elapsed.total_seconds()


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "audio_bombs": audio_bombs,
    "audio_deadline": audio_deadline,
    "idle_connections": idle_connections,
    "concurrent_transcriptions": concurrent_transcriptions,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="requests per case (median time)")
    ap.add_argument("--only", default="", help=f"comma-separated: {', '.join(SECTIONS)}")
    args = ap.parse_args()
    chosen = [s for s in args.only.split(",") if s] or list(SECTIONS)
    for name in chosen:
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
        SECTIONS[name](args)
        print()


if __name__ == "__main__":
    main()
