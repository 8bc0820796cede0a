"""Decoding uploads to 16 kHz mono, and recognising containers by their first bytes."""

from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile
import soxr

from hoosh_edge.backends.engines.audio_in import BLOCK_SAMPLES, decode_audio, sniff_audio_kind
from hoosh_edge.errors import DeadlineExceeded, InvalidRequest
from tests.audio_bombs import (
    encode,
    lying_flac,
    silence_flac,
    wav_claiming_more,
)


def _tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encode(samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _peak_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def _band_level(samples: np.ndarray, hz: float, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(spectrum[np.abs(freqs - hz) < 30].max())


def _wav_by_hand(pcm: bytes, rate: int, channels: int, bits: int, fmt_tag: int = 1) -> bytes:
    """A RIFF/WAVE file built byte by byte, so the test does not trust the decoder's writer."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
@pytest.mark.parametrize("rate,channels", [(8000, 1), (22050, 2), (44100, 1), (48000, 6)])
def test_wav_of_any_width_rate_and_channels(subtype: str, rate: int, channels: int) -> None:
    mono = _tone(440, rate, 1.5)
    data = _encode(np.repeat(mono[:, None], channels, axis=1), rate, "WAV", subtype)
    audio = decode_audio(data)
    assert (audio.sample_rate, audio.channels, audio.kind) == (rate, channels, "wav")
    assert audio.duration_s == pytest.approx(1.5, abs=1e-3)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert abs(len(audio.samples) - 24000) <= 2
    assert _peak_hz(audio.samples) == pytest.approx(440, abs=3)
    rms = float(np.sqrt(np.mean(audio.samples[2000:-2000] ** 2)))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.03)


def test_sample_rate_comes_from_the_header() -> None:
    # The same PCM bytes labelled 8 kHz and 32 kHz are a 2 s and a 0.5 s clip.
    pcm = (_tone(500, 8000, 2.0) * 32767).astype("<i2").tobytes()
    slow = decode_audio(_wav_by_hand(pcm, 8000, 1, 16))
    fast = decode_audio(_wav_by_hand(pcm, 32000, 1, 16))
    assert slow.duration_s == pytest.approx(2.0) and fast.duration_s == pytest.approx(0.5)
    assert len(slow.samples) == 32000 and len(fast.samples) == 8000
    assert _peak_hz(slow.samples) == pytest.approx(500, abs=3)
    assert _peak_hz(fast.samples) == pytest.approx(2000, abs=6)


def test_handmade_24bit_and_float_wavs() -> None:
    samples = _tone(1000, 11025, 1.0, amp=0.25)
    as_int = np.round(samples * (2**23 - 1)).astype("<i4")
    pcm24 = b"".join(int(v).to_bytes(4, "little", signed=True)[:3] for v in as_int)
    audio24 = decode_audio(_wav_by_hand(pcm24, 11025, 1, 24))
    float_wav = _wav_by_hand(samples.astype("<f4").tobytes(), 11025, 1, 32, fmt_tag=3)
    audio32f = decode_audio(float_wav)
    for audio in (audio24, audio32f):
        assert audio.sample_rate == 11025 and len(audio.samples) == 16000
        assert _peak_hz(audio.samples) == pytest.approx(1000, abs=3)
        assert float(np.abs(audio.samples).max()) == pytest.approx(0.25, rel=0.03)


def test_resampling_filters_out_what_would_alias() -> None:
    # 12 kHz is above the new 8 kHz Nyquist limit: a naive decimator would fold it onto 4 kHz.
    rate = 48000
    mix = _tone(1000, rate, 1.0, 0.4) + _tone(12000, rate, 1.0, 0.4)
    audio = decode_audio(_encode(mix, rate, "WAV", "FLOAT"))
    assert _band_level(audio.samples, 4000) < 1e-3 * _band_level(audio.samples, 1000)


def test_channels_are_averaged() -> None:
    left = _tone(300, 16000, 1.0)
    stereo = np.stack([left, -left], axis=1)  # opposite phase: the mono mix is silence
    audio = decode_audio(_encode(stereo, 16000, "WAV", "PCM_16"))
    assert audio.channels == 2 and float(np.abs(audio.samples).max()) < 1e-3


@pytest.mark.parametrize(
    "fmt,subtype,kind,rate",
    [
        ("FLAC", "PCM_16", "flac", 44100),
        ("OGG", "VORBIS", "ogg", 44100),
        ("OGG", "OPUS", "ogg", 48000),
        ("MP3", "MPEG_LAYER_III", "mp3", 44100),
    ],
)
def test_compressed_formats(fmt: str, subtype: str, kind: str, rate: int) -> None:
    data = _encode(_tone(440, rate, 2.0), rate, fmt, subtype)
    assert sniff_audio_kind(data) == kind
    audio = decode_audio(data)
    assert audio.sample_rate == rate and audio.kind == kind
    assert audio.duration_s == pytest.approx(2.0, abs=0.06)
    assert _peak_hz(audio.samples) == pytest.approx(440, abs=3)


def test_non_finite_float_samples_are_made_safe() -> None:
    samples = _tone(440, 16000, 0.5)
    samples[100:110] = np.nan
    samples[200] = np.inf
    audio = decode_audio(_wav_by_hand(samples.astype("<f4").tobytes(), 16000, 1, 32, fmt_tag=3))
    assert np.isfinite(audio.samples).all()


def _assert_file_error(data: bytes, match: str, **kw: float) -> None:
    with pytest.raises(InvalidRequest, match=match) as info:
        decode_audio(data, **kw)
    assert info.value.param == "file" and info.value.status == 400


def test_unusable_uploads_are_invalid_requests() -> None:
    _assert_file_error(b"", "empty")
    _assert_file_error(b"this is not audio at all, just some text" * 10, "Could not decode")
    _assert_file_error(_wav_by_hand(b"", 16000, 1, 16), "no samples|Could not decode")
    wav = _encode(_tone(440, 16000, 0.2), 16000, "WAV", "PCM_16")
    _assert_file_error(wav[:30], "Could not decode")  # cut inside the header


def test_over_long_audio_is_refused_without_decoding_it_all() -> None:
    data = _encode(_tone(440, 8000, 3.0), 8000, "WAV", "PCM_16")
    _assert_file_error(data, "longer than the limit of 2 s", max_seconds=2)
    assert decode_audio(data, max_seconds=3).duration_s == pytest.approx(3.0)


def test_containers_we_cannot_decode_say_so() -> None:
    webm = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01" + b"\x42\x82\x84webm" + b"\0" * 40
    _assert_file_error(webm, "webm")
    m4a = struct.pack(">I", 24) + b"ftypM4A " + b"\0" * 40
    _assert_file_error(m4a, "m4a")


@pytest.mark.parametrize(
    "head,kind",
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
        (b"RF64\xff\xff\xff\xffWAVEds64", "wav"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02" + b"\0" * 20, "ogg"),
        (b"\x1a\x45\xdf\xa3\x01\x00\x00\x00", "webm"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "mp4"),
        (b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00", "m4a"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\0" * 10 + b"\xff\xfb\x90\x64", "mp3"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x02" + b"\0\0" + b"fLaC", "flac"),
        (b"\xff\xfb\x90\x64" + b"\0" * 8, "mp3"),  # MPEG-1 layer III frame, no tag
        (b"\xff\xf1\x50\x80" + b"\0" * 8, "aac"),  # ADTS: layer bits 00, not MP3
        (b"\xff\xff\xff\xff" + b"\0" * 8, None),
        (b'{"text": "hello"}', None),
        (b"", None),
    ],
)
def test_sniff_audio_kind(head: bytes, kind: str | None) -> None:
    assert sniff_audio_kind(head) == kind


# -- the block decoder: same output as decoding whole, bounded memory, hostile headers ---------


def _decode_whole(data: bytes) -> np.ndarray:
    """The reference: read everything, average the channels, resample in one call."""
    frames, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = frames.mean(axis=1)
    return mono if rate == 16000 else soxr.resample(mono, rate, 16000, quality="HQ")


@pytest.mark.parametrize("rate,channels,fmt,subtype", [
    (44100, 2, "WAV", "PCM_16"), (48000, 6, "FLAC", "PCM_24"), (16000, 1, "WAV", "FLOAT"),
    (22050, 1, "OGG", "VORBIS"), (8000, 3, "WAV", "PCM_U8")])  # fmt: skip
def test_block_decoder_matches_decoding_the_whole_file(rate, channels, fmt, subtype) -> None:
    # Long enough for several blocks (BLOCK_SAMPLES spans 10.9 s of mono at 48 kHz, 1.8 s of 6 ch).
    rng = np.random.default_rng(1)
    seconds = 3 * BLOCK_SAMPLES / (rate * channels) + 0.37
    mix = _tone(440, rate, seconds, 0.3) + _tone(3100, rate, seconds, 0.2)
    data = encode(mix[:, None] * rng.uniform(0.3, 1.0, channels), rate, fmt, subtype)
    audio = decode_audio(data)
    whole = _decode_whole(data)
    assert abs(len(audio.samples) - len(whole)) <= 1
    n = min(len(audio.samples), len(whole))
    assert float(np.max(np.abs(audio.samples[:n] - whole[:n]))) < 1e-4
    assert audio.duration_s == pytest.approx(seconds, abs=1.5 / rate)


@pytest.fixture(scope="module")
def five_minutes_of_8ch_silence() -> bytes:
    return silence_flac(300, channels=8, rate=48000)


def test_silence_bomb_is_refused_from_its_header(five_minutes_of_8ch_silence) -> None:
    data = five_minutes_of_8ch_silence
    assert len(data) < 200_000  # 300 s x 8 ch x 48 kHz of float32 would be 460 MB
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest, match="limit of 120 s") as info:
            decode_audio(data, max_seconds=120)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code == "audio_too_long" and "header says 300 s" in info.value.message
    assert peak < 1 << 20  # nothing was decoded


def test_silence_bomb_decodes_in_bounded_memory(five_minutes_of_8ch_silence) -> None:
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        audio = decode_audio(five_minutes_of_8ch_silence, max_seconds=300)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out = len(audio.samples) * 4
    assert audio.duration_s == pytest.approx(300) and len(audio.samples) == 300 * 16000
    # The old decode-whole path held 460 MB of 8-channel float32 at once.
    assert peak < out + 8 * BLOCK_SAMPLES * 4, (peak, out)
    assert float(np.abs(audio.samples).max()) == 0.0


def test_channels_times_frames_is_bounded_too() -> None:
    # 16 channels at 48 kHz for 1.5 s is under a 2 s limit, but more work than 2 s of 8 channels.
    data = encode(np.zeros((72000, 16), np.float32), 48000, "WAV", "PCM_16")
    with pytest.raises(InvalidRequest, match="16 channels at 48000 Hz") as info:
        decode_audio(data, max_seconds=2)
    assert "at most 1 s" in info.value.message and info.value.code == "audio_too_long"
    assert decode_audio(data[: 44 + 16 * 2 * 48000], max_seconds=2).duration_s == 1.0


def test_flac_claiming_2_36_samples_is_refused_without_allocating() -> None:
    data = lying_flac()
    assert len(data) < 40_000
    with pytest.raises(InvalidRequest, match="limit of 600 s") as info:
        decode_audio(data)
    assert "header says 4294967 s" in info.value.message
    # With a limit above the claim, the data runs out long before it: still a 400, not a MemoryError.
    with pytest.raises(InvalidRequest, match="truncated or does not match its header") as info:
        decode_audio(data, max_seconds=86400 * 100)
    assert info.value.code == "audio_truncated"


def test_flac_claiming_fewer_samples_stops_at_the_claim() -> None:
    data = lying_flac(8000, seconds=2.0)  # holds 2 s, says 0.5 s
    assert decode_audio(data).duration_s == pytest.approx(0.5)


def test_wav_claiming_more_data_than_it_holds_decodes_what_is_there() -> None:
    audio = decode_audio(wav_claiming_more(1.5))
    assert audio.duration_s == pytest.approx(1.5) and len(audio.samples) == 24000


def test_cut_flac_is_a_clear_invalid_request() -> None:
    whole = encode(_tone(440, 16000, 4.0), 16000)
    _assert_file_error(whole[: len(whole) // 2], "truncated or does not match its header")


def test_over_long_audio_without_a_usable_length_is_stopped_while_decoding() -> None:
    # The header says 1 s, so the check before decoding passes; the cap while reading still holds.
    data = lying_flac(16000 * 1, seconds=4.0)
    assert decode_audio(data, max_seconds=2).duration_s == pytest.approx(1.0)
    data = encode(_tone(440, 16000, 3.0), 16000, "OGG", "VORBIS")
    _assert_file_error(data, "limit of 2 s", max_seconds=2)


def test_should_stop_ends_decoding_with_deadline_exceeded() -> None:
    calls = []
    data = encode(_tone(440, 48000, 30.0), 48000)

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(DeadlineExceeded):
        decode_audio(data, should_stop=stop)
    assert len(calls) == 3


def test_absurd_rates_and_channel_counts_are_refused_before_decoding() -> None:
    pcm = b"\x00\x01" * 100 * 64
    _assert_file_error(_wav_by_hand(pcm, 16000, 100, 16), "100 channels; at most 64")
    _assert_file_error(_wav_by_hand(pcm, 2_000_000, 1, 16), r"sample rate \(2000000 Hz\)")
