"""One Wyoming connection: its events parsed, each request handed to the pipeline, the answer
framed back as events.

Home Assistant opens a connection per request: ``describe`` → ``info``;
``transcribe`` / ``audio-start`` / ``audio-chunk``… / ``audio-stop`` → ``transcript-start``,
``transcript-chunk``…, ``transcript``, ``transcript-stop``; ``synthesize`` → ``audio-start``,
``audio-chunk``…, ``audio-stop``; ``synthesize-start`` / ``synthesize-chunk``… / ``synthesize-stop``
→ each finished sentence as its own audio-start…audio-stop, then ``synthesize-stopped``;
``transcript`` (a conversation turn) → ``handled`` or ``not-handled``. A request the pipeline
refuses (a budget, an unknown voice) gets an ``error`` event and the connection goes on; a peer
that breaks the framing or a bound gets an ``error`` event and the connection ends.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

import gevent
from wyoming.asr import Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.handle import Handled, NotHandled
from wyoming.ping import Pong
from wyoming.tts import SynthesizeStopped

from hoosh_edge.backends.engines.piper import complete_sentences_end
from hoosh_edge.doors.common import log_access
from hoosh_edge.doors.wyoming_frames import (
    Event,
    data_dict,
    data_int,
    data_str,
    pcm_pieces,
    read_event,
    transcript_pieces,
    wav_bytes,
    write_event,
)
from hoosh_edge.doors.wyoming_info import build_info, speaker_ids, voice_facts
from hoosh_edge.errors import HooshError, InvalidRequest, ProtocolViolation
from hoosh_edge.formats import openai as chatfmt
from hoosh_edge.limits import Deadline
from hoosh_edge.pipeline.audio import (
    SpeechAsk,
    Transcription,
    speak,
    transcribe,
    transcription_targets_for,
)
from hoosh_edge.pipeline.call import CacheAsk, CallContext, Caller
from hoosh_edge.pipeline.chat import ChatAnswer, serve_chat
from hoosh_edge.pipeline.conversations import ConversationMemory

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger(__name__)

SAMPLES_PER_CHUNK = 1024  # what wyoming-piper sends per audio-chunk
_SIGNED_TO_UNSIGNED = bytes((i + 128) & 0xFF for i in range(256))  # 8-bit PCM: WAV is unsigned


class SessionEnd(Exception):
    """The connection ends after a refused request (its ``error`` event is sent)."""


class Session:
    """The events of one connection, served one request at a time."""

    def __init__(self, gw: Gateway, rfile: BinaryIO, wfile: BinaryIO, peer: str,
                 memory: ConversationMemory) -> None:  # fmt: skip
        self.gw, self.rfile, self.wfile, self.peer = gw, rfile, wfile, peer
        self.memory = memory
        self.w = gw.config.wyoming
        self.asr: dict[str, Any] | None = None  # transcribe's name and language
        self.audio: dict[str, Any] | None = None  # audio-start's format and the PCM so far
        self.stream: dict[str, Any] | None = None  # synthesize-start's voice and pending text
        self.handlers: dict[str, Callable[[Event], None]] = {
            "describe": lambda _e: self.send(build_info(self.gw).event()),
            "ping": lambda e: self.send(Pong(text=data_str(e, "text")).event()),
            "select-program": lambda _e: None,  # one program per domain here
            "transcribe": self.on_transcribe, "audio-start": self.on_audio_start,
            "audio-chunk": self.on_audio_chunk, "audio-stop": self.on_audio_stop,
            "synthesize": self.on_synthesize, "synthesize-start": self.on_synthesize_start,
            "synthesize-chunk": self.on_synthesize_chunk, "synthesize-stop": self.on_synthesize_stop,
            "transcript": self.on_transcript,
        }  # fmt: skip

    def run(self) -> None:
        """Serve events until the peer closes or breaks a rule (``ProtocolViolation``)."""
        while True:
            # Per event, not per byte: a peer dripping a byte a second never completes one.
            with gevent.Timeout(self.w.idle_timeout_s, TimeoutError):
                event = read_event(self.rfile, self.w)
            if event is None:
                return
            handler = self.handlers.get(event.type)
            if handler is None:
                raise ProtocolViolation(f"Unknown event type '{event.type[:64]}'.",
                                        code="unknown_event")  # fmt: skip
            handler(event)

    def send(self, event: Event) -> None:
        write_event(event, self.wfile)

    def fail(self, e: HooshError) -> None:
        """An ``error`` event for a refused request or a broken rule."""
        self.send(Error(text=e.message, code=e.code or e.type).event())

    # --- the pipeline, with the books an HTTP request gets ---------------------------------

    def call(self, route: str, work: Callable[[Caller, CallContext, Deadline], dict | None],
             on_error: Callable[[HooshError], None] | None = None) -> None:  # fmt: skip
        """Run one request: counted in flight, a metric and an access line.

        A refusal is an ``error`` event, then the connection ends (``SessionEnd``): a client
        that opened it for this one request (Home Assistant) learns at once, not at the idle
        timeout. ``on_error`` answers instead and the connection goes on (``not-handled``).
        """
        gw, started = self.gw, time.monotonic()
        caller = Caller(request_id=uuid.uuid4().hex[:24])
        ctx = CallContext(request_id=caller.request_id)
        status, fields = 499, None  # until it ends: the peer went away or the time ran out
        gw.inflight += 1
        try:
            fields = work(caller, ctx, Deadline(gw.config.server.request_timeout_s))
            status = 200
        except ProtocolViolation:
            status = 400
            raise
        except HooshError as e:
            status = e.status
            tried = ctx.tried
            fields = {"provider": tried.provider, "model": tried.model} if tried else None
            if on_error is not None:
                on_error(e)
                return
            self.fail(e)
            raise SessionEnd(e.message) from e
        except OSError:
            raise  # the peer went away or stopped reading: 499
        except Exception:
            status = 500
            raise
        finally:
            gw.inflight -= 1
            elapsed = time.monotonic() - started
            gw.metrics.inc("hoosh_requests_total", {"route": route, "status": str(status)},
                           help="HTTP requests by route and status")  # fmt: skip
            gw.metrics.observe("hoosh_request_duration_seconds", elapsed, {"route": route},
                               help="Request latency")  # fmt: skip
            log_access(caller.request_id, "WYOMING", route, status, elapsed,
                       {"peer": self.peer, **(fields or {})})  # fmt: skip

    # --- speech-to-text --------------------------------------------------------------------

    def on_transcribe(self, event: Event) -> None:
        language = data_str(event, "language", limit=16)
        self.asr = {"name": data_str(event, "name"),
                    "language": language.replace("_", "-").split("-")[0].lower() if language
                    else None}  # fmt: skip

    def on_audio_start(self, event: Event) -> None:
        rate = data_int(event, "rate", 1000, 384_000)
        width = data_int(event, "width", 1, 4)
        channels = data_int(event, "channels", 1, 8)
        frame_rate = rate * width * channels
        limit = min(int(self.gw.config.stt.max_audio_s * frame_rate),
                    self.gw.config.server.max_audio_bytes)  # fmt: skip
        self.audio = {"rate": rate, "width": width, "channels": channels,
                      "pcm": bytearray(), "limit": limit}  # fmt: skip
        if self.asr is None:
            self.asr = {"name": None, "language": None}

    def on_audio_chunk(self, event: Event) -> None:
        a = self.audio
        if a is None:
            raise ProtocolViolation("'audio-chunk' before 'audio-start'.", code="bad_order")
        for key in ("rate", "width", "channels"):
            if key in event.data and event.data[key] != a[key]:
                raise ProtocolViolation(f"'audio-chunk' {key} {event.data[key]!r} differs from "
                                        f"audio-start's {a[key]}.", code="bad_data")  # fmt: skip
        payload = event.payload or b""
        if len(a["pcm"]) + len(payload) > a["limit"]:
            seconds = a["limit"] / (a["rate"] * a["width"] * a["channels"])
            raise ProtocolViolation(
                f"The audio is longer than {seconds:g} s (local.stt.max_audio_s, "
                "server.max_audio_bytes).", code="audio_too_long")  # fmt: skip
        a["pcm"] += payload

    def on_audio_stop(self, _event: Event) -> None:
        a, asr = self.audio, self.asr or {}
        self.audio, self.asr = None, None
        if a is None:
            raise ProtocolViolation("'audio-stop' before 'audio-start'.", code="bad_order")
        frame = a["width"] * a["channels"]
        pcm = bytes(a["pcm"][: len(a["pcm"]) - len(a["pcm"]) % frame])
        language = asr.get("language")
        if not pcm:  # nothing was said: no model to wake, nothing to bill
            self.send(Transcript(text="", language=language).event())
            return
        if a["width"] == 1:
            pcm = pcm.translate(_SIGNED_TO_UNSIGNED)

        def work(caller: Caller, ctx: CallContext, deadline: Deadline) -> dict | None:
            model = asr.get("name") or self.w.stt_model
            targets = transcription_targets_for(self.gw, caller, model, False)
            wav = wav_bytes(pcm, a["rate"], a["width"], a["channels"])
            ask = Transcription(model=model, audio=wav, filename="wyoming.wav", language=language,
                                response_format="verbose_json")  # fmt: skip
            t = transcribe(self.gw, ask, targets, caller, ctx, CacheAsk(), deadline, stream=False)
            doc = json.loads(t.body)
            text = str(doc.get("text") or "").strip()
            self.send(TranscriptStart(language=language).event())
            for piece in transcript_pieces(
                text, [str(s.get("text") or "") for s in doc.get("segments") or ()]
            ):
                self.send(TranscriptChunk(text=piece).event())
            self.send(Transcript(text=text, language=language).event())
            self.send(TranscriptStop().event())
            return {**t.served.fields, "cache": t.served.cache}

        self.call("wyoming:asr", work)

    # --- text-to-speech --------------------------------------------------------------------

    def voice_of(self, event: Event) -> tuple[str | None, str | None]:
        """(voice, speaker) asked for: a voice by name, else the first local voice of the
        language, else the configured one."""
        voice = data_dict(event, "voice")
        name, speaker = voice.get("name"), voice.get("speaker")
        for key, value in (("name", name), ("speaker", speaker)):
            if value is not None and not (isinstance(value, str) and len(value) <= 256):
                raise ProtocolViolation(f"'voice.{key}' must be a short string.", code="bad_data")
        if name:
            return name, speaker or None
        language = voice.get("language")
        if isinstance(language, str) and language:
            want = language.replace("-", "_").lower()
            for vid, path in self.gw.speech.tts.items():
                langs = [x.lower() for x in voice_facts(path)[0]]
                if want in langs or any(x.split("_")[0] == want for x in langs):
                    return vid, speaker or None
        return self.w.voice, speaker or None

    def speaker_id(self, voice: str, speaker: str | None) -> int | None:
        """A local multi-speaker voice's id for ``speaker`` (its name, or its number)."""
        path = self.gw.speech.tts.get(voice)
        if speaker is None or path is None:
            return None
        known = speaker_ids(path)
        if speaker in known:
            return known[speaker]
        if speaker.isdigit() and int(speaker) in known.values():
            return int(speaker)
        raise InvalidRequest(f"Voice '{voice}' has no speaker '{speaker}'. Speakers: "
                             f"{', '.join(known) or 'none (one voice)'}.", param="voice.speaker")  # fmt: skip

    def speak(self, text: str, voice: tuple[str | None, str | None], *, start: bool,
              stop: bool) -> None:  # fmt: skip
        """One text through the pipeline as PCM; ``start`` / ``stop`` frame it in audio events."""
        text = text.strip()
        if not text:
            if stop:
                self.send(AudioStop().event())
            return
        limit = self.gw.config.tts.max_input_chars
        if len(text) > limit:
            raise ProtocolViolation(f"The text is {len(text)} characters; the limit is {limit} "
                                    "(local.tts.max_input_chars).", code="text_too_long")  # fmt: skip

        def work(caller: Caller, ctx: CallContext, deadline: Deadline) -> dict | None:
            speech = self.gw.speech
            name = voice[0] or speech.default_voice or self.w.cloud_voice
            upstream = name if name not in speech.tts else self.w.cloud_voice
            ask = SpeechAsk(text=text, model=self.w.tts_model, voice=name, speed=1.0,
                            response_format="pcm",
                            body={"input": text, "voice": upstream, "speed": 1.0,
                                  "response_format": "pcm"},
                            speaker=self.speaker_id(name, voice[1]))  # fmt: skip
            out = speak(self.gw, ask, caller, ctx, CacheAsk(), deadline)
            try:
                rate = out.served.sample_rate or 24000  # a provider's pcm is 24 kHz
                if start:
                    self.send(AudioStart(rate=rate, width=2, channels=1).event())
                for pcm in pcm_pieces(out.chunks, 2 * SAMPLES_PER_CHUNK):
                    self.send(AudioChunk(rate=rate, width=2, channels=1, audio=pcm).event())
            finally:
                close = getattr(out.chunks, "close", None)
                if close is not None:
                    close()
            if not out.whole:
                raise HooshError("The speech stream ended early (see the gateway's log).",
                                 code="stream_incomplete")  # fmt: skip
            if stop:
                self.send(AudioStop().event())
            return {**out.served.fields, "cache": out.served.cache}

        self.call("wyoming:tts", work)

    def on_synthesize(self, event: Event) -> None:
        if self.stream is not None:
            return  # sent beside a stream for older servers; the stream carries the text
        text = data_str(event, "text", required=True, limit=1 << 20) or ""
        self.speak(text, self.voice_of(event), start=True, stop=True)

    def on_synthesize_start(self, event: Event) -> None:
        self.stream = {"voice": self.voice_of(event), "text": ""}

    def on_synthesize_chunk(self, event: Event) -> None:
        s = self.stream
        if s is None:
            raise ProtocolViolation("'synthesize-chunk' before 'synthesize-start'.",
                                    code="bad_order")  # fmt: skip
        s["text"] += data_str(event, "text", required=True, limit=1 << 20) or ""
        end = complete_sentences_end(s["text"])
        if not end and len(s["text"]) >= self.gw.config.tts.max_input_chars:
            end = len(s["text"])  # no sentence end in sight: speak what there is
        if end:
            done, s["text"] = s["text"][:end], s["text"][end:]
            self.speak(done, s["voice"], start=True, stop=True)

    def on_synthesize_stop(self, _event: Event) -> None:
        s, self.stream = self.stream, None
        if s is None:
            raise ProtocolViolation("'synthesize-stop' before 'synthesize-start'.",
                                    code="bad_order")  # fmt: skip
        if s["text"].strip():
            self.speak(s["text"], s["voice"], start=True, stop=True)
        self.send(SynthesizeStopped().event())

    # --- conversation ----------------------------------------------------------------------

    def on_transcript(self, event: Event) -> None:
        text = data_str(event, "text", required=True, limit=self.gw.config.tts.max_input_chars)
        context = event.data.get("context") if isinstance(event.data.get("context"), dict) else None
        cid = (context or {}).get("conversation_id")
        cid = cid if isinstance(cid, str) and len(cid) <= 128 else None
        model = self.w.chat_model
        if not model:
            self.send(NotHandled(text="This box has no conversation model (wyoming.chat_model).",
                                 context=context).event())  # fmt: skip
            return

        def work(caller: Caller, ctx: CallContext, _deadline: Deadline) -> dict | None:
            req = chatfmt.validate_chat_request({
                "model": model, "max_tokens": self.w.max_tokens,
                "messages": [{"role": "system", "content": self.w.system_prompt},
                             *self.memory.messages(self.peer, cid),
                             {"role": "user", "content": text}]})  # fmt: skip
            result = serve_chat(self.gw, req, caller, CacheAsk(), route="wyoming:handle", ctx=ctx)
            if not isinstance(result, ChatAnswer):  # not asked to stream: never happens
                result.close()
                raise InvalidRequest("The conversation model streamed an answer.")
            answer = chatfmt.completion_text(result.doc).strip()
            self.memory.add(self.peer, cid, text, answer)
            self.send(Handled(text=answer, context=context).event())
            return result.served.fields

        def refused(e: HooshError) -> None:
            self.send(NotHandled(text=e.message, context=context).event())

        self.call("wyoming:handle", work, on_error=refused)
