"""WhisperModel on a tiny random-weight model (framing, errors, lifecycle) and transcript formats."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from hoosh_edge.backends.engines.whisper import Transcript, WhisperModel, read_hparams
from hoosh_edge.errors import HooshError, InvalidRequest
from hoosh_edge.formats.transcripts import compression_ratio, language_name, render
from tests.synth_whisper import make_synthetic_whisper


@pytest.fixture(scope="module")
def synth_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_whisper(tmp_path_factory.mktemp("whisper") / "synth.bin")


@pytest.fixture(scope="module")
def model(synth_path: Path):
    m = WhisperModel.load(str(synth_path), n_threads=1)
    yield m
    m.close()


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def test_synthetic_model_is_small_and_keeps_the_real_contexts(synth_path: Path) -> None:
    assert 100_000 < synth_path.stat().st_size < 1_000_000
    hp = read_hparams(synth_path)
    assert (hp["n_vocab"], hp["n_audio_ctx"], hp["n_text_ctx"], hp["n_mels"]) == (
        51864,
        1500,
        448,
        80,
    )


def test_load_reports_model_facts(model: WhisperModel, synth_path: Path) -> None:
    assert model.multilingual is False  # 51864 tokens: an English-only vocabulary
    assert model.n_threads == 1 and not model.closed
    estimate = WhisperModel.estimate_bytes(synth_path)
    # Weights plus at least the decoder's logits buffer (n_vocab x n_text_ctx floats).
    assert estimate > synth_path.stat().st_size + 4 * 51864 * 448


def test_transcribe_frames_a_transcript(model: WhisperModel, capfd: pytest.CaptureFixture) -> None:
    samples = _noise(3.0)
    result = model.transcribe(samples, language=None, prompt=None, temperature=0.0, translate=False)
    assert isinstance(result, Transcript)
    assert isinstance(result.text, str)
    assert result.language == "en" and result.task == "transcribe"
    assert result.duration_s == pytest.approx(3.0)
    assert [s["id"] for s in result.segments] == list(range(len(result.segments)))
    for seg in result.segments:
        assert isinstance(seg["start"], float) and isinstance(seg["end"], float)
        assert 0.0 <= seg["start"] <= seg["end"]
        assert isinstance(seg["text"], str) and seg["text"] == seg["text"].strip()
        assert all(isinstance(t, int) and 0 <= t < 51864 for t in seg["tokens"])
        assert seg["avg_logprob"] <= 0.0
    assert result.text == " ".join(s["text"] for s in result.segments if s["text"])
    # whisper.cpp would print each segment and its loading log; none of it may reach the console.
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_options_are_accepted(model: WhisperModel) -> None:
    result = model.transcribe(
        _noise(1.0, seed=3),
        language="en",
        prompt="Hoosh edge meeting",
        temperature=0.4,
        translate=False,
    )
    assert result.temperature == 0.4 and result.language == "en"


def test_very_short_audio_still_works(model: WhisperModel) -> None:
    result = model.transcribe(
        _noise(0.05), language=None, prompt=None, temperature=0.0, translate=False
    )
    assert result.duration_s == pytest.approx(0.05)


def test_english_only_model_refuses_translation_and_other_languages(model: WhisperModel) -> None:
    with pytest.raises(InvalidRequest) as info:
        model.transcribe(_noise(1.0), language=None, prompt=None, temperature=0.0, translate=True)
    assert info.value.param == "model"
    with pytest.raises(InvalidRequest) as info:
        model.transcribe(_noise(1.0), language="fr", prompt=None, temperature=0.0, translate=False)
    assert info.value.param == "language"
    with pytest.raises(InvalidRequest):
        model.transcribe(
            np.zeros(0, np.float32), language=None, prompt=None, temperature=0.0, translate=False
        )


def test_two_threads_share_one_model_safely(model: WhisperModel) -> None:
    results: list[Transcript] = []
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            results.append(
                model.transcribe(
                    _noise(2.0, seed), language=None, prompt=None, temperature=0.0, translate=False
                )
            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 2
    assert all(r.duration_s == pytest.approx(2.0) for r in results)


def test_close_frees_and_later_use_fails_cleanly(synth_path: Path) -> None:
    m = WhisperModel.load(str(synth_path), n_threads=1)
    m.close()
    m.close()  # idempotent
    assert m.closed
    with pytest.raises(HooshError, match="unloaded"):
        m.transcribe(_noise(1.0), language=None, prompt=None, temperature=0.0, translate=False)


def test_bad_files_fail_to_load_without_crashing(tmp_path: Path, synth_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        WhisperModel.load(str(tmp_path / "missing.bin"))
    not_ggml = tmp_path / "not.bin"
    not_ggml.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ValueError, match="not a whisper.cpp ggml model"):
        WhisperModel.load(str(not_ggml))
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(synth_path.read_bytes()[:200_000])  # header fine, tensors cut off
    with pytest.raises(ValueError, match="could not load"):
        WhisperModel.load(str(truncated))


# --- transcript formats ------------------------------------------------------------------------

SAMPLE = Transcript(
    text="Hello there. General Kenobi!",
    language="en",
    duration_s=3725.5,
    segments=[
        {
            "id": 0,
            "start": 0.0,
            "end": 1.5,
            "text": "Hello there.",
            "tokens": [50363, 15496],
            "avg_logprob": -0.25,
        },
        {
            "id": 1,
            "start": 3661.25,
            "end": 3725.5,
            "text": "General Kenobi!",
            "tokens": [],
            "avg_logprob": -0.5,
        },
    ],
    temperature=0.2,
)


def test_render_json_and_text() -> None:
    assert render(SAMPLE, "json") == ({"text": "Hello there. General Kenobi!"}, "application/json")
    assert render(SAMPLE, None)[0] == {"text": "Hello there. General Kenobi!"}
    body, mime = render(SAMPLE, "text")
    assert body == "Hello there. General Kenobi!\n" and mime.startswith("text/plain")


def test_render_srt() -> None:
    body, _ = render(SAMPLE, "srt")
    assert body == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n01:01:01,250 --> 01:02:05,500\nGeneral Kenobi!\n"
    )


def test_render_vtt() -> None:
    body, mime = render(SAMPLE, "vtt")
    assert mime.startswith("text/vtt")
    assert body == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
        "01:01:01.250 --> 01:02:05.500\nGeneral Kenobi!\n"
    )


def test_render_verbose_json_has_openais_shape() -> None:
    body, mime = render(SAMPLE, "verbose_json")
    assert mime == "application/json"
    json.dumps(body)  # serialisable as is
    assert body["task"] == "transcribe" and body["language"] == "english"
    assert body["duration"] == 3725.5 and body["text"] == SAMPLE.text
    first = body["segments"][0]
    assert set(first) == {
        "id", "seek", "start", "end", "text", "tokens", "temperature",
        "avg_logprob", "compression_ratio", "no_speech_prob",
    }  # fmt: skip
    assert first["tokens"] == [50363, 15496] and first["avg_logprob"] == -0.25
    assert first["temperature"] == 0.2 and first["compression_ratio"] > 0


def test_unknown_format_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest) as info:
        render(SAMPLE, "docx")
    assert info.value.param == "response_format"


def test_helpers() -> None:
    assert language_name("de") == "german" and language_name("ht") == "haitian creole"
    assert language_name("xx") == "xx" and language_name(None) is None
    repetitive = "la " * 200
    assert compression_ratio(repetitive) > 10 > compression_ratio("The quick brown fox.")
    # A blank line inside a segment would end an SRT cue early; it is dropped.
    t = Transcript("a\n\nb", "en", 1.0, [{"id": 0, "start": 0.0, "end": 1.0, "text": "a\n\nb"}])
    assert render(t, "srt")[0] == "1\n00:00:00,000 --> 00:00:01,000\na\nb\n"


def test_render_of_a_real_engine_transcript(model: WhisperModel) -> None:
    result = model.transcribe(
        _noise(2.0, seed=5), language=None, prompt=None, temperature=0.0, translate=False
    )
    for fmt in ("json", "text", "srt", "vtt", "verbose_json"):
        body, mime = render(result, fmt)
        assert isinstance(body, dict if "json" in fmt else str) and mime
    verbose, _ = render(result, "verbose_json")
    assert len(verbose["segments"]) == len(result.segments)


def test_the_gevent_hub_keeps_running_during_a_transcription(model: WhisperModel) -> None:
    import time

    import gevent

    from hoosh_edge.threads import run_blocking

    ticks, done = [0], [False]

    def ticker() -> None:
        while not done[0]:
            gevent.sleep(0.005)
            ticks[0] += 1

    greenlet = gevent.spawn(ticker)
    start = time.perf_counter()
    result = run_blocking(
        model.transcribe,
        _noise(5.0, seed=7),
        language=None,
        prompt=None,
        temperature=0.0,
        translate=False,
    )
    elapsed = time.perf_counter() - start
    done[0] = True
    greenlet.join()
    assert result.duration_s == pytest.approx(5.0)
    # whisper.cpp releases the GIL, so the hub's timer keeps firing while the thread works.
    assert ticks[0] >= max(3, int(0.2 * elapsed / 0.005))


def test_multilingual_model_detects_language_and_translates(tmp_path: Path) -> None:
    # One more token (51865) is what makes whisper.cpp treat a model as multilingual.
    path = make_synthetic_whisper(tmp_path / "multi.bin", n_vocab=51865, seed=1)
    m = WhisperModel.load(str(path), n_threads=1)
    try:
        assert m.multilingual is True
        auto = m.transcribe(
            _noise(1.0), language=None, prompt=None, temperature=0.0, translate=False
        )
        assert isinstance(auto.language, str) and language_name(auto.language) != auto.language
        german = m.transcribe(
            _noise(1.0), language="de", prompt=None, temperature=0.0, translate=False
        )
        assert german.language == "de"
        english = m.transcribe(
            _noise(1.0), language="de", prompt=None, temperature=0.0, translate=True
        )
        assert english.task == "translate" and english.language == "en"
        with pytest.raises(InvalidRequest) as info:
            m.transcribe(
                _noise(1.0), language="klingon", prompt=None, temperature=0.0, translate=False
            )
        assert info.value.param == "language"
    finally:
        m.close()
