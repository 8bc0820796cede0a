"""Many transcriptions and syntheses at once through the real gateway: every one answers.

After ``monkey.patch_all()`` soundfile's module-level error lock was a gevent lock; decoding
threads met on it and some requests never answered while ``/v1/health`` said all was idle.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.synth_piper import make_voice
from tests.synth_whisper import make_synthetic_whisper

CONCURRENCY = 50
ROUNDS = 5
# Per request: idle, the slowest answer of a round takes about 10 s on 2 cores. A request caught
# in the deadlock this guards against stays stuck until later traffic happens to free it, or
# forever, so the bound must stay well below "eventually".
ANSWER_WITHIN_S = 60.0
STT_MODELS = ("whisper-1", "synth1", "synth2")  # three whisper slots; whisper-1 is synth0


@pytest.fixture(scope="module")
def speech_gw(tmp_path_factory):
    from tests.conftest import GatewayProcess

    d = tmp_path_factory.mktemp("concurrent-speech")
    voice = make_voice(str(d), name="tiny")
    whisper = [make_synthetic_whisper(d / f"ggml-synth{i}.bin", seed=i) for i in range(3)]
    # Queues long enough that every request is served, not turned away with 429.
    cfg = f"""
[server]
max_audio_bytes = 4000000
[local.stt]
max_queue = 64
[local.stt.models]
synth0 = "{whisper[0]}"
synth1 = "{whisper[1]}"
synth2 = "{whisper[2]}"
[local.tts]
default_voice = "tiny"
max_queue = 64
[local.tts.voices]
tiny = "{voice}"
"""
    with GatewayProcess(cfg, d) as gw:
        yield gw


def clip(i: int) -> tuple[bytes, str, str]:
    """A short clip that differs by index: format, rate, channels, length, content."""
    # Ogg Vorbis is the slowest to open, so decoding threads meet most often on its lock.
    ogg = ("OGG", "VORBIS", "ogg", "audio/ogg")
    fmts = [ogg, ("WAV", "PCM_16", "wav", "audio/wav"), ogg, ogg, ("FLAC", "PCM_16", "flac",
            "audio/flac"), ogg, ogg, ("MP3", "MPEG_LAYER_III", "mp3", "audio/mpeg"), ogg, ogg,
            ("WAV", "FLOAT", "wav", "audio/wav"), ogg]  # fmt: skip
    fmt, subtype, ext, ctype = fmts[i % len(fmts)]
    rate = (8000, 16000, 22050, 44100, 48000)[(i // 5) % 5]
    channels = 1 + i % 2
    # Ogg clips are longer: libsndfile reads an Ogg file through to its end while it opens it.
    seconds = (1.0 if fmt == "OGG" else 0.2) + (i % 7) * 0.3
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t)
    buf = io.BytesIO()
    sf.write(buf, np.stack([tone] * channels, axis=1), rate, format=fmt, subtype=subtype)
    return buf.getvalue(), f"clip{i}.{ext}", ctype


def one_request(url: str, i: int) -> tuple[int, int, float]:
    """(index, status, seconds) of a transcription (two in three) or a synthesis."""
    started = time.monotonic()
    # Each request sends its own text or audio and bypasses the cache: all of them do the work.
    headers = {"Cache-Control": "no-cache, no-store"}
    if i % 3 != 2:
        data, name, ctype = clip(i)
        r = requests.post(url + "/v1/audio/transcriptions", headers=headers,
                          data={"model": STT_MODELS[(i // 3) % 3], "response_format": "json"},
                          files={"file": (name, data, ctype)}, timeout=ANSWER_WITHIN_S)  # fmt: skip
        ok = r.status_code == 200 and isinstance(r.json().get("text"), str)
    else:
        fmt = ("wav", "pcm", "flac", "mp3", "opus")[i % 5]
        text = f"Request number {i}. " * (1 + i % 4)
        r = requests.post(url + "/v1/audio/speech", headers=headers,
                          json={"model": "tts-1", "voice": "alloy", "input": text,
                                "response_format": fmt}, timeout=ANSWER_WITHIN_S)  # fmt: skip
        ok = r.status_code == 200 and len(r.content) > 0
    return i, (r.status_code if ok else -r.status_code), time.monotonic() - started


def assert_pools_go_idle(url: str, within_s: float = 5.0) -> None:
    """Once every answer is in, no job is left in a thread (the last stream ends just after)."""
    deadline = time.monotonic() + within_s
    while True:
        pools = requests.get(url + "/v1/health", timeout=5).json()["workers"]
        if all(p["busy"] == 0 and p["queued"] == 0 for p in pools.values()):
            break
        assert time.monotonic() < deadline, f"threads still held after every answer: {pools}"
        time.sleep(0.1)
    assert all(p["stuck"] == 0 for p in pools.values()), pools


def test_fifty_concurrent_transcriptions_and_syntheses_all_answer(speech_gw):
    worst = 0.0
    for rnd in range(ROUNDS):
        with ThreadPoolExecutor(CONCURRENCY) as ex:
            futures = [ex.submit(one_request, speech_gw.url, rnd * CONCURRENCY + i)
                       for i in range(CONCURRENCY)]  # fmt: skip
            # A hung request raises requests' ReadTimeout here: the test fails, it does not hang.
            results = [f.result() for f in futures]
        bad = [(i, status) for i, status, _ in results if status != 200]
        assert not bad, f"round {rnd}: failed requests {bad}\n{speech_gw.log[-3000:]}"
        worst = max(worst, *(s for _, _, s in results))
        print(f"round {rnd}: slowest answer {max(s for _, _, s in results):.2f} s")
        assert_pools_go_idle(speech_gw.url)
    assert worst < ANSWER_WITHIN_S
    assert "Traceback" not in speech_gw.log, speech_gw.log[-3000:]
