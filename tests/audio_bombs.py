"""Hostile audio uploads, made on the spot (nothing ships): for the tests and benchmarks/hostile.py.

- ``silence_flac``: minutes of multi-channel silence that FLAC packs into well under a megabyte,
  but that decodes to gigabytes of float32.
- ``lying_flac``: a short FLAC whose STREAMINFO claims ``total_samples`` (up to 2^36 - 1).
- ``wav_claiming_more``: a WAV whose RIFF and data sizes promise far more bytes than it holds.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile

_STREAMINFO_SAMPLES_AT = 4 + 4 + 10  # "fLaC", block header, min/max block and frame sizes


def silence_flac(seconds: float, *, channels: int = 8, rate: int = 48000) -> bytes:
    """``seconds`` of silence on ``channels`` channels at ``rate``: about 400 bytes a second."""
    buf = io.BytesIO()
    block = np.zeros((rate * 10, channels), dtype=np.int16)
    left = int(seconds * rate)
    with soundfile.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        while left > 0:  # ten seconds at a time: the whole bomb never sits in this process
            f.write(block[: min(left, len(block))])
            left -= len(block)
    return buf.getvalue()


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    """A sine tone as float32 samples."""
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def set_flac_total_samples(data: bytes, total: int) -> bytes:
    """``data`` with the STREAMINFO total-samples field (36 bits) set to ``total``."""
    if data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        raise ValueError("not a FLAC stream starting with STREAMINFO")
    at = _STREAMINFO_SAMPLES_AT
    (packed,) = struct.unpack(">Q", data[at : at + 8])
    mask = (1 << 36) - 1
    packed = (packed & ~mask) | (total & mask)
    return data[:at] + struct.pack(">Q", packed) + data[at + 8 :]


def lying_flac(total_samples: int = (1 << 36) - 1, *, seconds: float = 1.0,
               rate: int = 16000, channels: int = 1) -> bytes:  # fmt: skip
    """A real ``seconds``-long FLAC whose header claims ``total_samples`` frames."""
    buf = io.BytesIO()
    data = np.repeat(tone(seconds, rate)[:, None], channels, axis=1)
    soundfile.write(buf, data, rate, format="FLAC", subtype="PCM_16")
    return set_flac_total_samples(buf.getvalue(), total_samples)


def wav_claiming_more(seconds: float = 1.0, *, claimed_bytes: int = 4_000_000_000,
                      rate: int = 16000) -> bytes:  # fmt: skip
    """A 16-bit mono WAV of ``seconds`` whose headers say the data is ``claimed_bytes`` long."""
    buf = io.BytesIO()
    soundfile.write(buf, tone(seconds, rate), rate, format="WAV", subtype="PCM_16")
    wav = bytearray(buf.getvalue())
    at = wav.index(b"data")
    wav[at + 4 : at + 8] = struct.pack("<I", claimed_bytes)
    wav[4:8] = struct.pack("<I", min(0xFFFFFFFF, claimed_bytes + at))
    return bytes(wav)


def encode(samples: np.ndarray, rate: int, fmt: str = "FLAC", subtype: str = "PCM_16") -> bytes:
    """``samples`` written by libsndfile in ``fmt`` (Ogg a block at a time: big Vorbis writes crash)."""
    buf = io.BytesIO()
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    step = 8192 if fmt == "OGG" else max(1, len(samples))
    with soundfile.SoundFile(buf, "w", rate, channels, format=fmt, subtype=subtype) as f:
        for i in range(0, len(samples), step):
            f.write(samples[i : i + step])
    return buf.getvalue()
