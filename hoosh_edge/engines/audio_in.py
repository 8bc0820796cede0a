"""Turn uploaded audio bytes into what whisper.cpp wants: 16 kHz mono float32 samples.

Decoding is libsndfile's (through ``soundfile``): WAV in any sample rate, channel count and PCM
width (8/16/24/32-bit int, 32/64-bit float), FLAC, Ogg Vorbis/Opus and MP3. Resampling is soxr's
(``soxr``), a band-limited resampler, so content above 8 kHz is filtered out instead of folding
back into the speech band. The sample rate always comes from the file's own header.

``sniff_audio_kind`` names a container from its first bytes, for uploads whose Content-Type or
file name is wrong or missing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from hoosh_edge.errors import InvalidRequest

TARGET_RATE = 16000
# What libsndfile can open; WebM and MP4 need a demuxer this process does not have.
DECODABLE_KINDS = frozenset({"wav", "flac", "ogg", "mp3"})


@dataclass(frozen=True)
class DecodedAudio:
    """Audio ready for whisper, plus what the upload originally was."""

    samples: np.ndarray  # float32, mono, TARGET_RATE
    duration_s: float
    sample_rate: int  # of the upload
    channels: int  # of the upload
    kind: str | None = None  # sniffed container, when known


def _skip_id3(data: bytes) -> int:
    """Offset just past an ID3v2 tag at the start of ``data`` (0 if there is none)."""
    if len(data) < 10 or data[:3] != b"ID3":
        return 0
    size = 0
    for b in data[6:10]:  # "syncsafe" integer: 7 bits per byte
        size = (size << 7) | (b & 0x7F)
    footer = 10 if data[5] & 0x10 else 0
    return 10 + size + footer


def _is_mpeg_audio_frame(head: bytes) -> bool:
    """True for an MPEG-1/2/2.5 layer I-III frame header (not AAC's ADTS, whose layer bits are 0)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 0b11, (head[1] >> 1) & 0b11
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 0b11
    return version != 0b01 and layer != 0 and bitrate != 0b1111 and rate != 0b11


def sniff_audio_kind(data: bytes) -> str | None:
    """Name the audio container by its magic bytes: wav, flac, ogg, mp3, webm, mp4, m4a, aac."""
    head = bytes(data[:64])
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: WebM, or its parent format Matroska
        return "webm"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        return "m4a" if brand in (b"M4A ", b"M4B ", b"M4P ") else "mp4"
    start = _skip_id3(data)
    if start:
        after = bytes(data[start : start + 4])
        if after == b"fLaC":
            return "flac"
        # An ID3 tag in front of anything else is, in practice, an MP3.
        return "mp3"
    if _is_mpeg_audio_frame(head):
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac"  # ADTS-framed AAC
    return None


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="file")


def decode_audio(data: bytes, *, max_seconds: float = 1800) -> DecodedAudio:
    """Decode an uploaded file to 16 kHz mono float32; raise InvalidRequest if it cannot be used."""
    if not data:
        raise _bad("The audio file is empty.")
    kind = sniff_audio_kind(data)
    if kind in ("webm", "mp4", "m4a", "aac"):
        raise _bad(
            f"Audio in {kind} format cannot be decoded on this device; send wav, flac, ogg or mp3."
        )
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sf:
            rate, channels = int(sf.samplerate), int(sf.channels)
            if rate <= 0 or channels <= 0:
                raise _bad("The audio file has no valid sample rate or channel count.")
            limit = int(max_seconds * rate)
            # Read at most one frame past the limit: a lying header cannot make us decode hours.
            frames = sf.read(frames=limit + 1, dtype="float32", always_2d=True)
    except InvalidRequest:
        raise
    except (RuntimeError, ValueError, TypeError, EOFError, OSError) as exc:
        # soundfile raises LibsndfileError (a RuntimeError) for unknown or corrupt data.
        raise _bad(f"Could not decode the audio file: {exc}") from exc
    if frames.shape[0] > limit:
        raise _bad(f"The audio is longer than the limit of {max_seconds:g} seconds.")
    if frames.shape[0] == 0:
        raise _bad("The audio file contains no samples.")
    duration = frames.shape[0] / rate
    mono = frames.mean(axis=1) if channels > 1 else frames[:, 0]
    # Float WAVs may carry NaN/inf; whisper's log-mel would turn one into a silent garbage window.
    mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    samples = mono if rate == TARGET_RATE else soxr.resample(mono, rate, TARGET_RATE, quality="HQ")
    return DecodedAudio(
        samples=np.ascontiguousarray(samples, dtype=np.float32),
        duration_s=duration,
        sample_rate=rate,
        channels=channels,
        kind=kind,
    )
