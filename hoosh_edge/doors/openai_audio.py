"""POST /v1/audio/transcriptions, /v1/audio/translations and /v1/audio/speech: OpenAI's audio
endpoints. They parse the form or JSON, hand the pipeline (pipeline/audio.py) and frame the
answer: the body as it is, or OpenAI's SSE events."""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, Response, g, request

from hoosh_edge.backends.engines.audio_in import sniff_audio_kind
from hoosh_edge.doors import transcript_sse
from hoosh_edge.doors.bodies import form_text
from hoosh_edge.doors.common import (
    cache_ask,
    call_context,
    caller,
    gateway,
    read_json,
    served_headers,
)
from hoosh_edge.doors.speech_sse import sse_frames, stream_format
from hoosh_edge.errors import InvalidRequest, PayloadTooLarge
from hoosh_edge.formats.transcripts import FORMATS
from hoosh_edge.limits import Deadline
from hoosh_edge.pipeline.audio import (
    SpeechAsk,
    Transcription,
    speak,
    transcribe,
    transcription_targets_for,
)

bp = Blueprint("audio", __name__)

_ACCEPTED_PREFIXES = ("audio/", "video/")


def _form_float(name: str, default: float, lo: float, hi: float) -> float:
    raw = form_text(name)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a number, got {raw!r}.", param=name) from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise InvalidRequest(f"'{name}' must be between {lo:g} and {hi:g}.", param=name)
    return v


def _upload(limit: int) -> tuple[bytes, str]:
    """The uploaded audio and its file name, refused when it is plainly not audio."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Audio uploads are limited to {limit // (1024 * 1024)} MB.")
    if not (request.mimetype or "").startswith("multipart/form-data"):
        raise InvalidRequest(
            "Send the audio as multipart/form-data with a 'file' field.", param="file"
        )
    f = request.files.get("file")
    if f is None:
        raise InvalidRequest("'file' is required: the audio to transcribe.", param="file")
    data = f.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"Audio uploads are limited to {limit // (1024 * 1024)} MB.")
    if not data:
        raise InvalidRequest("The uploaded file is empty.", param="file")
    ctype = (f.mimetype or "").lower()
    declared_ok = ctype.startswith(_ACCEPTED_PREFIXES) or ctype in ("application/octet-stream", "")
    if not declared_ok and sniff_audio_kind(data) is None:
        raise InvalidRequest(
            f"The uploaded file has Content-Type '{ctype}' and does not look like audio; send "
            "wav, flac, ogg or mp3 (audio/*, video/* or application/octet-stream).",
            param="file",
        )
    return data, f.filename or "audio"


def _transcribe(translate: bool) -> Response:
    gw = gateway()
    deadline = Deadline(gw.config.server.request_timeout_s)
    model = form_text("model") or ""
    if not model:
        raise InvalidRequest("'model' is required (e.g. whisper-1).", param="model")
    who = caller()
    targets = transcription_targets_for(gw, who, model, translate)
    fmt = form_text("response_format") or "json"
    if fmt not in FORMATS:
        raise InvalidRequest(
            f"'response_format' must be one of {', '.join(FORMATS)}.", param="response_format"
        )
    temperature = _form_float("temperature", 0.0, 0.0, 1.0)
    timing = transcript_sse.granularities(fmt)
    stream = transcript_sse.wants_stream(fmt)
    data, filename = _upload(gw.config.server.max_audio_bytes)
    ask = Transcription(model=model, audio=data, filename=filename, translate=translate,
                        language=form_text("language") or None, prompt=form_text("prompt") or None,
                        temperature=temperature, response_format=fmt, timing=timing,
                        other=transcript_sse.other_fields() or None)  # fmt: skip
    t = transcribe(gw, ask, targets, who, call_context(), cache_ask(), deadline, stream=stream)
    if t.served.fields:
        g.log_fields = t.served.fields
    if stream:
        events = transcript_sse.stream_events(t.body, t.duration_s)
        resp = Response(events, mimetype="text/event-stream")
    else:
        resp = Response(t.body, mimetype=t.mimetype)
    return served_headers(resp, t.served)


@bp.post("/v1/audio/transcriptions")
def transcriptions() -> Response:
    return _transcribe(translate=False)


@bp.post("/v1/audio/translations")
def translations() -> Response:
    return _transcribe(translate=True)


def _speech_request(body: Any, max_chars: int) -> tuple[SpeechAsk, str]:
    """The validated request and its ``stream_format``."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("'input' is required: the text to speak.", param="input")
    if len(text) > max_chars:
        raise InvalidRequest(
            f"'input' is {len(text)} characters; the limit is {max_chars} "
            "(local.tts.max_input_chars).",
            param="input",
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required (e.g. tts-1 or piper).", param="model")
    voice = body.get("voice") or "alloy"
    if not isinstance(voice, str):
        raise InvalidRequest("'voice' must be a string.", param="voice")
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
        raise InvalidRequest("'speed' must be a number from 0.25 to 4.0.", param="speed")
    fmt = body.get("response_format") or "mp3"
    if not isinstance(fmt, str):
        raise InvalidRequest("'response_format' must be a string.", param="response_format")
    sse = stream_format(body)
    # The gateway frames SSE itself: a provider is asked for plain audio.
    upstream = {k: v for k, v in body.items() if k not in ("model", "stream_format")}
    upstream.update(input=text, voice=voice, speed=float(speed), response_format=fmt)
    ask = SpeechAsk(text=text, model=model, voice=voice, speed=float(speed),
                    response_format=fmt, body=upstream)  # fmt: skip
    return ask, sse


@bp.post("/v1/audio/speech")
def speech() -> Response:
    gw = gateway()
    deadline = Deadline(gw.config.server.request_timeout_s)
    ask, sse = _speech_request(
        read_json(gw.config.server.max_body_bytes), gw.config.tts.max_input_chars
    )
    out = speak(gw, ask, caller(), call_context(), cache_ask(), deadline)
    if out.served.fields:
        g.log_fields = out.served.fields
    if sse == "sse":
        usage = {"input_characters": len(ask.text)}  # what speech is billed by here
        events = sse_frames(out.chunks, lambda: out.whole, usage)
        resp = Response(events, mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
    else:
        resp = Response(out.chunks, mimetype=out.content_type)
    return served_headers(resp, out.served)
