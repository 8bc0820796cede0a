"""A speech call's whole life: transcription and synthesis, on the box first, a provider after.

On-device whisper.cpp and Piper first; a provider that declares it can transcribe or speak and
serves the requested model (``whisper-1``, ``tts-1`` ...) is the fallback, under the same budget
rules as chat. Answers are cached: speech by (voice, model, text, format, speed), transcriptions
by audio hash + parameters. Doors parse the form or JSON and frame what comes back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent

from hoosh_edge.backends.engines.audio_in import decode_audio
from hoosh_edge.backends.engines.audio_out import StreamEncoder, check_format, content_type
from hoosh_edge.books.cache import speech_key, transcription_key
from hoosh_edge.books.keys import require_model
from hoosh_edge.books.ledger import Usage
from hoosh_edge.errors import DeadlineExceeded, InvalidRequest, ModelNotFound
from hoosh_edge.formats.transcripts import render
from hoosh_edge.limits import Deadline
from hoosh_edge.pipeline.call import CacheAsk, CallContext, Caller, Served
from hoosh_edge.pipeline.router import Target
from hoosh_edge.threads import run_blocking, run_books

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger(__name__)


@dataclass
class Transcription:
    """A transcription request, parsed by its door."""

    model: str
    audio: bytes
    filename: str
    translate: bool = False
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    response_format: str = "json"
    timing: list[str] = field(default_factory=list)  # timestamp granularities
    other: dict[str, Any] | None = None  # fields the gateway does not read: in the cache key


@dataclass
class Transcript:
    body: bytes
    mimetype: str
    duration_s: float
    served: Served


@dataclass
class SpeechAsk:
    """A speech request, parsed by its door (``body``: the JSON a provider would get)."""

    text: str
    model: str
    voice: str
    speed: float
    response_format: str
    body: dict[str, Any]
    speaker: int | None = None  # a multi-speaker local voice's speaker id (Wyoming's speaker)


class Speech:
    """Audio on its way out: iterate ``chunks``; ``whole`` says whether it ran to its end."""

    def __init__(self, chunks: Iterator[bytes], ctype: str, served: Served) -> None:
        self.chunks = chunks
        self.content_type = ctype
        self.served = served
        self.whole = False


def _past(deadline: Deadline) -> DeadlineExceeded:
    return DeadlineExceeded(f"The request did not finish within {deadline.seconds:g} s "
                            "(server.request_timeout_s).")  # fmt: skip


def _cloud(gw: Gateway, model: str, *, transcribe: bool) -> list[Target]:
    return [Target(b, model) for b in gw.router.backends
            if not b.is_local and (b.can_transcribe if transcribe else b.can_speak)
            and b.serves(model)]  # fmt: skip


def _attempt(gw: Gateway, deadline: Deadline, caller: Caller, ctx: CallContext,
             targets: list[Target], call: Callable[[Target], Any],
             usage_for: Callable[[Target], Usage]) -> tuple[Target, Any, Any]:  # fmt: skip
    """``router.attempt`` that ends at the deadline: 504 ``deadline_exceeded``, no fallback after.

    ``usage_for(target)`` is what the target can be billed (its reservation).
    """

    def admit(target: Target) -> Any:
        return gw.accountant.admit(provider=target.provider, model=target.model,
                                   is_local=target.backend.is_local, estimate=usage_for(target),
                                   key=caller.key_name, request_id=caller.request_id)  # fmt: skip

    try:
        with gevent.Timeout(max(0.001, deadline.remaining()), _past(deadline)):
            target, result, _, hold = gw.router.attempt(targets, ctx, call, admit)
    except DeadlineExceeded as exc:  # the engines' own stop says it less plainly
        raise _past(deadline) from exc
    return target, result, hold


def stt_usage(target: Target, duration_s: float) -> Usage:
    """Seconds of the decoded audio; a provider bills started seconds, so a cloud call rounds up."""
    seconds = duration_s if target.backend.is_local else float(math.ceil(duration_s))
    return Usage(audio_seconds=seconds)


def transcription_targets(gw: Gateway, model: str, translate: bool) -> list[Target]:
    """The on-device model (when it can do the task), then providers that serve the model."""
    speech = gw.speech
    targets: list[Target] = []
    local_id = speech.stt_model(model, translate)
    english_only = bool(local_id and translate and not speech.can_translate(local_id))
    if local_id and not english_only:
        targets.append(Target(speech, local_id))
    targets += _cloud(gw, model, transcribe=True)
    if not targets and english_only:
        raise InvalidRequest(
            f"The speech-to-text model '{local_id}' is English-only and cannot translate. "
            "Install a multilingual one: 'hoosh-edge models pull whisper-tiny' (or whisper-base).",
            param="model",
        )
    if not targets:
        known = ", ".join(speech.stt) or "none"
        raise ModelNotFound(
            f"The speech-to-text model '{model}' does not exist here. Available: {known}.",
            param="model",
        )
    return targets


def transcription_targets_for(gw: Gateway, caller: Caller, model: str,
                              translate: bool) -> list[Target]:  # fmt: skip
    """May the caller use ``model``, and who can serve it: asked before the upload is read."""
    require_model(caller.key, model)
    return transcription_targets(gw, model, translate)


def transcribe(gw: Gateway, t: Transcription, targets: list[Target], caller: Caller,
               ctx: CallContext, cache_ask: CacheAsk, deadline: Deadline, *,
               stream: bool) -> Transcript:  # fmt: skip
    """Decode (bounded by ``local.stt.max_audio_s``), then the cache, then the targets.

    ``targets`` come from ``transcription_targets_for``.
    """
    if stream:  # a stream is made from the full answer: segments where the target has them
        t.response_format = "verbose_json" if targets[0].backend.is_local else "json"
    # Decoding also validates before anything is paid for.
    try:
        audio = run_blocking(decode_audio, t.audio, max_seconds=gw.config.stt.max_audio_s,
                             should_stop=lambda: deadline.expired)  # fmt: skip
    except DeadlineExceeded as exc:
        raise _past(deadline) from exc
    # Everything that shapes the answer is in its cache key, fields the gateway does not read too.
    params = {"language": t.language, "prompt": t.prompt, "temperature": t.temperature,
              "response_format": t.response_format, "translate": t.translate,
              "timestamp_granularities": t.timing or None, "other": t.other or None}  # fmt: skip
    cache, key = gw.cache, None
    if cache.policy.enabled and cache.policy.transcription_cacheable(t.temperature):
        first = targets[0]
        key = transcription_key(first.provider, first.model,
                                hashlib.sha256(t.audio).hexdigest(), params)  # fmt: skip
        entry = run_books(cache.get, key) if cache_ask.lookup else None
        if entry is not None:
            served = Served(provider="cache", model=entry.meta.get("model"), cache="HIT")
            ctype = entry.meta.get("content_type", "application/json")
            return Transcript(entry.body, ctype, audio.duration_s, served)

    def call(target: Target) -> tuple[bytes, str]:
        if target.backend.is_local:
            transcript = gw.speech.transcribe(
                target.model, audio.samples, language=t.language, prompt=t.prompt,
                temperature=t.temperature, translate=t.translate, wait_s=deadline.remaining(),
                should_stop=lambda: deadline.expired, words="word" in t.timing)  # fmt: skip
            body, mimetype = render(transcript, t.response_format)
            if isinstance(body, dict):
                return json.dumps(body, ensure_ascii=False).encode(), "application/json"
            return body.encode(), mimetype
        form: dict[str, Any] = {k: str(v) for k, v in (
            ("language", t.language), ("prompt", t.prompt), ("temperature", t.temperature),
            ("response_format", t.response_format)) if v is not None}  # fmt: skip
        if t.timing:
            form["timestamp_granularities[]"] = t.timing
        return target.backend.transcribe(target.model, t.audio, t.filename, form,
                                         translate=t.translate)  # fmt: skip

    target, (body, mimetype), hold = _attempt(gw, deadline, caller, ctx, targets, call,
                                              lambda x: stt_usage(x, audio.duration_s))  # fmt: skip
    gw.metrics.inc("hoosh_audio_seconds_total", {"provider": target.provider, "kind": "stt"},
                   audio.duration_s, help="Seconds of audio transcribed")  # fmt: skip
    served = Served(provider=target.provider, model=target.model,
                    cache="MISS" if key and cache_ask.lookup else "BYPASS")  # fmt: skip
    served.fields = {"provider": target.provider, "model": target.model,
                     "audio_seconds": round(audio.duration_s, 2)}  # fmt: skip
    if hold is not None:
        gw.accountant.commit(hold, stt_usage(target, audio.duration_s))
        served.cost_usd = hold.cost_usd_text
    if key and cache_ask.store and target is targets[0]:
        run_books(cache.put, key, "transcription", body,
                  {"provider": target.provider, "model": target.model,
                   "content_type": mimetype})  # fmt: skip
    return Transcript(body, mimetype.split(";")[0], audio.duration_s, served)


def speech_targets(gw: Gateway, s: SpeechAsk) -> list[Target]:
    """The on-device voice (for OpenAI's names, ``piper`` or a voice id), then providers."""
    local = gw.speech
    targets: list[Target] = []
    if local.serves_tts_model(s.model):
        targets.append(Target(local, local.voice(s.model, s.voice)))
        check_format(s.response_format)
    targets += _cloud(gw, s.model, transcribe=False)
    if not targets:
        known = ", ".join([*local.tts, "piper", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
                          if local.tts else []) or "none"  # fmt: skip
        raise ModelNotFound(f"No text-to-speech voice or provider serves '{s.model}' here. "
                            f"Available: {known}.", param="model")  # fmt: skip
    return targets


def speak(gw: Gateway, s: SpeechAsk, caller: Caller, ctx: CallContext, cache_ask: CacheAsk,
          deadline: Deadline) -> Speech:  # fmt: skip
    """The cache, then the targets; the audio streams out as it is made (and is kept whole)."""
    require_model(caller.key, s.model)
    targets = speech_targets(gw, s)
    cache, key = gw.cache, None
    if cache.policy.enabled and cache.policy.speech_cacheable():
        first = targets[0]
        voice_id = first.model if first.backend.is_local else s.voice
        if s.speaker is not None and first.backend.is_local:
            voice_id = f"{voice_id}#{s.speaker}"
        key = speech_key(first.provider, voice_id, s.model, s.text, s.response_format, s.speed)
        entry = run_books(cache.get, key) if cache_ask.lookup else None
        if entry is not None:
            served = Served(provider="cache", model=entry.meta.get("model"), cache="HIT",
                            sample_rate=entry.meta.get("sample_rate") or None)  # fmt: skip
            hit = Speech(iter([entry.body]), entry.meta.get("content_type"), served)
            hit.whole = True
            return hit

    def call(target: Target) -> tuple[Iterator[bytes], str, int | None]:
        if not target.backend.is_local:
            return (*target.backend.speech(target.model, s.body), None)
        pcm = gw.speech.synthesize(target.model, s.text, s.speed,
                                   should_stop=lambda: deadline.expired,
                                   speaker_id=s.speaker or 0)  # fmt: skip
        try:
            first = next(pcm)  # errors (queue full, no memory) still get a JSON answer
        except StopIteration:
            first = b""
        except BaseException:
            pcm.close()
            raise
        rate = gw.speech.sample_rate(target.model)
        return _encoded(first, pcm, StreamEncoder(s.response_format, rate)), \
            content_type(s.response_format), rate  # fmt: skip

    # Providers bill speech per character of the input: known exactly before the call.
    usage = Usage(characters=len(s.text))
    target, (chunks, ctype, rate), hold = _attempt(gw, deadline, caller, ctx, targets, call,
                                                   lambda _t: usage)  # fmt: skip
    served = Served(provider=target.provider, model=target.model,
                    cache="MISS" if key and cache_ask.lookup else "BYPASS")  # fmt: skip
    if hold is not None:
        gw.accountant.commit(hold, usage)  # billed per character, known now
        served.cost_usd = hold.cost_usd_text
    if rate is not None:
        served.sample_rate = rate if s.response_format != "opus" else 24000
    gw.metrics.inc("hoosh_tts_characters_total", {"provider": target.provider}, len(s.text),
                   help="Characters spoken")  # fmt: skip
    served.fields = {"provider": target.provider, "model": target.model, "characters": len(s.text)}
    keep = key is not None and cache_ask.store and target is targets[0]
    meta = {"provider": target.provider, "model": target.model, "content_type": ctype,
            "sample_rate": rate}  # fmt: skip
    out = Speech(iter(()), ctype, served)
    out.chunks = _kept(out, chunks, caller.request_id,
                       (lambda body: run_books(cache.put, key, "speech", body, meta)) if keep
                       else None)  # fmt: skip
    return out


def _encoded(first: bytes, pcm: Iterator[bytes], encoder: StreamEncoder) -> Iterator[bytes]:
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


def _kept(out: Speech, chunks: Iterator[bytes], request_id: str,
          store: Callable[[bytes], Any] | None) -> Iterator[bytes]:  # fmt: skip
    """The audio as it comes; stored once it ran to its end; a failure ends it early, logged."""
    parts: list[bytes] = []
    try:
        for piece in chunks:
            if store is not None:
                parts.append(piece)
            yield piece
    except DeadlineExceeded:  # expected: the text was longer than the time allowed
        log.warning("request %s: speech stopped at server.request_timeout_s", request_id)
        return
    except Exception:  # noqa: BLE001 - headers are gone; end the body early and log
        log.exception("request %s: speech failed mid-stream", request_id)
        return
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    out.whole = True
    if store is not None:
        store(b"".join(parts))


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
