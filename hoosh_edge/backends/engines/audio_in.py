"""Turn uploaded audio bytes into what whisper.cpp wants: 16 kHz mono float32 samples.

Decoding is libsndfile's (through ``soundfile``): WAV in any sample rate, channel count and PCM
width (8/16/24/32-bit int, 32/64-bit float), FLAC, Ogg Vorbis/Opus and MP3. Resampling is soxr's
(``soxr``), a band-limited resampler, so content above 8 kHz is filtered out instead of folding
back into the speech band. The sample rate always comes from the file's own header.

The decoder never trusts a header for allocation: it checks the declared length (and frames ×
channels, the work it implies) against the limit before decoding, then reads in fixed-size
blocks, mixing down and resampling each block as it arrives, and stops at the declared count or
the limit. A FLAC that claims 2^36 samples, or thirty minutes of eight-channel silence that
compresses to under a megabyte, costs one block of memory and is refused with a 400.

``sniff_audio_kind`` names a container from its first bytes, for uploads whose Content-Type or
file name is wrong or missing.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from hoosh_edge.errors import DeadlineExceeded, InvalidRequest

TARGET_RATE = 16000
# What libsndfile can open; WebM and MP4 need a demuxer this process does not have.
DECODABLE_KINDS = frozenset({"wav", "flac", "ogg", "mp3"})
BLOCK_SAMPLES = 1 << 19  # samples (frames × channels) read at a time: 2 MiB of float32
MAX_CHANNELS = 64  # libsndfile allows 1024; no speech upload needs more than a handful
MAX_RATE = 768_000
WORK_SAMPLES_PER_S = 8 * 48_000  # decoding work allowed per second of the duration limit
SF_COUNT_MAX = 2**63 - 1  # libsndfile's "length unknown"
# The output buffer starts at most this big (10 minutes at 16 kHz, 38 MB) and grows as data comes.
_FIRST_OUTPUT = 600 * TARGET_RATE
# Containers whose frame count libsndfile estimates (MP3) or reads from the last page (Ogg):
# a small difference from what decodes is normal there, not a sign of a lying header.
_ESTIMATED_LENGTH_FORMATS = frozenset({"MP3", "OGG"})


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


def _bad(message: str, code: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param="file", code=code)


@dataclass(frozen=True)
class _Caps:
    """How many frames of one file may be decoded, and the message when there are more."""

    frames: int
    message: str

    @classmethod
    def for_file(cls, rate: int, channels: int, max_seconds: float, setting: str) -> _Caps:
        by_time = int(max_seconds * rate)
        # Work grows with frames × channels: 8 channels at 48 kHz for the whole limit is the most.
        by_work = int(max_seconds * WORK_SAMPLES_PER_S) // channels
        if by_work < by_time:
            return cls(by_work, (
                f"The audio has {channels} channels at {rate} Hz; this server decodes at most "
                f"{by_work / rate:g} s of that (as much as {max_seconds:g} s of 8 channels at "
                f"48 kHz, {setting})."))  # fmt: skip
        return cls(by_time, f"The audio is longer than the limit of {max_seconds:g} s ({setting}).")


def _declared_frames(sf: soundfile.SoundFile) -> int | None:
    """The frame count the header states, or None where libsndfile does not know it."""
    frames = int(sf.frames)
    return frames if 0 < frames < SF_COUNT_MAX else None


def decode_problem(exc: BaseException) -> str:
    """What was wrong with an upload, in words (libsndfile's own, never a Python repr)."""
    detail = str(getattr(exc, "error_string", "") or exc).strip().rstrip(".")
    detail = re.sub(r"\s*<[^>]* at 0x[0-9a-f]+>:?", "", detail).strip(" :")
    if not detail or "format not recognised" in detail.lower():
        return "its format is not one this gateway reads (send wav, flac, ogg or mp3)."
    return f"{detail[0].lower()}{detail[1:]} (the file may be cut short or damaged)."


def decode_audio(
    data: bytes,
    *,
    max_seconds: float = 600.0,
    should_stop: Callable[[], bool] | None = None,
    setting: str = "local.stt.max_audio_s",
) -> DecodedAudio:
    """Decode an uploaded file to 16 kHz mono float32; raise InvalidRequest if it cannot be used.

    Reads in blocks of at most ``BLOCK_SAMPLES`` samples, mixing down and resampling each block as
    it comes, so memory is the output (at most ``max_seconds`` at 16 kHz) plus one block, whatever
    the header claims. ``should_stop`` is asked between blocks; when it says so, the decoder raises
    ``DeadlineExceeded``. ``setting`` names the limit in messages.
    """
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
            if not 0 < rate <= MAX_RATE:
                raise _bad(f"The audio file's sample rate ({rate} Hz) is not usable.")
            if not 0 < channels <= MAX_CHANNELS:
                raise _bad(
                    f"The audio file has {channels} channels; at most {MAX_CHANNELS} are accepted."
                )
            caps = _Caps.for_file(rate, channels, max_seconds, setting)
            declared = _declared_frames(sf)
            if declared is not None and declared > caps.frames:
                raise _bad(f"{caps.message} Its header says {declared / rate:.0f} s.",
                           "audio_too_long")  # fmt: skip
            samples, frames = _decode_blocks(sf, rate, channels, caps, declared, should_stop)
            exact = sf.format not in _ESTIMATED_LENGTH_FORMATS
    except InvalidRequest:
        raise
    except (RuntimeError, ValueError, TypeError, EOFError, OSError) as exc:
        # soundfile raises LibsndfileError (a RuntimeError) for unknown or corrupt data.
        raise _bad(f"Could not decode the audio file: {decode_problem(exc)}") from exc
    if frames == 0:
        raise _bad("The audio file contains no samples.")
    # libsndfile 1.2 reports most of these as a read error (above); a short read says the same.
    if exact and declared is not None and declared - frames > rate // 20:
        raise _bad(
            f"The audio file is truncated or does not match its header: the header declares "
            f"{declared / rate:.1f} s, but the data ends after {frames / rate:.1f} s.",
            "audio_truncated",
        )
    return DecodedAudio(
        samples=samples, duration_s=frames / rate, sample_rate=rate, channels=channels, kind=kind
    )


def _decode_blocks(
    sf: soundfile.SoundFile,
    rate: int,
    channels: int,
    caps: _Caps,
    declared: int | None,
    should_stop: Callable[[], bool] | None,
) -> tuple[np.ndarray, int]:
    """Read up to ``caps.frames`` (+1 to see an overrun) in blocks; returns (16 kHz mono, frames)."""
    block = np.empty((max(1024, BLOCK_SAMPLES // channels), channels), dtype=np.float32)
    ratio = TARGET_RATE / rate
    expected = min(declared if declared is not None else caps.frames, caps.frames)
    out = _Output(int(expected * ratio) + 64)
    stream = None if rate == TARGET_RATE else soxr.ResampleStream(
        rate, TARGET_RATE, 1, dtype="float32", quality="HQ")  # fmt: skip
    frames = 0
    while True:
        if should_stop is not None and should_stop():
            raise DeadlineExceeded("The request ran past its deadline while decoding the audio.")
        # One frame past the cap tells a file that is too long from one exactly at the limit.
        want = min(len(block), caps.frames + 1 - frames)
        try:
            got = sf.read(frames=want, dtype="float32", always_2d=True, out=block[:want])
        except RuntimeError as exc:  # LibsndfileError: the data stops making sense mid-file
            raise _bad(f"The audio file is truncated or does not match its header ({exc}).",
                       "audio_truncated") from exc  # fmt: skip
        n = len(got)
        if n == 0:
            break
        frames += n
        if frames > caps.frames:
            raise _bad(caps.message, "audio_too_long")
        mono = got.mean(axis=1, dtype=np.float32) if channels > 1 else got[:, 0]
        # Float WAVs may carry NaN/inf; whisper's log-mel would turn one into a silent garbage window.
        mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
        out.append(mono if stream is None else stream.resample_chunk(mono, last=False))
        if n < want:
            break
    if stream is not None:
        out.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return out.result(), frames


class _Output:
    """A float32 buffer that grows in place; its first size comes from a header capped first."""

    def __init__(self, capacity: int) -> None:
        self._buf = np.empty(min(max(1024, capacity), _FIRST_OUTPUT), dtype=np.float32)
        self._n = 0

    def append(self, chunk: np.ndarray) -> None:
        end = self._n + len(chunk)
        if end > len(self._buf):
            # realloc, which moves large blocks by remapping pages: no second copy at the peak.
            self._buf.resize(max(end, len(self._buf) * 3 // 2), refcheck=False)
        self._buf[self._n : end] = chunk
        self._n = end

    def result(self) -> np.ndarray:
        self._buf.resize(self._n, refcheck=False)  # give back what a generous header reserved
        return self._buf
