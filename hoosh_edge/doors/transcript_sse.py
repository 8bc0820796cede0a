"""Streamed transcriptions (``stream=true``) and the form fields that shape a transcript.

OpenAI streams a transcript as ``transcript.text.delta`` events and one ``transcript.text.done``.
Here every model streams, whisper-1 included (OpenAI ignores ``stream`` for it, which leaves an
SDK's stream silently empty): a delta per segment, sent once whisper.cpp has decoded the clip
(it decodes 30-second windows whole), then the done event with the full text and the seconds
billed. A stream is the ``json`` answer framed as events, so both share one cache entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from flask import request

from hoosh_edge.doors.bodies import form_text
from hoosh_edge.errors import InvalidRequest

GRANULARITIES = ("segment", "word")
# Form fields the transcription endpoints read themselves; any other one goes into the cache key.
KNOWN_FIELDS = {"model", "language", "prompt", "temperature", "response_format", "stream",
                "timestamp_granularities[]", "timestamp_granularities"}  # fmt: skip


def granularities(fmt: str) -> list[str]:
    """``timestamp_granularities[]`` (sorted, no repeats); only verbose_json carries them."""
    asked = [*request.form.getlist("timestamp_granularities[]"),
             *request.form.getlist("timestamp_granularities")]  # fmt: skip
    for value in asked:
        if value not in GRANULARITIES:
            raise InvalidRequest(
                f"'timestamp_granularities[]' values are 'segment' or 'word', got {value!r}.",
                param="timestamp_granularities[]",
            )
    if asked and fmt != "verbose_json":
        raise InvalidRequest(
            "'timestamp_granularities[]' needs response_format 'verbose_json'.",
            param="timestamp_granularities[]",
        )
    return sorted(set(asked))


def wants_stream(fmt: str) -> bool:
    """Whether ``stream`` is true; a stream carries text, so json or text answers only."""
    raw = (form_text("stream") or "false").strip().lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidRequest("'stream' must be true or false.", param="stream")
    stream = raw in ("true", "1")
    if stream and fmt not in ("json", "text"):
        raise InvalidRequest(
            "'stream' needs response_format 'json' or 'text'.", param="response_format"
        )
    return stream


def other_fields() -> dict[str, list[str]]:
    """Form fields the gateway does not read (e.g. ``include[]``): part of the cache key."""
    return {k: request.form.getlist(k) for k in sorted(request.form) if k not in KNOWN_FIELDS}


def _event(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def stream_events(body: bytes, duration_s: float) -> Iterator[bytes]:
    """A ``json`` transcription answer as OpenAI's transcript events."""
    doc = json.loads(body)
    text = doc.get("text") or ""
    pieces = [s.get("text") or "" for s in doc.get("segments") or ()] or [text]
    for i, piece in enumerate(pieces):
        if piece:
            yield _event({"type": "transcript.text.delta", "delta": piece if i == 0 else " " + piece,
                          "logprobs": None})  # fmt: skip
    usage = {"type": "duration", "seconds": math.ceil(duration_s)}
    yield _event({"type": "transcript.text.done", "text": text, "logprobs": None, "usage": usage})
