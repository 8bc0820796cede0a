"""Wyoming's framing, bounded: a JSON header line, then ``data_length`` bytes of JSON merged over
its ``data``, then ``payload_length`` bytes of binary.

The ``wyoming`` package's own ``read_event`` reads a line of any length and trusts both lengths,
so a peer could make the gateway buffer gigabytes; this reader refuses a line, a data block or a
payload over the configured bounds before reading it, and garbage (not JSON, not an object, a
length that is no integer) with a ``ProtocolViolation``. Writing is the package's ``write_event``.
Below the framing: the PCM and transcript pieces that audio and transcript events carry.
"""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from wyoming.event import Event, write_event

from hoosh_edge.config.schema import WyomingConfig
from hoosh_edge.errors import ProtocolViolation

__all__ = ["Event", "read_event", "write_event", "data_str", "data_int", "data_dict", "wav_bytes",
           "transcript_pieces", "pcm_pieces"]  # fmt: skip


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolViolation(f"'{key}' must be a non-negative integer, got {value!r}.",
                                code="bad_length")  # fmt: skip
    if value > limit:
        raise ProtocolViolation(f"'{key}' is {value} bytes; the limit is {limit} "
                                f"(wyoming.max_{key.split('_')[0]}_bytes).",
                                code=f"{key.split('_')[0]}_too_large")  # fmt: skip
    return value


def _exactly(rfile: BinaryIO, n: int) -> bytes | None:
    """``n`` bytes, or None when the peer closed first."""
    data = rfile.read(n)
    return data if data is not None and len(data) == n else None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ProtocolViolation(f"The event's {what} is not valid JSON.", code="bad_json") from None
    if not isinstance(doc, dict):
        raise ProtocolViolation(f"The event's {what} must be a JSON object.", code="bad_json")
    return doc


def read_event(rfile: BinaryIO, limits: WyomingConfig) -> Event | None:
    """The next event, or None when the peer closed the connection (also mid-event)."""
    line = rfile.readline(limits.max_line_bytes + 1)
    if not line:
        return None
    if not line.endswith(b"\n"):
        if len(line) > limits.max_line_bytes:
            raise ProtocolViolation(f"An event header line is longer than {limits.max_line_bytes} "
                                    "bytes (wyoming.max_line_bytes).", code="line_too_long")  # fmt: skip
        return None  # closed in the middle of a line
    header = _json_object(line, "header line")
    kind = header.get("type")
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise ProtocolViolation("The event has no 'type' (a short string).", code="bad_event")
    data = header.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolViolation("The event's 'data' must be a JSON object.", code="bad_event")
    data_length = _length(header, "data_length", limits.max_data_bytes)
    payload_length = _length(header, "payload_length", limits.max_payload_bytes)
    if data_length:
        raw = _exactly(rfile, data_length)
        if raw is None:
            return None
        data = {**data, **_json_object(raw, "data")}
    payload = None
    if payload_length:
        payload = _exactly(rfile, payload_length)
        if payload is None:
            return None
    return Event(type=kind, data=data, payload=payload)


def data_str(event: Event, key: str, *, required: bool = False, limit: int = 256) -> str | None:
    """``event.data[key]`` as a string (None when absent), or a ``ProtocolViolation``."""
    value = event.data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolViolation(f"'{event.type}' needs '{key}' as a string of at most {limit} "
                                "characters.", code="bad_data")  # fmt: skip
    return value


def data_int(event: Event, key: str, low: int, high: int) -> int:
    """``event.data[key]`` as an integer in ``[low, high]``, or a ``ProtocolViolation``."""
    value = event.data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolViolation(f"'{event.type}' needs '{key}' as an integer from {low} to "
                                f"{high}, got {value!r}.", code="bad_data")  # fmt: skip
    return value


def data_dict(event: Event, key: str) -> dict[str, Any]:
    """``event.data[key]`` as an object ({} when absent), or a ``ProtocolViolation``."""
    value = event.data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolViolation(f"'{event.type}' needs '{key}' as an object.", code="bad_data")
    return value


def wav_bytes(pcm: bytes, rate: int, width: int, channels: int) -> bytes:
    """Raw PCM in a WAV container: the pipeline decodes (and resamples) what an upload would."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def transcript_pieces(text: str, segments: list[str]) -> list[str]:
    """The transcript in per-segment pieces that join back into ``text`` exactly."""
    out, pos = [], 0
    for seg in (s.strip() for s in segments):
        at = text.find(seg, pos) if seg else -1
        if at < 0:
            continue
        out.append(text[pos : at + len(seg)])
        pos = at + len(seg)
    if not out:
        return [text] if text else []
    out[-1] += text[pos:]
    return out


def pcm_pieces(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Whole 16-bit samples in pieces of at most ``size`` bytes (a provider may split a sample)."""
    rest = b""
    for piece in chunks:
        data = rest + bytes(piece)
        cut = len(data) - len(data) % 2
        for i in range(0, cut, size):
            yield data[i : min(i + size, cut)]
        rest = data[cut:]
