"""OpenAI's streamed speech events (``stream_format: "sse"``) around any audio byte stream.

Each piece of encoded audio becomes ``{"type": "speech.audio.delta", "audio": <base64>}``; a
stream that ends whole closes with ``speech.audio.done`` and its usage, one that was cut (the
deadline, a failed upstream) with an ``error`` event instead, so a client never takes half an
answer for all of it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hoosh_edge.errors import InvalidRequest

STREAM_FORMATS = ("audio", "sse")


def stream_format(body: dict[str, Any]) -> str:
    """The request's ``stream_format`` (``audio`` when absent); anything else is a 400."""
    value = body.get("stream_format") or "audio"
    if value not in STREAM_FORMATS:
        raise InvalidRequest(
            f"'stream_format' must be one of {', '.join(STREAM_FORMATS)}, got {value!r}.",
            param="stream_format",
        )
    return value


def _event(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def sse_frames(audio: Iterable[bytes], whole: Callable[[], bool], usage: dict[str, Any]
               ) -> Iterator[bytes]:  # fmt: skip
    """Wrap ``audio`` in speech events; ``whole()`` says, at the end, whether it ran to its end."""
    for piece in audio:
        if piece:
            yield _event({"type": "speech.audio.delta",
                          "audio": base64.b64encode(piece).decode("ascii")})  # fmt: skip
    if whole():
        yield _event({"type": "speech.audio.done", "usage": usage})
    else:
        yield _event({"type": "error", "error": {
            "message": "The speech stream ended early (see the gateway's log).",
            "type": "server_error", "param": None, "code": "stream_incomplete"}})  # fmt: skip
