"""Speech response encoders: every format decodes back to the audio that went in."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest
import soundfile as sf

from hoosh_edge.backends.engines.audio_out import (
    SUPPORTED_FORMATS,
    StreamEncoder,
    check_format,
    content_type,
    encode,
    wav_header,
)
from hoosh_edge.errors import InvalidRequest

RATE = 22050


def tone(seconds: float, freq: float = 440.0, rate: int = RATE) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 12000).astype("<i2").tobytes()


def stream(fmt: str, pcm: bytes, chunk: int, rate: int = RATE) -> list[bytes]:
    enc = StreamEncoder(fmt, rate)
    parts = [enc.write(pcm[i : i + chunk]) for i in range(0, len(pcm), chunk)]
    parts.append(enc.close())
    return parts


def decode(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    return samples, rate


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def test_formats_and_content_types():
    assert set(SUPPORTED_FORMATS) == {"mp3", "opus", "flac", "wav", "pcm"}
    assert content_type("mp3") == "audio/mpeg"
    assert content_type("opus") == "audio/ogg"
    assert content_type("flac") == "audio/flac"
    assert content_type("wav") == "audio/wav"
    assert content_type("pcm") == "audio/pcm"
    assert check_format(" WAV ") == "wav"


@pytest.mark.parametrize("fmt", ["aac", "ogg", "", None, "m4a"])
def test_unsupported_format_is_invalid_request(fmt):
    with pytest.raises(InvalidRequest) as info:
        StreamEncoder(fmt, RATE)
    assert info.value.param == "response_format"
    assert info.value.status == 400
    with pytest.raises(InvalidRequest):
        content_type(fmt)
    with pytest.raises(InvalidRequest):
        encode(fmt, b"\0\0", RATE)


def test_pcm_passes_through_and_keeps_odd_bytes_for_the_next_write():
    pcm = tone(0.1)
    enc = StreamEncoder("pcm", RATE)
    out = enc.write(pcm[:101]) + enc.write(pcm[101:300]) + enc.write(pcm[300:]) + enc.close()
    assert out == pcm


def test_odd_byte_split_does_not_shift_samples():
    pcm = tone(0.05)
    enc = StreamEncoder("pcm", RATE)
    first = enc.write(pcm[:3])
    assert len(first) == 2  # one whole sample; the third byte waits for its partner
    assert first + enc.write(pcm[3:]) == pcm


def test_wav_header_layout():
    head = wav_header(RATE, 1000)
    assert len(head) == 44
    assert head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", head[4:8])[0] == 1036
    assert struct.unpack("<IHHIIHH", head[16:36]) == (16, 1, 1, RATE, RATE * 2, 2, 16)
    assert struct.unpack("<I", head[40:44])[0] == 1000
    unknown = wav_header(RATE)
    assert unknown[4:8] == b"\xff\xff\xff\xff" and unknown[40:44] == b"\xff\xff\xff\xff"


def test_streamed_wav_sends_header_first_and_decodes_exactly():
    pcm = tone(1.0)
    parts = stream("wav", pcm, 4000)
    assert parts[0][:4] == b"RIFF" and len(parts[0]) == 44 + 4000
    data = b"".join(parts)
    assert data[44:] == pcm
    samples, rate = decode(data)  # libsndfile reads an unknown-length WAV to its end
    assert rate == RATE
    assert samples.tobytes() == pcm


def test_whole_wav_has_exact_sizes():
    pcm = tone(0.5)
    data = encode("wav", pcm, RATE)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        assert w.getnframes() == len(pcm) // 2
        assert w.readframes(w.getnframes()) == pcm


def test_empty_wav_stream_is_still_a_header():
    enc = StreamEncoder("wav", RATE)
    assert enc.close() == wav_header(RATE)


def test_flac_is_lossless_and_buffered_until_close():
    pcm = tone(1.5)
    parts = stream("flac", pcm, 8000)
    assert all(p == b"" for p in parts[:-1])
    assert parts[-1][:4] == b"fLaC"
    samples, rate = decode(parts[-1])
    assert rate == RATE and samples.tobytes() == pcm
    whole = encode("flac", pcm, RATE)
    assert decode(whole)[0].tobytes() == pcm


def test_mp3_streams_before_close_and_decodes_to_the_same_tone():
    pcm = tone(2.0)
    parts = stream("mp3", pcm, RATE)  # one-second writes, like sentences
    assert parts[0], "the first second should already give MP3 frames"
    data = b"".join(parts)
    assert data[:2] == b"\xff\xf3"  # MPEG-2 layer III frame sync: nothing to strip for streaming
    samples, rate = decode(data)
    assert rate == RATE
    # One placeholder frame plus encoder padding; never less audio than went in.
    assert len(pcm) // 2 <= len(samples) <= len(pcm) // 2 + 3 * 1152
    assert abs(dominant_hz(samples, rate) - 440) < 5


def test_whole_mp3_has_exact_length():
    pcm = tone(1.0, freq=300)
    samples, rate = decode(encode("mp3", pcm, RATE))
    assert rate == RATE and len(samples) == len(pcm) // 2
    assert abs(dominant_hz(samples, rate) - 300) < 5


def test_opus_resamples_22050_to_24000_and_streams_ogg_pages():
    pcm = tone(3.0, freq=500)
    parts = stream("opus", pcm, 2 * RATE)
    assert parts[0][:4] == b"OggS"
    assert sum(1 for p in parts if p) >= 2, "pages should leave before close"
    samples, rate = decode(b"".join(parts))
    assert rate == 24000
    assert abs(len(samples) / rate - 3.0) < 0.05
    assert abs(dominant_hz(samples, rate) - 500) < 5
    whole, whole_rate = decode(encode("opus", pcm, RATE))
    assert whole_rate == 24000 and abs(len(whole) / whole_rate - 3.0) < 0.05


def test_opus_keeps_a_rate_it_supports():
    pcm = tone(1.0, rate=16000)
    samples, rate = decode(b"".join(stream("opus", pcm, 16000, rate=16000)))
    assert rate == 16000 and abs(len(samples) - 16000) < 400


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_write_after_close_raises_and_close_is_idempotent(fmt):
    enc = StreamEncoder(fmt, RATE)
    enc.write(tone(0.1))
    enc.close()
    assert enc.close() == b""
    with pytest.raises(ValueError):
        enc.write(b"\0\0")


@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac"])
def test_streams_are_independent(fmt):
    # Two encoders interleaved must not mix their bytes (each owns its own sink).
    a, b = StreamEncoder(fmt, RATE), StreamEncoder(fmt, RATE)
    pa, pb = tone(1.0, 300), tone(1.0, 700)
    out_a = a.write(pa)
    out_b = b.write(pb)
    out_a += a.close()
    out_b += b.close()
    sa, ra = decode(out_a)
    sb, rb = decode(out_b)
    assert abs(dominant_hz(sa, ra) - 300) < 5
    assert abs(dominant_hz(sb, rb) - 700) < 5
