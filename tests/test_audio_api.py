"""The OpenAI audio endpoints through the gateway: tiny synthetic models, then the real ones."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import openai
import pytest
import requests
import soundfile as sf

from tests.conftest import require
from tests.synth_piper import make_voice
from tests.synth_whisper import make_synthetic_whisper

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def synth_gw(tmp_path_factory):
    from tests.conftest import GatewayProcess

    d = tmp_path_factory.mktemp("speech")
    voice = make_voice(str(d), name="tiny")
    whisper = make_synthetic_whisper(d / "ggml-synth.bin")
    cfg = f"""
[server]
max_audio_bytes = 2000000
[local.stt.models]
synth = "{whisper}"
[local.tts]
default_voice = "tiny"
[local.tts.voices]
tiny = "{voice}"
"""
    with GatewayProcess(cfg, d) as gw:
        yield gw


def wav_bytes(
    seconds: float = 1.0, rate: int = 44100, channels: int = 2, subtype: str = "PCM_24"
) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    data = np.stack([tone] * channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def speak(gw, **body):
    payload = {"model": "tts-1", "voice": "alloy", "input": "Hello there. How are you?", **body}
    return requests.post(gw.url + "/v1/audio/speech", json=payload, timeout=30)


@pytest.mark.parametrize("fmt,ctype,magic", [
    ("wav", "audio/wav", b"RIFF"), ("mp3", "audio/mpeg", None), ("flac", "audio/flac", b"fLaC"),
    ("opus", "audio/ogg", b"OggS"), ("pcm", "audio/pcm", None)])  # fmt: skip
def test_speech_formats(synth_gw, fmt, ctype, magic):
    r = speak(synth_gw, response_format=fmt)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith(ctype)
    assert r.headers["X-Hoosh-Provider"] == "local" and r.headers["X-Hoosh-Model"] == "tiny"
    assert len(r.content) > 100
    if magic:
        assert r.content.startswith(magic)
    if fmt == "pcm":
        assert len(r.content) % 2 == 0 and int(r.headers["X-Hoosh-Sample-Rate"]) > 0


@pytest.mark.parametrize("body,param", [
    ({"input": ""}, "input"), ({"input": "x" * 4097}, "input"), ({"input": 5}, "input"),
    ({"response_format": "aac"}, "response_format"), ({"response_format": "midi"}, "response_format"),
    ({"speed": 5}, "speed"), ({"speed": 0.1}, "speed"), ({"voice": "nobody"}, "voice")])  # fmt: skip
def test_speech_bad_input(synth_gw, body, param):
    r = speak(synth_gw, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def transcribe(
    gw, data: bytes, *, filename="a.wav", ctype="audio/wav", path="transcriptions", **form
):
    fields = {"model": "whisper-1", **form}
    return requests.post(gw.url + f"/v1/audio/{path}", data=fields,
                         files={"file": (filename, data, ctype)}, timeout=60)  # fmt: skip


def test_transcription_formats(synth_gw):
    audio = wav_bytes()
    r = transcribe(synth_gw, audio)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["text"], str) and r.headers["X-Hoosh-Model"] == "synth"
    v = transcribe(synth_gw, audio, response_format="verbose_json").json()
    assert v["task"] == "transcribe" and v["duration"] == pytest.approx(1.0, abs=0.05)
    assert isinstance(v["segments"], list)
    srt = transcribe(synth_gw, audio, response_format="srt")
    assert srt.status_code == 200 and srt.headers["Content-Type"].startswith("text/")
    vtt = transcribe(synth_gw, audio, response_format="vtt")
    assert vtt.text.startswith("WEBVTT")
    txt = transcribe(synth_gw, audio, response_format="text")
    assert txt.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("rate,channels,subtype", [
    (8000, 1, "PCM_U8"), (22050, 1, "PCM_16"), (48000, 2, "PCM_32"), (44100, 6, "FLOAT")])  # fmt: skip
def test_any_wav_layout_is_accepted_and_its_rate_read_from_the_file(
    synth_gw, rate, channels, subtype
):
    r = transcribe(
        synth_gw, wav_bytes(0.5, rate, channels, subtype), response_format="verbose_json"
    )
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(0.5, abs=0.05)


def test_transcription_bad_uploads(synth_gw):
    r = transcribe(
        synth_gw, b"this is plainly text, not audio", filename="a.txt", ctype="text/plain"
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = transcribe(synth_gw, b"\x00" * 5000, ctype="audio/wav")
    assert r.status_code == 400 and "audio" in r.json()["error"]["message"].lower()
    r = transcribe(synth_gw, b"")
    assert r.status_code == 400
    r = requests.post(
        synth_gw.url + "/v1/audio/transcriptions", data={"model": "whisper-1"}, timeout=10
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = transcribe(synth_gw, wav_bytes(), model="nope")
    assert r.status_code == 404
    r = transcribe(synth_gw, wav_bytes(), response_format="docx")
    assert r.status_code == 400
    # A real WAV sent with a wrong declared type is judged by its bytes, and accepted.
    r = transcribe(synth_gw, wav_bytes(), ctype="text/plain")
    assert r.status_code == 200
    # Translation needs a multilingual model.
    r = transcribe(synth_gw, wav_bytes(), path="translations")
    assert r.status_code == 400


def test_speech_with_an_unknown_model_is_404_like_transcription(synth_gw):
    """`nope-tts` is a mistake to name, not a reason to speak with the default voice."""
    client = openai.OpenAI(base_url=synth_gw.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.audio.speech.create(model="nope-tts", voice="alloy", input="Hello.")
    err = e.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "tts-1" in err["message"] and "tiny" in err["message"]
    for model in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "piper", "tiny"):
        r = speak(synth_gw, model=model, response_format="wav")
        assert r.status_code == 200 and r.headers["X-Hoosh-Model"] == "tiny", (model, r.text)


def test_translation_with_whisper_1_prefers_a_multilingual_model(tmp_path):
    """An English-only model cannot translate: whisper-1 takes a multilingual one, if installed."""
    from tests.conftest import GatewayProcess

    en = make_synthetic_whisper(tmp_path / "ggml-en.bin")
    multi = make_synthetic_whisper(tmp_path / "ggml-multi.bin", n_vocab=51865)
    cfg = f"""
[local.stt.models]
english = "{en}"
polyglot = "{multi}"
"""
    with GatewayProcess(cfg, tmp_path) as gw:
        r = transcribe(gw, wav_bytes(), path="translations")  # model whisper-1
        assert r.status_code == 200, r.text
        assert r.headers["X-Hoosh-Model"] == "polyglot"
        r = transcribe(gw, wav_bytes())  # a transcription keeps the first model
        assert r.status_code == 200 and r.headers["X-Hoosh-Model"] == "english"
    only_en = tmp_path / "en-only"
    only_en.mkdir()
    with GatewayProcess(f'[local.stt.models]\nenglish = "{en}"\n', only_en) as gw:
        r = transcribe(gw, wav_bytes(), path="translations")
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        assert "hoosh-edge models pull whisper-tiny" in r.json()["error"]["message"]


def test_upload_over_the_limit_is_413_and_server_lives_on(synth_gw):
    r = transcribe(synth_gw, b"\x00" * 2_100_000)
    assert r.status_code == 413
    assert requests.get(synth_gw.url + "/health", timeout=5).ok


# -- the real models ------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def word_error_rate(ref: str, hyp: str) -> float:
    r, h = _words(ref), _words(hyp)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)] / max(1, len(r))


@pytest.mark.slow
def test_real_round_trip_piper_speaks_whisper_hears(gateway_factory):
    models = ROOT / "models"
    voice, whisper = models / "en_US-joe-medium.onnx", models / "ggml-tiny.en.bin"
    require(
        voice.exists() and whisper.exists(), "run scripts/setup to pull joe and whisper-tiny.en"
    )
    gw = gateway_factory(f"""
[local.stt.models]
"whisper-tiny.en" = "{whisper}"
[local.tts.voices]
joe = "{voice}"
""")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=120)
    sentence = ("The quick brown fox jumps over the lazy dog. "
                "Please turn on the kitchen lights at seven o'clock.")  # fmt: skip
    wav = client.audio.speech.create(model="tts-1", voice="alloy", input=sentence,
                                     response_format="wav").read()  # fmt: skip
    mp3 = client.audio.speech.create(model="tts-1", voice="joe", input=sentence,
                                     response_format="mp3").read()  # fmt: skip
    assert wav.startswith(b"RIFF") and len(mp3) > 1000
    for name, data in (("speech.wav", wav), ("speech.mp3", mp3)):
        t = client.audio.transcriptions.create(model="whisper-1", file=(name, data))
        wer = word_error_rate(sentence, t.text)
        assert wer < 0.2, (name, t.text, wer)
    v = client.audio.transcriptions.create(model="whisper-tiny.en", file=("s.wav", wav),
                                           response_format="verbose_json")  # fmt: skip
    assert v.segments and v.duration > 3
    # Word timestamps from whisper.cpp's token times: in order, inside the clip, the right words.
    w = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", wav),
                                           response_format="verbose_json",
                                           timestamp_granularities=["word"])  # fmt: skip
    assert w.words and word_error_rate(sentence, " ".join(x.word for x in w.words)) < 0.2
    starts = [x.start for x in w.words]
    assert starts == sorted(starts) and all(x.start <= x.end <= w.duration + 0.5 for x in w.words)
    # stream=true: transcript.text.delta events, then transcript.text.done with the whole text.
    events = list(client.audio.transcriptions.create(model="whisper-1", file=("s.wav", wav),
                                                     stream=True))  # fmt: skip
    assert [e.type for e in events][-1] == "transcript.text.done"
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert deltas.strip() == events[-1].text.strip() and word_error_rate(sentence, deltas) < 0.2


def test_speech_streams_openai_sse_events(synth_gw):
    """`stream_format: "sse"`: speech.audio.delta events with base64 audio, then done."""
    import base64
    import json as _json

    client = openai.OpenAI(base_url=synth_gw.url + "/v1", api_key="x", max_retries=0)
    text = "Streamed speech. In two sentences."
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="pcm", stream_format="sse",
        extra_headers={"Cache-Control": "no-store"},
    ) as resp:  # fmt: skip
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [_json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1] == {"type": "speech.audio.done", "usage": {"input_characters": len(text)}}
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    plain = speak(synth_gw, input=text, response_format="pcm")
    assert plain.status_code == 200 and len(audio) == len(plain.content) > 0  # the same audio
    bad = speak(synth_gw, stream_format="mp4")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "stream_format"


def test_transcription_options_are_part_of_the_cache_key(synth_gw):
    """A verbose_json answer stored without words never answers a request asking for them."""
    audio = wav_bytes(seconds=1.3)
    first = transcribe(synth_gw, audio, response_format="verbose_json")
    assert first.status_code == 200 and "words" not in first.json()
    again = transcribe(synth_gw, audio, response_format="verbose_json")
    assert again.headers["X-Hoosh-Cache"] == "HIT"
    worded = transcribe(synth_gw, audio, response_format="verbose_json",
                        **{"timestamp_granularities[]": "word"})  # fmt: skip
    assert worded.status_code == 200 and worded.headers["X-Hoosh-Cache"] == "MISS"
    assert isinstance(worded.json()["words"], list)
    other = transcribe(synth_gw, audio, response_format="verbose_json", **{"include[]": "logprobs"})
    assert other.headers["X-Hoosh-Cache"] == "MISS"  # a field the gateway does not read, too
    bad = transcribe(synth_gw, audio, **{"timestamp_granularities[]": "word"})  # json format
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "timestamp_granularities[]"
    bad = transcribe(synth_gw, audio, response_format="srt", stream="true")
    assert bad.status_code == 400


def test_transcription_streams_with_the_sdk(synth_gw):
    """stream=True gives the SDK transcript events instead of a silently empty stream."""
    client = openai.OpenAI(base_url=synth_gw.url + "/v1", api_key="x", max_retries=0)
    events = list(client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav_bytes(seconds=1.1)), stream=True))  # fmt: skip
    assert events and events[-1].type == "transcript.text.done"
    assert all(e.type == "transcript.text.delta" for e in events[:-1])
    deltas = "".join(e.delta for e in events[:-1])
    assert deltas.strip() == events[-1].text.strip()  # the real model's words: the slow test
    assert events[-1].usage.seconds == 2  # whole seconds of the 1.1 s clip


def test_an_undecodable_upload_is_explained_in_words(synth_gw):
    """No Python repr reaches the client: say what was wrong and what to send."""
    r = transcribe(synth_gw, b"this is plain text, not audio " * 20, ctype="audio/wav")
    msg = r.json()["error"]["message"]
    assert r.status_code == 400 and "not one this gateway reads" in msg and "wav" in msg
    assert "0x" not in msg and "BytesIO" not in msg and "<" not in msg
    cut = wav_bytes()[:40]  # a header cut short inside its format chunk
    r = transcribe(synth_gw, cut)
    msg = r.json()["error"]["message"]
    assert r.status_code == 400 and "0x" not in msg and "BytesIO" not in msg, msg
