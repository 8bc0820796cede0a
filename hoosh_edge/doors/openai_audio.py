"""POST /v1/audio/transcriptions, /v1/audio/translations and /v1/audio/speech.

On-device whisper.cpp and Piper first; an OpenAI-type provider that serves the requested model
(``whisper-1``, ``tts-1`` ...) is the fallback, under the same budget rules as chat. Answers are
cached: speech by (voice, model, text, format, speed), transcriptions by audio hash + parameters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from typing import Any

import gevent
from flask import Blueprint, Response, g, request

from hoosh_edge.backends.providers.base import CallContext
from hoosh_edge.books.cache import directives, speech_key, transcription_key
from hoosh_edge.books.keys import require_model
from hoosh_edge.books.ledger import Usage
from hoosh_edge.doors import transcript_sse
from hoosh_edge.doors.bodies import form_text
from hoosh_edge.doors.common import gateway, inference_headers, read_json
from hoosh_edge.doors.speech_sse import sse_frames, stream_format
from hoosh_edge.errors import DeadlineExceeded, InvalidRequest, ModelNotFound, PayloadTooLarge
from hoosh_edge.limits import Deadline
from hoosh_edge.pipeline.router import Target
from hoosh_edge.threads import run_blocking, run_books

log = logging.getLogger(__name__)
bp = Blueprint("audio", __name__)

_ACCEPTED_PREFIXES = ("audio/", "video/")


class _LocalSpeechBackend:
    """The on-device speech engines as a router target."""

    name = "local"
    is_local = True


_LOCAL = _LocalSpeechBackend()


def _deadline() -> Deadline:
    """This request's ``server.request_timeout_s``, counted from now."""
    return Deadline(gateway().config.server.request_timeout_s)


def _past_deadline(deadline: Deadline) -> DeadlineExceeded:
    return DeadlineExceeded(f"The request did not finish within {deadline.seconds:g} s "
                            "(server.request_timeout_s).")  # fmt: skip


def _attempt_by(deadline: Deadline, gw: Any, targets: list[Target], call: Any, usage_for: Any):
    """``router.attempt`` that ends at the deadline: 504 ``deadline_exceeded``, no fallback after.

    ``usage_for(target)`` is what the target can be billed (its reservation).
    """
    ctx = CallContext(request_id=g.request_id)
    g.call_ctx = ctx  # the access line names the target tried last
    try:
        with gevent.Timeout(max(0.001, deadline.remaining()), _past_deadline(deadline)):
            return gw.router.attempt(targets, ctx, call, _admit(gw, usage_for))
    except DeadlineExceeded as exc:  # the engines' own stop says it less plainly
        raise _past_deadline(deadline) from exc


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


def _upload() -> tuple[bytes, str]:
    """The uploaded audio and its file name, refused when it is plainly not audio."""
    from hoosh_edge.backends.engines.audio_in import sniff_audio_kind

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
    return data, f.filename or "audio"


def _cloud_targets(gw: Any, model: str, method: str) -> list[Target]:
    return [Target(b, model) for b in gw.router.backends
            if not b.is_local and hasattr(b, method) and b.serves(model)]  # fmt: skip


def _admit(gw: Any, usage_for: Any):
    """The budget gate for one audio target; ``usage_for(target)`` is what it can be billed."""

    def admit(target: Target):
        if gw.accountant is None:
            return None
        return gw.accountant.admit(provider=target.provider, model=target.model,
                                   is_local=target.backend.is_local, estimate=usage_for(target),
                                   key=g.get("key_name"), request_id=g.request_id)  # fmt: skip

    return admit


def stt_usage(target: Target, duration_s: float) -> Usage:
    """Seconds of the decoded audio; a provider bills started seconds, so a cloud call rounds up."""
    seconds = duration_s if target.backend.is_local else float(math.ceil(duration_s))
    return Usage(audio_seconds=seconds)


def _settle(gw: Any, hold: Any, usage: Usage, resp: Response) -> None:
    if hold is None or gw.accountant is None:
        return
    gw.accountant.commit(hold, usage)
    resp.headers["X-Hoosh-Cost-USD"] = hold.cost_usd_text


def _transcribe(translate: bool) -> Response:
    from hoosh_edge.backends.engines.audio_in import decode_audio
    from hoosh_edge.formats.transcripts import FORMATS, render

    deadline = _deadline()
    gw = gateway()
    speech = gw.speech
    model_name = form_text("model") or ""
    if not model_name:
        raise InvalidRequest("'model' is required (e.g. whisper-1).", param="model")
    require_model(g.get("key"), model_name)
    targets: list[Target] = []
    local_id = speech.stt_model(model_name, translate) if speech is not None else None
    english_only = bool(local_id and translate and not speech.can_translate(local_id))
    if local_id and not english_only:
        targets.append(Target(_LOCAL, local_id))
    targets += _cloud_targets(gw, model_name, "transcribe")
    if not targets and english_only:
        raise InvalidRequest(
            f"The speech-to-text model '{local_id}' is English-only and cannot translate. "
            "Install a multilingual one: 'hoosh-edge models pull whisper-tiny' (or whisper-base).",
            param="model",
        )
    if not targets:
        known = ", ".join(speech.stt if speech else ()) or "none"
        raise ModelNotFound(
            f"The speech-to-text model '{model_name}' does not exist here. Available: {known}.",
            param="model",
        )
    fmt = form_text("response_format") or "json"
    if fmt not in FORMATS:
        raise InvalidRequest(
            f"'response_format' must be one of {', '.join(FORMATS)}.", param="response_format"
        )
    temperature = _form_float("temperature", 0.0, 0.0, 1.0)
    language = form_text("language") or None
    prompt = form_text("prompt") or None
    timing = transcript_sse.granularities(fmt)
    stream = transcript_sse.wants_stream(fmt)
    if stream:  # a stream is made from the full answer: segments where the target has them
        fmt = "verbose_json" if targets[0].backend.is_local else "json"
    data, filename = _upload()
    # Decoding also validates before anything is paid for; it is bounded by max_audio_s.
    try:
        audio = run_blocking(decode_audio, data, max_seconds=gw.config.stt.max_audio_s,
                             should_stop=lambda: deadline.expired)  # fmt: skip
    except DeadlineExceeded as exc:
        raise _past_deadline(deadline) from exc

    # Everything that shapes the answer is in its cache key, fields the gateway does not read too.
    params = {"language": language, "prompt": prompt, "temperature": temperature,
              "response_format": fmt, "translate": translate,
              "timestamp_granularities": timing or None,
              "other": transcript_sse.other_fields() or None}  # fmt: skip
    cache = gw.cache
    lookup, store = directives(request.headers.get("Cache-Control"))
    key = None
    if (
        cache is not None
        and cache.policy.enabled
        and cache.policy.transcription_cacheable(temperature)
    ):
        first = targets[0]
        key = transcription_key(
            first.provider, first.model, hashlib.sha256(data).hexdigest(), params
        )
        entry = run_books(cache.get, key) if lookup else None
        if entry is not None:
            if stream:
                events = transcript_sse.stream_events(entry.body, audio.duration_s)
                resp = Response(events, mimetype="text/event-stream")
            else:
                ctype = entry.meta.get("content_type", "application/json")
                resp = Response(entry.body, mimetype=ctype)
            resp.headers["X-Hoosh-Cache"] = "HIT"
            return inference_headers(resp, "cache", entry.meta.get("model"))

    def call(target: Target) -> tuple[bytes, str]:
        if target.backend.is_local:
            transcript = speech.transcribe(target.model, audio.samples, language=language,
                                           prompt=prompt, temperature=temperature,
                                           translate=translate, wait_s=deadline.remaining(),
                                           should_stop=lambda: deadline.expired,
                                           words="word" in timing)  # fmt: skip
            body, mimetype = render(transcript, fmt)
            if isinstance(body, dict):
                return json.dumps(body, ensure_ascii=False).encode(), "application/json"
            return body.encode(), mimetype
        form: dict[str, Any] = {k: str(v) for k, v in (
            ("language", language), ("prompt", prompt), ("temperature", temperature),
            ("response_format", fmt)) if v is not None}  # fmt: skip
        if timing:
            form["timestamp_granularities[]"] = timing
        return target.backend.transcribe(target.model, data, filename, form, translate=translate)

    target, (body, mimetype), _, hold = _attempt_by(
        deadline, gw, targets, call, lambda t: stt_usage(t, audio.duration_s)
    )
    gw.metrics.inc("hoosh_audio_seconds_total", {"provider": target.provider, "kind": "stt"},
                   audio.duration_s, help="Seconds of audio transcribed")  # fmt: skip
    g.log_fields = {"provider": target.provider, "model": target.model,
                    "audio_seconds": round(audio.duration_s, 2)}  # fmt: skip
    if stream:
        resp = Response(transcript_sse.stream_events(body, audio.duration_s),
                        mimetype="text/event-stream")  # fmt: skip
    else:
        resp = Response(body, mimetype=mimetype.split(";")[0])
    _settle(gw, hold, stt_usage(target, audio.duration_s), resp)
    if key and store and target is targets[0]:
        run_books(cache.put, key, "transcription", body,
                     {"provider": target.provider, "model": target.model,
                      "content_type": mimetype})  # fmt: skip
    resp.headers["X-Hoosh-Cache"] = "MISS" if key and lookup else "BYPASS"
    return inference_headers(resp, target.provider, target.model)


@bp.post("/v1/audio/transcriptions")
def transcriptions() -> Response:
    return _transcribe(translate=False)


@bp.post("/v1/audio/translations")
def translations() -> Response:
    return _transcribe(translate=True)


def _speech_request() -> dict[str, Any]:
    gw = gateway()
    body = read_json(gw.config.server.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("'input' is required: the text to speak.", param="input")
    limit = gw.config.tts.max_input_chars
    if len(text) > limit:
        raise InvalidRequest(
            f"'input' is {len(text)} characters; the limit is {limit} (local.tts.max_input_chars).",
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
    return {**body, "input": text, "model": model, "voice": voice, "speed": float(speed),
            "response_format": fmt, "stream_format": stream_format(body)}  # fmt: skip


@bp.post("/v1/audio/speech")
def speech() -> Response:
    from hoosh_edge.backends.engines.audio_out import StreamEncoder, check_format, content_type

    deadline = _deadline()
    gw = gateway()
    req = _speech_request()
    text, model, fmt, speed = req["input"], req["model"], req["response_format"], req["speed"]
    require_model(g.get("key"), model)
    local = gw.speech
    targets: list[Target] = []
    if local is not None and local.serves_tts_model(model):
        targets.append(Target(_LOCAL, local.voice(model, req["voice"])))
        check_format(fmt)
    targets += _cloud_targets(gw, model, "speech")
    if not targets:
        known = ", ".join([*local.tts, "piper", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
                          if local is not None and local.tts else []) or "none"  # fmt: skip
        raise ModelNotFound(f"No text-to-speech voice or provider serves '{model}' here. "
                            f"Available: {known}.", param="model")  # fmt: skip

    cache = gw.cache
    lookup, store = directives(request.headers.get("Cache-Control"))
    key = None
    if cache is not None and cache.policy.enabled and cache.policy.speech_cacheable():
        first = targets[0]
        voice_id = first.model if first.backend.is_local else req["voice"]
        key = speech_key(first.provider, voice_id, model, text, fmt, speed)
        entry = run_books(cache.get, key) if lookup else None
        if entry is not None:
            if req["stream_format"] == "sse":
                body = sse_frames([entry.body], lambda: True, _speech_usage(text))
                resp = Response(body, mimetype="text/event-stream")
            else:
                resp = Response(entry.body, mimetype=entry.meta.get("content_type"))
            if entry.meta.get("sample_rate"):
                resp.headers["X-Hoosh-Sample-Rate"] = str(entry.meta["sample_rate"])
            resp.headers["X-Hoosh-Cache"] = "HIT"
            return inference_headers(resp, "cache", entry.meta.get("model"))

    def call(target: Target) -> tuple[Iterator[bytes], str, int | None]:
        if not target.backend.is_local:
            # The gateway frames SSE itself: the provider is asked for plain audio.
            body = {k: v for k, v in req.items() if k not in ("model", "stream_format")}
            chunks, ctype = target.backend.speech(target.model, body)
            return chunks, ctype, None
        pcm = local.synthesize(target.model, text, speed, should_stop=lambda: deadline.expired)
        try:
            first = next(pcm)  # errors (queue full, no memory) still get a JSON answer
        except StopIteration:
            first = b""
        except BaseException:
            pcm.close()
            raise
        rate = local.sample_rate(target.model)
        encoder = StreamEncoder(fmt, rate)

        def encoded() -> Iterator[bytes]:
            try:
                for chunk in _prepend(first, pcm):
                    out = encoder.write(chunk)
                    if out:
                        yield out
                tail = encoder.close()
                if tail:
                    yield tail
            finally:
                pcm.close()

        return encoded(), content_type(fmt), rate

    # Providers bill speech per character of the input: known exactly before the call.
    target, (chunks, ctype, rate), _, hold = _attempt_by(
        deadline, gw, targets, call, lambda t: Usage(characters=len(text))
    )
    if hold is not None:
        gw.accountant.commit(hold, Usage(characters=len(text)))  # billed per character, known now
    gw.metrics.inc("hoosh_tts_characters_total", {"provider": target.provider}, len(text),
                   help="Characters spoken")  # fmt: skip
    g.log_fields = {"provider": target.provider, "model": target.model, "characters": len(text)}
    request_id = g.request_id
    keep = key is not None and store and target is targets[0]

    whole = [False]  # set once the audio ran to its end

    def frames() -> Iterator[bytes]:
        parts: list[bytes] = []
        try:
            for out in chunks:
                if keep:
                    parts.append(out)
                yield out
        except DeadlineExceeded:  # expected: the text was longer than the time allowed
            log.warning("request %s: speech stopped at server.request_timeout_s", request_id)
            return
        except Exception:  # noqa: BLE001 - headers are gone; end the body early and log
            log.exception("request %s: speech failed mid-stream", request_id)
            return
        whole[0] = True
        if keep:
            meta = {"provider": target.provider, "model": target.model, "content_type": ctype,
                    "sample_rate": rate}  # fmt: skip
            run_books(cache.put, key, "speech", b"".join(parts), meta)

    if req["stream_format"] == "sse":
        events = sse_frames(frames(), lambda: whole[0], _speech_usage(text))
        resp = Response(events, mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
    else:
        resp = Response(frames(), mimetype=ctype)
    if rate is not None:
        resp.headers["X-Hoosh-Sample-Rate"] = str(rate if fmt != "opus" else 24000)
    if hold is not None:
        resp.headers["X-Hoosh-Cost-USD"] = hold.cost_usd_text
    resp.headers["X-Hoosh-Cache"] = "MISS" if key and lookup else "BYPASS"
    return inference_headers(resp, target.provider, target.model)


def _speech_usage(text: str) -> dict[str, int]:
    """Usage of a speech answer: its input, in characters (what speech is billed by here)."""
    return {"input_characters": len(text)}


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
