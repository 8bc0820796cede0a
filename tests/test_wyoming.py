"""Home Assistant's three Wyoming roles through the real gateway, with real models and the
``wyoming`` package's own client: describe, speech-to-text, text-to-speech (whole and streamed),
conversation; the cache, metrics and access lines behind them."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import requests
import soxr
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from tests.conftest import GatewayProcess, require
from tests.test_audio_api import word_error_rate
from tests.wyoming_peer import (
    LLM,
    VOICE,
    WHISPER,
    access_lines,
    as_home_assistant_sends,
    describe,
    exchange,
    run,
    speech_toml,
    synthesize,
    transcribe_events,
    wyoming_port,
)

pytestmark = pytest.mark.slow
SENTENCE = "Please turn on the kitchen lights. The weather today is sunny and warm."


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    require(VOICE.exists() and WHISPER.exists() and LLM.exists(),
            "run scripts/setup to pull joe, whisper-tiny.en and smollm2")  # fmt: skip
    d = tmp_path_factory.mktemp("wyoming")
    cfg = speech_toml(chat_model="smollm2") + f'\n[local.llm.models]\nsmollm2 = "{LLM}"\n'
    with GatewayProcess(cfg, d) as g:
        g.port = wyoming_port(g)
        yield g


def test_describe_lists_whisper_piper_and_the_chat_model_fast(gw):
    info, took = describe(gw.port)
    assert took < 1.0  # Home Assistant waits about a second
    (asr,) = info.asr
    assert asr.supports_transcript_streaming and asr.installed
    assert [(m.name, m.languages, m.installed) for m in asr.models] == [
        ("whisper-tiny.en", ["en"], True)
    ]
    (tts,) = info.tts
    assert tts.supports_synthesize_streaming
    assert [(v.name, v.languages) for v in tts.voices] == [("joe", ["en_US"])]
    (handle,) = info.handle
    assert [m.name for m in handle.models] == ["smollm2"]


def test_piper_to_whisper_round_trip_as_home_assistant_sends_it(gw):
    before = len(access_lines(gw, "wyoming:asr", 0))
    pcm, rate, events = synthesize(gw.port, SENTENCE, voice="joe")
    kinds = [e.type for e in events]
    assert kinds[0] == "audio-start" and kinds[-1] == "audio-stop"
    assert kinds.count("audio-start") == 1 and rate == 22050
    assert len(pcm) / 2 / rate > 2.5  # seconds of speech, not a click
    ha = as_home_assistant_sends(pcm, rate)
    back = run(exchange(gw.port, transcribe_events(ha), ("transcript-stop", "error")))
    kinds = [e.type for e in back]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"]
    text = Transcript.from_event(back[-2]).text
    chunks = "".join(e.data["text"] for e in back if e.type == "transcript-chunk")
    assert chunks == text and back[-2].data["language"] == "en"
    assert word_error_rate(SENTENCE, text) < 0.25, text
    (line,) = access_lines(gw, "wyoming:asr", before + 1)[before:]
    assert line["cache"] == "MISS"
    assert line["provider"] == "local" and line["model"] == "whisper-tiny.en"
    assert line["status"] == 200 and 2.5 < line["audio_seconds"] < 8


@pytest.mark.parametrize("rate,width,channels", [(44100, 4, 2), (48000, 1, 1), (8000, 3, 1)])
def test_any_rate_width_and_channels_are_resampled(gw, rate, width, channels):
    pcm, voice_rate, _ = synthesize(gw.port, SENTENCE)
    before = len(access_lines(gw, "wyoming:asr", 0))
    mono = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    x = np.clip(soxr.resample(mono, voice_rate, rate), -1.0, 1.0)
    if width == 1:  # Wyoming's 8-bit PCM is signed, as audioop has it
        data = (x * 127).astype(np.int8).tobytes()
    else:
        ints = (x * (2 ** (8 * width - 1) - 1)).astype("<i4")
        data = b"".join(v.to_bytes(4, "little", signed=True)[:width] for v in ints.tolist())
    data = b"".join(data[i : i + width] * channels for i in range(0, len(data), width))
    back = run(exchange(gw.port, transcribe_events(data, rate, width, channels, chunk_bytes=8190),
                        ("transcript",)))  # fmt: skip
    assert word_error_rate(SENTENCE, back[-1].data["text"]) < 0.25, back[-1].data
    (line,) = access_lines(gw, "wyoming:asr", before + 1)[before:]
    assert abs(line["audio_seconds"] - len(mono) / voice_rate) < 0.1


def test_no_audio_is_an_empty_transcript(gw):
    back = run(exchange(gw.port, transcribe_events(b""), ("transcript",), timeout=5))
    assert back[-1].data["text"] == ""


def test_streamed_synthesis_speaks_each_sentence_once_it_is_complete(gw):
    before = len(access_lines(gw, "wyoming:tts", 0))

    async def go() -> tuple[list, float]:
        async with AsyncTcpClient("127.0.0.1", gw.port) as c:
            await c.write_event(SynthesizeStart().event())
            for piece in ("Turn on the ", "kitchen lights", ". The weather "):
                await c.write_event(SynthesizeChunk(text=piece).event())
            # The first sentence is complete: its audio comes before any more text is sent.
            first = await asyncio.wait_for(c.read_event(), 60)
            events = [first]
            for piece in ("is sunny and warm today. Good", "bye for now."):
                await c.write_event(SynthesizeChunk(text=piece).event())
            # Home Assistant also sends the whole text for servers that cannot stream.
            await c.write_event(Synthesize(text="ignored beside a stream").event())
            await c.write_event(SynthesizeStop().event())
            while events[-1].type != "synthesize-stopped":
                events.append(await asyncio.wait_for(c.read_event(), 60))
            return events

    events = run(go())
    assert events[0].type == "audio-start"
    kinds = [e.type for e in events]
    # Three sentences, each framed as its own audio stream, then the stream's end.
    assert kinds.count("audio-start") == 3 and kinds.count("audio-stop") == 3
    assert kinds[-1] == "synthesize-stopped" and "error" not in kinds
    lines = access_lines(gw, "wyoming:tts", before + 3)[before:]
    assert [x["characters"] for x in lines] == [
        len("Turn on the kitchen lights."),
        len("The weather is sunny and warm today."),
        len("Goodbye for now."),
    ]


def test_a_repeated_announcement_is_served_from_the_cache(gw):
    text = "The washing machine has finished."
    before = len(access_lines(gw, "wyoming:tts", 0))
    first, rate, _ = synthesize(gw.port, text)
    again, rate2, _ = synthesize(gw.port, text)
    assert first == again and rate == rate2 == 22050
    lines = access_lines(gw, "wyoming:tts", before + 2)[before:]
    assert [x["cache"] for x in lines] == ["MISS", "HIT"]


def test_conversation_goes_through_the_chat_pipeline(gw):
    ask = Transcript(text="What is the capital of France?", context={"conversation_id": "c1"})
    before = len(access_lines(gw, "wyoming:handle", 0))
    started = time.monotonic()
    (handled,) = run(exchange(gw.port, [ask.event()], ("handled", "not-handled")))
    assert handled.type == "handled" and handled.data["context"] == {"conversation_id": "c1"}
    assert handled.data["text"].strip() and time.monotonic() - started < 60
    (line,) = access_lines(gw, "wyoming:handle", before + 1)[before:]
    assert line["provider"] == "local" and line["model"] == "smollm2" and line["status"] == 200
    assert line["completion_tokens"] <= 200  # wyoming.max_tokens


def test_metrics_count_wyoming_routes_and_http_answers_meanwhile(gw):
    async def long_tts() -> list:
        return await exchange(gw.port, [Synthesize(text=SENTENCE * 3).event()], ("audio-stop",))

    async def both() -> tuple[list, list[float]]:
        task = asyncio.ensure_future(long_tts())
        waits = []
        while not task.done():
            t = time.monotonic()
            r = await asyncio.to_thread(requests.get, gw.url + "/v1/models", timeout=5)
            assert r.ok
            waits.append(time.monotonic() - t)
            await asyncio.sleep(0.05)
        return await task, waits

    events, waits = run(both())
    assert sum(1 for e in events if AudioChunk.is_type(e.type)) > 10
    assert waits and max(waits) < 1.0, waits
    text = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'hoosh_requests_total{route="wyoming:tts",status="200"}' in text


def test_sigterm_lets_a_wyoming_answer_finish(tmp_path):
    import signal

    with GatewayProcess(speech_toml(), tmp_path) as g:
        port = wyoming_port(g)

        async def go() -> list:
            async with AsyncTcpClient("127.0.0.1", port) as c:
                await c.write_event(Synthesize(text=SENTENCE * 2).event())
                events = [await asyncio.wait_for(c.read_event(), 60)]
                while events[-1].type != "audio-chunk":
                    events.append(await asyncio.wait_for(c.read_event(), 60))
                g.proc.send_signal(signal.SIGTERM)  # mid-answer
                while events[-1] is not None and events[-1].type != "audio-stop":
                    events.append(await asyncio.wait_for(c.read_event(), 60))
                return events

        events = run(go())
        assert events[-1] is not None and events[-1].type == "audio-stop"
        assert g.proc.wait(20) == 0
