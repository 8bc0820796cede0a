"""Speech speed: whisper.cpp and Piper called directly in-process vs. through the gateway over HTTP.

    .venv/bin/python benchmarks/speech.py [--runs 5] [--threads N]

Starts a gateway child process on loopback with the real whisper tiny.en and the joe voice from
``models/`` (``.venv/bin/hoosh-edge models pull whisper-tiny.en`` and ``... pull joe``), loads the
same two files here with the same thread counts, and prints, as medians of ``--runs`` alternated
runs:

- transcription real-time factor (processing time / audio duration) of a ~6 s and a ~25 s clip;
- synthesis real-time factor of the same two texts (``response_format=pcm``, whole body);
- time to the first audio byte of ``/v1/audio/speech`` for three sentences (streamed ``pcm`` and
  ``wav``) vs. the time the engine needs for the first sentence.

The clips are made by Piper from fixed text at start-up, so no audio file ships. Every request
sends ``Cache-Control: no-cache, no-store`` and the run stops if ``X-Hoosh-Cache`` is not BYPASS.
Ratios are gateway speed / direct speed (goal >= 0.95), the median over rounds of each round's
direct time / gateway time, since the two paths of one round see the same background load.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
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

from hoosh_edge.backends.engines.audio_in import decode_audio  # noqa: E402
from hoosh_edge.backends.engines.piper import PiperVoice  # noqa: E402
from hoosh_edge.backends.engines.whisper import WhisperModel  # noqa: E402

WHISPER = ROOT / "models" / "ggml-tiny.en.bin"
VOICE = ROOT / "models" / "en_US-joe-medium.onnx"
PAUSE_S = 0.2
NO_CACHE = {"Cache-Control": "no-cache, no-store"}

TEXTS = {
    "~6 s": (
        "The little robot walked into the kitchen, switched on the old stove and put a big pot "
        "of water on to boil for the soup."
    ),
    "~25 s": (
        "Every morning the little robot walked into the kitchen and switched on the old stove. "
        "It chopped carrots, onions and potatoes into small even pieces, and dropped them into a "
        "pot of boiling water. While the soup was cooking, it swept the floor, watered the plants "
        "by the window and read the weather report for the day. When the soup was ready, it "
        "poured a bowl for each of its friends, set the table with care, and waited by the door for "
        "them to come home."
    ),
}
# Three sentences of similar length, each long enough that the splitter keeps it on its own.
THREE = (
    "The kitchen lights are now switched off for the night. "
    "The front door has been locked and the alarm is set. "
    "Tomorrow will be sunny with a gentle breeze from the west."
)


def default_threads() -> int:
    """What whisper.cpp would pick by itself here: the usable cores, at most four."""
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:
        return max(1, min(4, os.cpu_count() or 1))


def start_gateway(tmp: Path, threads: int) -> tuple[subprocess.Popen, str]:
    """A gateway with only the two speech models, loaded at the given thread counts."""
    proc, url = spawn_gateway(
        f"""
[server]
log_level = "warning"
data_dir = "{tmp / "data"}"
models_dir = "{tmp / "no-models"}"
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
""",
        tmp,
    )
    wait_healthy(url)
    return proc, url


def vm_hwm_mib(pid: int) -> float:
    """Peak resident memory of a process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def checked(r: requests.Response) -> requests.Response:
    """Stop the run if the answer is an error, came from the cache or not from the device."""
    if r.status_code != 200:
        raise SystemExit(f"gateway answered {r.status_code}: {r.text[:300]}")
    cache, provider = r.headers.get("X-Hoosh-Cache"), r.headers.get("X-Hoosh-Provider")
    if cache != "BYPASS" or provider != "local":
        raise SystemExit(f"X-Hoosh-Cache {cache!r}, X-Hoosh-Provider {provider!r}: not measuring "
                         "the local engine")  # fmt: skip
    return r


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


class Paths:
    """The same work done directly and through the gateway; each call returns (seconds, result)."""

    def __init__(self, model: WhisperModel, voice: PiperVoice, url: str) -> None:
        self.model, self.voice, self.url = model, voice, url
        self.session = requests.Session()

    def stt_direct(self, wav: bytes) -> tuple[float, str]:
        # Decoding and resampling are part of the job: the gateway gets the same WAV bytes.
        t0 = time.perf_counter()
        samples = decode_audio(wav).samples
        text = self.model.transcribe(samples, temperature=0.0).text
        return time.perf_counter() - t0, text

    def stt_http(self, wav: bytes) -> tuple[float, str]:
        t0 = time.perf_counter()
        r = self.session.post(self.url + "/v1/audio/transcriptions", headers=NO_CACHE,
                              files={"file": ("clip.wav", wav, "audio/wav")},
                              data={"model": "whisper-tiny.en", "temperature": "0"})  # fmt: skip
        elapsed = time.perf_counter() - t0
        return elapsed, checked(r).json()["text"]

    def tts_direct(self, text: str) -> tuple[float, float]:
        """(seconds, audio seconds made)."""
        t0 = time.perf_counter()
        pcm = self.voice.synthesize(text)
        return time.perf_counter() - t0, len(pcm) / 2 / self.voice.sample_rate

    def tts_http(self, text: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        r = self.session.post(self.url + "/v1/audio/speech", headers=NO_CACHE,
                              json={"model": "piper", "voice": "joe", "input": text,
                                    "response_format": "pcm"})  # fmt: skip
        elapsed = time.perf_counter() - t0
        rate = int(checked(r).headers["X-Hoosh-Sample-Rate"])
        return elapsed, len(r.content) / 2 / rate

    def first_direct(self, text: str) -> tuple[float, float]:
        """(seconds to the first sentence's PCM, seconds for all of it)."""
        t0 = time.perf_counter()
        stream = self.voice.synthesize_stream(text)
        next(stream)
        first = time.perf_counter() - t0
        for _ in stream:
            pass
        return first, time.perf_counter() - t0

    def first_http(self, text: str, fmt: str) -> tuple[float, float]:
        """(seconds to the first body byte, seconds to the last)."""
        t0 = time.perf_counter()
        body = {"model": "piper", "voice": "joe", "input": text, "response_format": fmt}
        with self.session.post(self.url + "/v1/audio/speech", headers=NO_CACHE, json=body,
                               stream=True) as r:  # fmt: skip
            checked(r)
            chunks = r.iter_content(chunk_size=None)
            next(chunks)
            first = time.perf_counter() - t0
            for _ in chunks:
                pass
        return first, time.perf_counter() - t0


def alternate(calls: dict[str, Callable[[], tuple[float, object]]], runs: int) -> dict[str, list]:
    """Run each call once to warm it, then ``runs`` rounds in turn so noise hits all alike."""
    for call in calls.values():
        call()
    out: dict[str, list] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            # onnxruntime's and ggml's workers spin for a moment after a job; let the other
            # process's finish spinning before this one is timed.
            time.sleep(PAUSE_S)
            out[name].append(call())
    return out


def med(results: list, i: int = 0) -> float:
    return statistics.median(r[i] for r in results)


def paired(direct: list[float], gateway: list[float]) -> float:
    """Median over rounds of direct time / gateway time: neighbours share the machine's noise."""
    return statistics.median(d / g for d, g in zip(direct, gateway, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="whisper.cpp and onnxruntime threads, on both paths")  # fmt: skip
    args = ap.parse_args()
    for f in (WHISPER, VOICE, Path(str(VOICE) + ".json")):
        if not f.is_file():
            sys.exit(f"missing {f.relative_to(ROOT)}: run .venv/bin/hoosh-edge models pull "
                     "whisper-tiny.en && .venv/bin/hoosh-edge models pull joe")  # fmt: skip
    model = WhisperModel.load(str(WHISPER), args.threads)
    voice = PiperVoice.load(str(VOICE), args.threads)
    clips = {name: wav_bytes(voice.synthesize(text), voice.sample_rate)
             for name, text in TEXTS.items()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        gw, url = start_gateway(Path(tmp), args.threads)
        try:
            p = Paths(model, voice, url)
            print(f"whisper tiny.en + piper joe-medium, {args.threads} threads on both paths, "
                  f"{args.runs} runs (medians), load average {os.getloadavg()[0]:.2f}")  # fmt: skip
            print("\nspeech-to-text (WAV upload, decode + transcribe)")
            print(f"{'clip':>6} {'audio s':>7} | {'direct ms':>9} {'RTF':>5} | "
                  f"{'gateway ms':>10} {'RTF':>5} | {'speed ratio':>11} {'same text':>9}")  # fmt: skip
            heard = {}
            for name, wav in clips.items():
                secs = decode_audio(wav).duration_s
                res = alternate({"d": lambda w=wav: p.stt_direct(w),
                                 "g": lambda w=wav: p.stt_http(w)}, args.runs)  # fmt: skip
                d, g = med(res["d"]), med(res["g"])
                ratio = paired([r[0] for r in res["d"]], [r[0] for r in res["g"]])
                same = {r[1] for r in res["d"]} == {r[1] for r in res["g"]}
                heard[name] = res["g"][0][1]
                print(f"{name:>6} {secs:>7.1f} | {d * 1e3:>9.0f} {d / secs:>5.3f} | "
                      f"{g * 1e3:>10.0f} {g / secs:>5.3f} | {ratio:>11.3f} {str(same):>9}")  # fmt: skip
            for name, text in heard.items():
                print(f"  heard ({name}): {text[:100]!r}")

            print("\ntext-to-speech (response_format=pcm, whole body)")
            print(f"{'text':>6} {'chars':>5} | {'direct ms':>9} {'audio s':>7} {'RTF':>5} | "
                  f"{'gateway ms':>10} {'audio s':>7} {'RTF':>5} | {'speed ratio':>11}")  # fmt: skip
            for name, text in TEXTS.items():
                res = alternate({"d": lambda t=text: p.tts_direct(t),
                                 "g": lambda t=text: p.tts_http(t)}, args.runs)  # fmt: skip
                # Piper's duration noise makes each take a little longer or shorter: use each
                # run's own audio length.
                d_rtfs, g_rtfs = [s / a for s, a in res["d"]], [s / a for s, a in res["g"]]
                d_rtf, g_rtf = statistics.median(d_rtfs), statistics.median(g_rtfs)
                print(f"{name:>6} {len(text):>5} | {med(res['d']) * 1e3:>9.0f} "
                      f"{med(res['d'], 1):>7.1f} {d_rtf:>5.3f} | {med(res['g']) * 1e3:>10.0f} "
                      f"{med(res['g'], 1):>7.1f} {g_rtf:>5.3f} | {paired(d_rtfs, g_rtfs):>11.3f}")  # fmt: skip

            print(f"\ntime to first audio, three sentences ({len(THREE)} chars), streamed")
            print(f"{'path':>13} | {'first ms':>8} {'all ms':>7} | {'added first ms':>14} "
                  f"{'first ratio':>11}")  # fmt: skip
            res = alternate({"direct": lambda: p.first_direct(THREE),
                             "gateway pcm": lambda: p.first_http(THREE, "pcm"),
                             "gateway wav": lambda: p.first_http(THREE, "wav")},
                            args.runs)  # fmt: skip
            for name, rs in res.items():
                f, a = med(rs), med(rs, 1)
                added = statistics.median(g[0] - d[0] for g, d in zip(rs, res["direct"],
                                                                      strict=True))  # fmt: skip
                ratio = paired([d[0] for d in res["direct"]], [g[0] for g in rs])
                print(f"{name:>13} | {f * 1e3:>8.0f} {a * 1e3:>7.0f} | {added * 1e3:>+14.1f} "
                      f"{ratio:>11.3f}")  # fmt: skip
            print(f"\npeak RSS (VmHWM): gateway {vm_hwm_mib(gw.pid):.0f} MiB, this process "
                  f"{vm_hwm_mib(os.getpid()):.0f} MiB; load average "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
        finally:
            stop(gw)
            model.close()
            voice.close()


if __name__ == "__main__":
    main()
