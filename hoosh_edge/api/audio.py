"""POST /v1/audio/transcriptions, /v1/audio/translations and /v1/audio/speech, served locally."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

from flask import Blueprint, Response, g, jsonify, request

from ..errors import InvalidRequest, ModelNotFound, PayloadTooLarge, ServiceUnavailable
from ..threads import run_blocking
from .common import gateway, inference_headers, read_json

log = logging.getLogger(__name__)
bp = Blueprint("audio", __name__)

MAX_SPEECH_CHARS = 4096
_ACCEPTED_PREFIXES = ("audio/", "video/")


def _speech():
    gw = gateway()
    if gw.speech is None:
        raise ServiceUnavailable("On-device speech is not available on this gateway.")
    return gw, gw.speech


def _form_float(name: str, default: float, lo: float, hi: float) -> float:
    raw = request.form.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a number, got {raw!r}.", param=name) from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise InvalidRequest(f"'{name}' must be between {lo:g} and {hi:g}.", param=name)
    return v


def _upload() -> bytes:
    """The uploaded audio, refused when it is plainly not audio."""
    from ..engines.audio_in import sniff_audio_kind

    limit = gateway().config.server.max_audio_bytes
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
    return data


def _transcribe(translate: bool) -> Response:
    from ..engines.audio_in import decode_audio
    from ..engines.transcript_formats import FORMATS, render

    gw, speech = _speech()
    model_name = request.form.get("model") or ""
    if not model_name:
        raise InvalidRequest("'model' is required (e.g. whisper-1).", param="model")
    model = speech.stt_model(model_name)
    if model is None:
        known = ", ".join(speech.stt) or "none"
        raise ModelNotFound(
            f"The speech-to-text model '{model_name}' does not exist here. Available: {known}.",
            param="model",
        )
    fmt = request.form.get("response_format") or "json"
    if fmt not in FORMATS:
        raise InvalidRequest(
            f"'response_format' must be one of {', '.join(FORMATS)}.", param="response_format"
        )
    temperature = _form_float("temperature", 0.0, 0.0, 1.0)
    data = _upload()
    audio = run_blocking(decode_audio, data)
    transcript = speech.transcribe(
        model,
        audio.samples,
        language=request.form.get("language") or None,
        prompt=request.form.get("prompt") or None,
        temperature=temperature,
        translate=translate,
    )
    gw.metrics.inc("hoosh_audio_seconds_total", {"provider": "local", "kind": "stt"},
                   audio.duration_s, help="Seconds of audio transcribed")  # fmt: skip
    g.log_fields = {
        "provider": "local",
        "model": model,
        "audio_seconds": round(audio.duration_s, 2),
    }
    body, mimetype = render(transcript, fmt)
    resp = jsonify(body) if isinstance(body, dict) else Response(body, mimetype=mimetype)
    return inference_headers(resp, "local", model)


@bp.post("/v1/audio/transcriptions")
def transcriptions() -> Response:
    return _transcribe(translate=False)


@bp.post("/v1/audio/translations")
def translations() -> Response:
    return _transcribe(translate=True)


@bp.post("/v1/audio/speech")
def speech() -> Response:
    from ..engines.audio_out import StreamEncoder, check_format

    gw, local = _speech()
    body = read_json(gw.config.server.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("'input' is required: the text to speak.", param="input")
    if len(text) > MAX_SPEECH_CHARS:
        raise InvalidRequest(
            f"'input' is {len(text)} characters; the limit is {MAX_SPEECH_CHARS}.", param="input"
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required (e.g. tts-1 or piper).", param="model")
    voice_name = body.get("voice") or "alloy"
    if not isinstance(voice_name, str):
        raise InvalidRequest("'voice' must be a string.", param="voice")
    if not local.tts:
        raise ModelNotFound("No text-to-speech voice is installed here.", param="model")
    voice = local.voice(model, voice_name)
    fmt = check_format(body.get("response_format") or "mp3")
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
        raise InvalidRequest("'speed' must be a number from 0.25 to 4.0.", param="speed")

    pcm = local.synthesize(voice, text, float(speed))
    try:
        first = next(pcm)  # errors (queue full, no memory, bad text) still get a JSON answer
    except StopIteration:
        first = b""
    except BaseException:
        pcm.close()
        raise
    rate = local.sample_rate(voice)
    encoder = StreamEncoder(fmt, rate)
    gw.metrics.inc("hoosh_tts_characters_total", {"provider": "local"}, len(text),
                   help="Characters spoken")  # fmt: skip
    g.log_fields = {"provider": "local", "model": voice, "characters": len(text)}

    def frames() -> Iterator[bytes]:
        try:
            out = encoder.write(first)
            if out:
                yield out
            for chunk in pcm:
                out = encoder.write(chunk)
                if out:
                    yield out
            tail = encoder.close()
            if tail:
                yield tail
        except Exception:  # noqa: BLE001 - headers are gone; end the body early and log
            log.exception("request %s: speech synthesis failed mid-stream", g_request_id)
        finally:
            pcm.close()

    g_request_id = g.request_id
    resp = Response(frames(), mimetype=encoder.content_type)
    resp.headers["X-Hoosh-Sample-Rate"] = str(rate if fmt != "opus" else 24000)
    return inference_headers(resp, "local", voice)
