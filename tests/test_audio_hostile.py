"""Hostile audio through the real gateway: bombs, lying headers, over-long clips, deadlines.

Memory is the gateway's own peak RSS (VmHWM in /proc/PID/status), reset through
/proc/PID/clear_refs before each upload so an earlier peak cannot hide a new one.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile

from tests.audio_bombs import encode, lying_flac, silence_flac, tone, wav_claiming_more
from tests.conftest import openai_provider_toml
from tests.procstat import peak_rss, reset_peak_rss, seconds_until_idle
from tests.synth_piper import make_voice
from tests.synth_whisper import make_synthetic_whisper

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
NO_CACHE = {"Cache-Control": "no-cache, no-store"}


def transcribe(gw, data: bytes, name: str = "a.flac", **form):
    fields = {"model": "whisper-1", **form}
    return requests.post(gw.url + "/v1/audio/transcriptions", data=fields, headers=NO_CACHE,
                         files={"file": (name, data, "application/octet-stream")},
                         timeout=120)  # fmt: skip


def assert_clean_400(r, *needles: str, code: str | None = None) -> dict:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "file"
    for needle in needles:
        assert needle in err["message"], err["message"]
    if code:
        assert err["code"] == code
    return err


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """30 minutes of 8-channel 48 kHz silence: about 0.7 MB of FLAC, 2.7 GB as float32."""
    return silence_flac(1800, channels=8, rate=48000)


@pytest.fixture(scope="module")
def whisper_path(tmp_path_factory) -> Path:
    return make_synthetic_whisper(tmp_path_factory.mktemp("stt") / "ggml-synth.bin")


def stt_config(whisper: Path, extra_stt: str = "", server: str = "") -> str:
    return f"""
[server]
{server}
[local.stt]
{extra_stt}
[local.stt.models]
synth = "{whisper}"
"""


def test_silence_bomb_is_refused_at_once_by_the_default_limit(gateway_factory, whisper_path, bomb):
    gw = gateway_factory(stt_config(whisper_path))
    assert len(bomb) < 1 * MiB
    before = reset_peak_rss(gw.proc.pid)
    started = time.monotonic()
    r = transcribe(gw, bomb)
    took = time.monotonic() - started
    assert_clean_400(r, "limit of 600 s", "local.stt.max_audio_s", "header says 1800 s",
                     code="audio_too_long")  # fmt: skip
    assert took < 5, took
    assert peak_rss(gw.proc.pid) - before < 100 * MiB
    assert requests.get(gw.url + "/health", timeout=5).ok
    assert "Traceback" not in gw.log


def test_silence_bomb_decodes_in_bounded_memory_when_allowed(gateway_factory, fake_openai, bomb):
    # No local model: the upload is still decoded here (to validate it and count its seconds),
    # then goes to the fake cloud. The 16 kHz output alone is 1800 s x 64 KB = 110 MiB.
    gw = gateway_factory(openai_provider_toml(fake_openai, models='["whisper-1"]')
                         + "[local.stt]\nmax_audio_s = 1800\n")  # fmt: skip
    before = reset_peak_rss(gw.proc.pid)
    r = transcribe(gw, bomb)
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "cloud transcript" and r.headers["X-Hoosh-Provider"] == "fake"
    grew = peak_rss(gw.proc.pid) - before
    output = 1800 * 16000 * 4
    # Decoding the whole file at once, as before, took +3.7 GB.
    assert grew < output + 100 * MiB, grew / MiB


def test_flac_header_claiming_2_36_samples_is_a_400(gateway_factory, whisper_path):
    gw = gateway_factory(stt_config(whisper_path))
    data = lying_flac()  # 1 s of tone; STREAMINFO says 2^36 - 1 samples
    assert len(data) < 40_000
    before = reset_peak_rss(gw.proc.pid)
    r = transcribe(gw, data)
    assert_clean_400(r, "header says 4294967 s", "local.stt.max_audio_s", code="audio_too_long")
    assert peak_rss(gw.proc.pid) - before < 50 * MiB
    # A claim under the limit whose data runs out is a 400 too, never a 500.
    r = transcribe(gw, lying_flac(16000 * 500))
    assert_clean_400(r, "truncated or does not match its header", code="audio_truncated")
    assert requests.get(gw.url + "/health", timeout=5).ok
    assert "Traceback" not in gw.log


def test_wav_claiming_more_data_than_sent_decodes_what_is_there(gateway_factory, whisper_path):
    gw = gateway_factory(stt_config(whisper_path))
    r = transcribe(gw, wav_claiming_more(1.5), "a.wav", response_format="verbose_json")
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(1.5, abs=0.01)
    assert "Traceback" not in gw.log


def test_max_audio_s_is_a_400_naming_the_limit(gateway_factory, whisper_path):
    gw = gateway_factory(stt_config(whisper_path, "max_audio_s = 2"))
    r = transcribe(gw, encode(tone(3.0), 16000, "WAV", "PCM_16"), "a.wav")
    assert_clean_400(r, "limit of 2 s (local.stt.max_audio_s)", code="audio_too_long")
    # An Ogg's length is checked while decoding as well as from its header.
    r = transcribe(gw, encode(tone(3.0), 16000, "OGG", "VORBIS"), "a.ogg")
    assert_clean_400(r, "limit of 2 s (local.stt.max_audio_s)")
    r = transcribe(gw, encode(tone(1.5), 16000, "WAV", "PCM_16"), "a.wav")
    assert r.status_code == 200, r.text


def test_deadline_during_transcription_is_504_and_frees_the_model(gateway_factory, whisper_path):
    # The synthetic model needs about 13 s per minute of silence on an idle 2-core machine.
    gw = gateway_factory(stt_config(whisper_path, server="request_timeout_s = 4"))
    long_clip = silence_flac(120, channels=1, rate=16000)
    started = time.monotonic()
    r = transcribe(gw, long_clip)
    took = time.monotonic() - started
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert err["code"] == "deadline_exceeded" and "server.request_timeout_s" in err["message"]
    assert took < 4 + 1.5, took
    # whisper.cpp has stopped within one of its graphs: the process goes idle, instead of
    # computing on in a pool thread for the 20 s or more the clip needs.
    assert seconds_until_idle(gw.proc.pid, limit_s=10) < 5
    # And the model is free for the next request.
    r = transcribe(gw, encode(tone(1.0), 16000), response_format="verbose_json")
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(1.0)
    assert "Traceback" not in gw.log


def test_max_input_chars_is_a_400_naming_the_limit(gateway_factory, tmp_path):
    voice = make_voice(str(tmp_path), name="tiny")
    gw = gateway_factory(
        f'[local.tts]\nmax_input_chars = 40\n[local.tts.voices]\ntiny = "{voice}"\n'
    )
    body = {"model": "tts-1", "voice": "tiny", "response_format": "pcm"}
    r = requests.post(gw.url + "/v1/audio/speech", json={**body, "input": "x" * 41}, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "input" and "limit is 40 (local.tts.max_input_chars)" in err["message"]
    r = requests.post(gw.url + "/v1/audio/speech", json={**body, "input": "Hi there."}, timeout=10)
    assert r.status_code == 200 and len(r.content) > 0


# -- synthesis that outlives its request: the real joe voice, ~0.35 s a sentence here -----------

LONG_TEXT = " ".join(
    f"Sentence number {i} is read out loud by the kitchen speaker." for i in range(60)
)


@pytest.fixture
def joe_gw(gateway_factory):
    voice = ROOT / "models" / "en_US-joe-medium.onnx"
    assert voice.exists(), "run scripts/setup to pull the joe voice"

    def make(timeout_s: float):
        return gateway_factory(f'[server]\nrequest_timeout_s = {timeout_s}\n'
                               f'[local.tts.voices]\njoe = "{voice}"\n')  # fmt: skip

    return make


def speak(gw, text: str, **kw):
    body = {"model": "tts-1", "voice": "joe", "input": text, "response_format": "pcm"}
    return requests.post(gw.url + "/v1/audio/speech", json=body, headers=NO_CACHE, **kw)


def time_to_speak(gw, text: str = "The door is locked.") -> float:
    started = time.monotonic()
    r = speak(gw, text, timeout=60)
    assert r.status_code == 200 and len(r.content) > 1000
    return time.monotonic() - started


@pytest.mark.slow
def test_speech_stops_at_the_deadline_and_frees_the_voice(joe_gw):
    gw = joe_gw(3)
    time_to_speak(gw)  # load the voice first: the deadline is for synthesis
    started = time.monotonic()
    r = speak(gw, LONG_TEXT, timeout=60)
    took = time.monotonic() - started
    assert r.status_code == 200 and len(r.content) > 0  # headers went out with the first sentence
    rate = int(r.headers["X-Hoosh-Sample-Rate"])
    assert took < 3 + 3, took  # all 60 sentences take 20 s or more here; one sentence, 0.35 s
    spoken_s = len(r.content) / 2 / rate
    assert spoken_s < 60 * 2.0, spoken_s  # far from the whole text (about 4 s of audio each)
    assert time_to_speak(gw) < 6  # not queued behind the rest of the long text
    assert "speech stopped at server.request_timeout_s" in gw.log
    assert "Traceback" not in gw.log


@pytest.mark.slow
def test_speech_stops_when_the_client_goes_away(joe_gw):
    gw = joe_gw(600)
    time_to_speak(gw)
    with speak(gw, LONG_TEXT, stream=True, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_content(4096))
    # The connection is closed now; the next write fails and the stream stops between sentences.
    time.sleep(0.5)
    assert time_to_speak(gw) < 6  # the long text alone needs 20 s or more
    assert "Traceback" not in gw.log


def test_helpers_make_what_they_say() -> None:
    info = soundfile.info(io.BytesIO(lying_flac()))
    assert info.frames == (1 << 36) - 1
    data, rate = soundfile.read(io.BytesIO(silence_flac(12, channels=2, rate=8000)))
    assert rate == 8000 and data.shape == (96000, 2) and not np.any(data)


def test_audio_limits_are_read_and_checked_in_config() -> None:
    from hoosh_edge.config import ConfigError, parse_config

    default = parse_config({}, env={})
    assert default.stt.max_audio_s == 600 and default.tts.max_input_chars == 4096
    cfg = parse_config({"local": {"stt": {"max_audio_s": 90.5}, "tts": {"max_input_chars": 200}}},
                       env={})  # fmt: skip
    assert cfg.stt.max_audio_s == 90.5 and cfg.tts.max_input_chars == 200
    for bad, needle in (({"stt": {"max_audio_s": 0}}, "local.stt.max_audio_s"),
                        ({"stt": {"max_audio_s": "long"}}, "local.stt.max_audio_s"),
                        ({"tts": {"max_input_chars": 0}}, "local.tts.max_input_chars"),
                        ({"llm": {"max_audio_s": 10}}, "unknown key 'local.llm.max_audio_s'"),
                        ({"stt": {"max_input_chars": 10}}, "unknown key")):  # fmt: skip
        with pytest.raises(ConfigError, match=needle):
            parse_config({"local": bad}, env={})
