"""Wire the on-device engines found in config or ``models/`` into a Gateway.

Engines are imported only when a model of their kind exists, so a box without (say) Piper
installed still serves chat, and start-up stays quick.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent

from hoosh_edge.backends.engines.pool import ModelPool, ModelSlot
from hoosh_edge.backends.providers.base import CallContext, ChatBackend
from hoosh_edge.config import LocalEngineConfig
from hoosh_edge.errors import InvalidRequest
from hoosh_edge.threads import ThreadStream, run_blocking

if TYPE_CHECKING:
    from hoosh_edge.backends.engines.phonemizer import PhonemizerStatus

log = logging.getLogger("hoosh_edge")

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                 "shimmer", "verse")  # fmt: skip
OPENAI_TTS_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "piper")
OPENAI_STT_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")


class LocalChat(ChatBackend):
    """The llama.cpp engine as a chat backend named ``local``."""

    name = "local"
    is_local = True
    reports_queue_depth = True
    counts_tokens = True
    # The engine calls tools (grammar-constrained, llama_tools.py); /api/show's "tools"
    # capability for on-device models says what this says.
    calls_tools = True

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def serves(self, model: str) -> bool:
        return model in self.engine.paths

    def model_ids(self) -> list[str]:
        return self.engine.model_ids()

    def stream(self, model: str, req: dict[str, Any], ctx: CallContext) -> Iterator[dict]:
        return self.engine.chat_stream(model, req)

    def count_tokens(self, model: str, messages: list[dict[str, Any]],
                     req: dict[str, Any] | None = None) -> int:  # fmt: skip
        """Tokens of the prompt the model's chat template makes (loads the model if needed)."""
        return self.engine.tokenize_count(model, messages, req)

    def queue_depth(self, model: str) -> int:
        """Requests running or waiting on this model (for device-aware routing)."""
        slot = self.engine.pool.slot(model)
        return slot.waiting + (1 if slot.busy else 0)


class LocalSpeech:
    """whisper.cpp and Piper models in the pool, one job at a time per model.

    It is the router's on-device target for speech: named ``local`` in the books like LocalChat.
    """

    name = "local"
    is_local = True

    def __init__(self, pool: ModelPool, stt: dict[str, str], tts: dict[str, str],
                 stt_cfg: LocalEngineConfig, tts_cfg: LocalEngineConfig,
                 models_dir: str | Path | None = None) -> None:  # fmt: skip
        self.pool = pool
        self.stt = dict(stt)
        self.tts = dict(tts)
        self.default_voice = tts_cfg.default_voice or next(iter(self.tts), None)
        if self.default_voice and self.default_voice not in self.tts:
            raise ValueError(f"local.tts.default_voice {self.default_voice!r} is not a voice")
        if self.stt:
            from hoosh_edge.backends.engines.whisper import WhisperModel

            for mid, path in self.stt.items():
                pool.register(ModelSlot(
                    key=f"stt:{mid}", kind="stt",
                    loader=lambda p=path: WhisperModel.load(p, stt_cfg.n_threads),
                    estimate_bytes=WhisperModel.estimate_bytes(path),
                    keep_alive_s=stt_cfg.keep_alive_s, max_queue=stt_cfg.max_queue))  # fmt: skip
        self.phonemizer_choice = tts_cfg.phonemizer
        self._phonemizer: PhonemizerStatus | None = None
        from hoosh_edge.backends.engines.phonemizer import espeak_data  # ctypes only, no engine

        # Chosen once at start: a pull of espeak-ng-data takes effect on the next start.
        self.espeak_data = espeak_data(tts_cfg.espeak_data, models_dir)
        if self.tts:
            from hoosh_edge.backends.engines.piper import PiperVoice

            # Said once at start: voices without a phonemizer would answer 503, not fall silent.
            state = self.phonemizer_status()
            if state.in_use is None:
                log.warning("local text-to-speech voices %s cannot speak: %s",
                            ", ".join(self.tts), state.detail)  # fmt: skip
            elif state.warning:
                log.warning("local text-to-speech voices %s: %s", ", ".join(self.tts),
                            state.warning)  # fmt: skip
            for vid, path in self.tts.items():
                pool.register(ModelSlot(
                    key=f"tts:{vid}", kind="tts",
                    loader=lambda p=path: PiperVoice.load(p, tts_cfg.n_threads,
                                                          tts_cfg.phonemizer, self.espeak_data),
                    estimate_bytes=PiperVoice.estimate_bytes(path),
                    keep_alive_s=tts_cfg.keep_alive_s, max_queue=tts_cfg.max_queue))  # fmt: skip

    def phonemizer_status(self) -> PhonemizerStatus:
        """Which phonemizer the voices use, or what to install (loaded on first ask)."""
        if self._phonemizer is None or self._phonemizer.in_use is None:
            from hoosh_edge.backends.engines.phonemizer import status

            self._phonemizer = status(self.phonemizer_choice, self.espeak_data)
        return self._phonemizer

    def tts_report(self) -> dict[str, Any]:
        """The text-to-speech part of /v1/health and the status page."""
        if not self.tts:  # no voice, so no phonemizer is loaded into the process for it
            return {"voices": [], "state": "no_voices",
                    "phonemizer": {"configured": self.phonemizer_choice}}  # fmt: skip
        state = self.phonemizer_status().as_dict()
        ok = state["in_use"] is not None
        return {"voices": list(self.tts), "state": "ok" if ok else "unavailable",
                "phonemizer": state}  # fmt: skip

    def model_ids(self) -> list[str]:
        ids = list(self.stt) + list(self.tts)
        if self.tts:
            ids.append("piper")
        return ids

    def stt_model(self, model: str, translate: bool = False) -> str | None:
        """The local speech-to-text model for a requested name, or None.

        OpenAI's names (``whisper-1`` ...) take the first model; for a translation, the first
        multilingual one (an English-only model cannot translate), if one is installed.
        """
        if model in self.stt:
            return model
        if model in OPENAI_STT_MODELS and self.stt:
            if translate:
                multi = [m for m, p in self.stt.items() if whisper_multilingual(p)]
                if multi:
                    return multi[0]
            return next(iter(self.stt))
        return None

    def can_translate(self, model: str) -> bool:
        """Whether a local speech-to-text model is multilingual (English-only ones can't)."""
        return whisper_multilingual(self.stt[model])

    def serves_tts_model(self, model: str) -> bool:
        """Whether ``model`` names on-device speech: OpenAI's TTS names, ``piper`` or a voice."""
        return bool(self.tts) and (model in OPENAI_TTS_MODELS or model in self.tts)

    def voice(self, model: str, voice: str) -> str:
        """The local voice for an OpenAI (model, voice) pair."""
        if voice in self.tts:
            return voice
        if model in self.tts:
            return model
        if voice in OPENAI_VOICES and self.default_voice:
            return self.default_voice
        known = ", ".join([*self.tts, *OPENAI_VOICES]) or "none"
        raise InvalidRequest(f"Unknown voice '{voice}'. Voices here: {known}.", param="voice")

    def transcribe(self, model: str, samples: Any, *, should_stop: Callable[[], bool] | None = None,
                   wait_s: float | None = None, **opts: Any) -> Any:  # fmt: skip
        """Transcribe on the model's slot; it is released only once the native call has returned.

        whisper.cpp polls ``should_stop`` between the graphs it runs and returns early when it
        says so. If this greenlet is interrupted instead (the request's timeout, a kill), the
        native call is told to stop and the caller gets its answer now; the slot stays taken
        until whisper.cpp has returned, so the next request never runs on a model still busy.
        """
        halt = False

        def stop() -> bool:
            return halt or (should_stop is not None and should_stop())

        def run(m: Any) -> tuple[bool, Any]:
            # Outcomes, not exceptions: gevent would print a traceback for a failed greenlet.
            try:
                # Even a slow box transcribes faster than real time; past that (plus
                # server.stuck_job_s) the watchdog calls it stuck.
                return True, run_blocking(m.transcribe, samples, should_stop=stop, owner=key,
                                          expect_s=len(samples) / 16000, **opts)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - re-raised below
                return False, exc

        key = f"stt:{model}"
        held = contextlib.ExitStack()
        m = held.enter_context(self.pool.slot(key).use(timeout=wait_s))
        job = gevent.spawn(run, m)
        try:
            ok, value = job.get()
        except BaseException:
            halt = True
            gevent.spawn(_release_after, job, held)
            raise
        held.close()
        if not ok:
            raise value
        return value

    def synthesize(self, voice: str, text: str, speed: float,
                   should_stop: Callable[[], bool] | None = None,
                   speaker_id: int = 0) -> Iterator[bytes]:  # fmt: skip
        """PCM per sentence as it is made; holds the voice until the stream ends.

        Synthesis stops between sentences when ``should_stop`` says so, or when the reader closes
        this generator (the client went away); the voice is free once the sentence in hand ends.
        """
        key = f"tts:{voice}"
        with self.pool.slot(key).use() as v:
            stream = ThreadStream(v.synthesize_stream, text, speed=speed, should_stop=should_stop,
                                  speaker_id=speaker_id, max_buffer=2, owner=key)  # fmt: skip
            try:
                yield from stream
            finally:
                stream.close()
                stream.join()

    def sample_rate(self, voice: str) -> int:
        slot = self.pool.slot(f"tts:{voice}")
        return slot.ensure_loaded().sample_rate


def whisper_multilingual(path: str) -> bool:
    """Whether a whisper.cpp ggml file is multilingual, from its header (English-only: 51864)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    if len(head) < 8 or int.from_bytes(head[:4], "little") != 0x67676D6C:
        return False
    return int.from_bytes(head[4:8], "little") >= 51865


def _release_after(job: gevent.Greenlet, held: contextlib.ExitStack) -> None:
    """Give a model back once the native call in ``job`` has returned."""
    job.join()
    held.close()


def configured_models(cfg: LocalEngineConfig, found: dict[str, Path]) -> dict[str, str]:
    """Configured models, or else the ones found in models_dir."""
    if cfg.models:
        out = {}
        for mid, path in cfg.models:
            if not os.path.exists(path):
                log.warning("model %s: file %s does not exist; not serving it", mid, path)
                continue
            out[mid] = path
        return out
    return {mid: str(p) for mid, p in found.items()}
