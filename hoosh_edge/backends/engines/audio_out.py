"""Encoders for the ``response_format`` of ``/v1/audio/speech``, streamable sentence by sentence.

Input is always int16 mono little-endian PCM at the voice's native rate (22,050 Hz for most Piper
voices). Formats:

- ``pcm``: the raw input bytes. OpenAI's ``pcm`` is 24 kHz; ours is the voice's native rate (no
  resampling, no quality loss), which the API layer states in a header.
- ``wav``: a hand-written 44-byte header, then PCM. A stream cannot know its length up front, so
  ``StreamEncoder`` writes the RIFF and data sizes as 0xFFFFFFFF ("unknown / read to the end", what
  streaming WAV players and ffmpeg accept); ``encode`` writes exact sizes.
- ``flac``, ``mp3``, ``opus`` (Ogg/Opus): libsndfile (>= 1.1) through ``soundfile``, which only
  appends while encoding and on close seeks back to patch headers.
  ``mp3`` streams: constant bitrate (~80 kbps), so a decoder that sizes the stream from its length
  gets it right; the first frame is libsndfile's placeholder for the LAME tag, which a stream
  cannot patch any more, so a streamed MP3 starts with one silent frame (26 ms).
  ``opus`` streams as Ogg pages (about one a second). Opus only takes 8/12/16/24/48 kHz, so other
  rates are upsampled with ``soxr`` (streaming mode) to the next one, e.g. 22,050 -> 24,000.
  ``flac`` is buffered until ``close``: a FLAC whose STREAMINFO says "length unknown" is legal but
  some decoders (libsndfile among them) refuse it, and speech compresses to little anyway.
- ``aac``: not supported (libsndfile has no AAC encoder); asking for it raises ``InvalidRequest``.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from hoosh_edge.errors import InvalidRequest

SUPPORTED_FORMATS: tuple[str, ...] = ("mp3", "opus", "flac", "wav", "pcm")

_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # RFC 7845: Ogg/Opus files are audio/ogg
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",  # not audio/L16: that type means big-endian, ours is little-endian
}
# libsndfile container and codec for each format it encodes.
_BUFFERED = frozenset({"flac"})  # formats StreamEncoder holds back until close
_SNDFILE = {
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),
}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_UNKNOWN_SIZE = 0xFFFFFFFF


def check_format(fmt: str) -> str:
    """Return ``fmt`` normalised, or raise ``InvalidRequest`` naming the supported formats."""
    norm = str(fmt or "").strip().lower()
    if norm not in SUPPORTED_FORMATS:
        raise InvalidRequest(
            f"response_format {fmt!r} is not supported; use one of {', '.join(SUPPORTED_FORMATS)}",
            param="response_format",
            code="unsupported_response_format",
        )
    return norm


def content_type(fmt: str) -> str:
    """The HTTP Content-Type for a response format."""
    return _CONTENT_TYPES[check_format(fmt)]


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """A 44-byte PCM WAV header for int16 mono; ``data_bytes=None`` means unknown (streaming)."""
    if data_bytes is None:
        riff_size = data_size = _UNKNOWN_SIZE
    else:
        data_size = data_bytes
        riff_size = 36 + data_bytes
    byte_rate = sample_rate * 2
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, byte_rate, 2, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


class _Sink:
    """A file-like object for libsndfile's virtual I/O that can hand out bytes as they appear.

    Bytes before ``_base`` were already given to the caller. Writes there (libsndfile patching a
    header on close) are dropped when streaming; without streaming nothing is ever handed out early,
    so every patch lands.
    """

    def __init__(self) -> None:
        self._buf = bytearray()  # bytes from offset _base on
        self._base = 0
        self._pos = 0

    def write(self, data: Any) -> int:
        data = bytes(data)
        start = self._pos - self._base
        skip = max(0, -start)  # the part aimed at bytes already sent
        if skip < len(data):
            start += skip
            end = start + len(data) - skip
            if end > len(self._buf):
                self._buf.extend(b"\0" * (end - len(self._buf)))
            self._buf[start:end] = data[skip:]
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        size = self._base + len(self._buf)
        self._pos = {0: offset, 1: self._pos + offset, 2: size + offset}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        start = max(0, self._pos - self._base)
        data = bytes(self._buf[start:] if n < 0 else self._buf[start : start + n])
        self._pos += len(data)
        return data

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        """Hand out everything written so far; later writes before this point are dropped."""
        out = bytes(self._buf)
        self._base += len(self._buf)
        self._buf.clear()
        return out


class StreamEncoder:
    """Encode int16 PCM chunks into one audio stream: ``write`` returns the bytes ready so far."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        self.format = check_format(fmt)
        self.sample_rate = int(sample_rate)
        self.content_type = _CONTENT_TYPES[self.format]
        self._odd = b""  # a lone byte of a sample split across two writes
        self._started = False
        self._closed = False
        self._file: Any = None
        self._sink: _Sink | None = None
        self._resampler: Any = None
        if self.format in _SNDFILE:
            self._open_sndfile()

    def _open_sndfile(self) -> None:
        import soundfile

        container, codec = _SNDFILE[self.format]
        rate = self.sample_rate
        if self.format == "opus" and rate not in _OPUS_RATES:
            import soxr

            # Upsample to the next rate Opus accepts; Opus codes at 48 kHz inside anyway.
            rate = next((r for r in _OPUS_RATES if r >= rate), 48000)
            self._resampler = soxr.ResampleStream(self.sample_rate, rate, 1, dtype="int16")
        self._sink = _Sink()
        extra: dict[str, Any] = {}
        if self.format == "mp3":
            # CBR at libsndfile's mid level: ~80 kbps for 22 kHz mono speech.
            extra = {"bitrate_mode": "CONSTANT", "compression_level": 0.5}
        self._file = soundfile.SoundFile(
            self._sink, "w", samplerate=rate, channels=1, format=container, subtype=codec, **extra
        )

    def write(self, pcm: bytes) -> bytes:
        """Add int16 mono LE PCM; return encoded bytes that can be sent now (maybe empty)."""
        if self._closed:
            raise ValueError("StreamEncoder is closed")
        data = self._odd + bytes(pcm)
        whole = len(data) - len(data) % 2
        self._odd = data[whole:]
        data = data[:whole]
        if self.format == "pcm":
            return data
        if self.format == "wav":
            head = b"" if self._started else wav_header(self.sample_rate)
            self._started = True
            return head + data
        samples = np.frombuffer(data, dtype="<i2")
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        if samples.size:
            self._file.write(samples)
        if self.format in _BUFFERED:
            return b""
        return self._sink.take() if self._sink is not None else b""

    def close(self) -> bytes:
        """Finish the stream and return its last bytes."""
        if self._closed:
            return b""
        self._closed = True
        if self.format == "pcm":
            return b""
        if self.format == "wav":
            return b"" if self._started else wav_header(self.sample_rate)
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            if tail.size:
                self._file.write(tail)
        self._file.close()
        return self._sink.take() if self._sink is not None else b""


def encode(fmt: str, pcm: bytes, sample_rate: int) -> bytes:
    """Encode a complete int16 mono PCM buffer into a finished file with exact headers."""
    fmt = check_format(fmt)
    pcm = bytes(pcm)[: len(pcm) - len(pcm) % 2]
    if fmt == "pcm":
        return pcm
    if fmt == "wav":
        return wav_header(sample_rate, len(pcm)) + pcm
    # Nothing is taken from the sink until close, so libsndfile's header patches all land.
    enc = StreamEncoder(fmt, sample_rate)
    sink = enc._sink
    assert sink is not None
    samples = np.frombuffer(pcm, dtype="<i2")
    if enc._resampler is not None:
        samples = enc._resampler.resample_chunk(samples, last=True)
        enc._resampler = None
    if samples.size:
        enc._file.write(samples)
    enc._closed = True
    enc._file.close()
    return sink.take()
