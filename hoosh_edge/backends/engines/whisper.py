"""Speech-to-text with whisper.cpp, through pywhispercpp's binding layer.

We call ``_pywhispercpp`` (the binding pywhispercpp's own ``Model`` class is built on) rather than
``Model`` because ``Model`` downloads a model whenever its argument is not an existing file, and
only frees its context at garbage collection. Here a model loads from a path or fails, and
``close()`` returns its memory at once.

All calls here BLOCK (the native code releases the GIL); the caller runs them in a worker thread.
One ``WhisperModel`` runs one transcription at a time. ``transcribe(..., should_stop=...)`` hands
whisper.cpp an abort callback (ggml asks it between graph nodes, a few hundred times a second), so
a transcription past its deadline returns within milliseconds and frees the model.
"""

from __future__ import annotations

import atexit
import collections
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hoosh_edge.errors import DeadlineExceeded, HooshError, InvalidRequest
from hoosh_edge.workers import native_lock

GGML_MAGIC = 0x67676D6C
SAMPLE_RATE = 16000
_LOG_ERROR = 4  # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation


_log_lock = native_lock()
_recent_log: collections.deque[tuple[int, str]] = collections.deque(maxlen=64)
_log_installed = False


def _on_native_log(level: int, text: str) -> None:
    # Keep whisper.cpp's chatter off stdout/stderr; errors are kept to explain a failed load.
    _recent_log.append((int(level), str(text)))


def _install_log_sink() -> Any:
    """Route whisper.cpp's log into memory (once per process); returns the binding module."""
    global _log_installed
    import _pywhispercpp as pw

    with _log_lock:
        if not _log_installed:
            pw.whisper_log_set(_on_native_log)
            # A Python callback left installed crashes the interpreter at shutdown, when ggml
            # logs from its teardown after Python's finalisation has begun.
            atexit.register(pw.whisper_log_set, None)
            _log_installed = True
    return pw


@dataclass
class Transcript:
    """What a transcription produced; times in seconds."""

    text: str
    language: str | None
    duration_s: float
    segments: list[dict[str, Any]] = field(default_factory=list)
    task: str = "transcribe"
    temperature: float = 0.0
    words: list[dict[str, Any]] | None = None  # {word, start, end}, when asked for


def read_hparams(path: str | os.PathLike) -> dict[str, int]:
    """Read a whisper.cpp ggml header; raise ValueError if the file is not one."""
    names = (
        "n_vocab n_audio_ctx n_audio_state n_audio_head n_audio_layer "
        "n_text_ctx n_text_state n_text_head n_text_layer n_mels ftype"
    ).split()
    with open(path, "rb") as f:
        head = f.read(4 + 4 * len(names))
    if len(head) < 4 + 4 * len(names) or struct.unpack_from("<I", head)[0] != GGML_MAGIC:
        raise ValueError(f"{path} is not a whisper.cpp ggml model")
    values = struct.unpack_from(f"<{len(names)}i", head, 4)
    if min(values[:10]) <= 0:
        raise ValueError(f"{path} has an invalid whisper.cpp header")
    return dict(zip(names, values, strict=True))


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class WhisperModel:
    """A loaded whisper.cpp model: ``load`` it, ``transcribe`` samples, ``close`` it."""

    def __init__(self, pw: Any, ctx: Any, path: str, hparams: dict[str, int], n_threads: int):
        self._pw = pw
        self._ctx = ctx
        self.path = path
        self.hparams = hparams
        self.n_threads = n_threads
        self.multilingual = bool(pw.whisper_is_multilingual(ctx))
        self._lock = native_lock()

    @classmethod
    def load(cls, path: str, n_threads: int = 0) -> WhisperModel:
        """Load a ggml model file; never downloads. Raises ValueError for a bad file."""
        path = str(Path(path).resolve())
        if not Path(path).is_file():
            raise FileNotFoundError(path)
        hparams = read_hparams(path)
        pw = _install_log_sink()
        with _log_lock:
            _recent_log.clear()
            ctx = pw.whisper_init_from_file_with_params(path, pw.whisper_context_default_params())
            errors = [text.strip() for level, text in _recent_log if level == _LOG_ERROR]
        if errors:
            # The binding hands back a wrapper even when whisper.cpp returned NULL; using it would
            # crash the process, so an error logged during init means the load failed.
            raise ValueError(f"whisper.cpp could not load {path}: {'; '.join(errors[-3:])}")
        return cls(pw, ctx, path, hparams, n_threads if n_threads > 0 else _default_threads())

    @staticmethod
    def estimate_bytes(path: str | os.PathLike) -> int:
        """Memory a loaded model needs: the weights plus whisper.cpp's caches and work buffers."""
        size = os.path.getsize(path)
        try:
            hp = read_hparams(path)
        except (OSError, ValueError):
            return size * 2 + (256 << 20)
        layer_bytes = 2 * 2 * hp["n_text_layer"] * hp["n_text_state"]  # K and V, f16
        # Self-attention KV cache over the text context, cross-attention KV over the audio.
        kv = layer_bytes * (hp["n_text_ctx"] + hp["n_audio_ctx"])
        # The decoder's work buffer is dominated by logits for a full text context.
        decode = 4 * hp["n_vocab"] * hp["n_text_ctx"]
        # Conv front-end over 3000 mel frames, then encoder activations over the audio context.
        encode = 4 * hp["n_audio_state"] * (3 * 2 * hp["n_audio_ctx"] + 8 * hp["n_audio_ctx"])
        return size + kv + decode + encode + (32 << 20)

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def transcribe(
        self,
        samples: np.ndarray,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        translate: bool = False,
        should_stop: Callable[[], bool] | None = None,
        words: bool = False,
    ) -> Transcript:
        """Transcribe (or translate to English) 16 kHz mono samples. BLOCKS for seconds.

        ``should_stop`` is polled from whisper.cpp's threads; once it returns True the native call
        returns early and this raises ``DeadlineExceeded``.
        """
        pw = self._pw
        params = pw.whisper_full_default_params(
            pw.whisper_sampling_strategy.WHISPER_SAMPLING_GREEDY
        )
        params.n_threads = self.n_threads
        # Nothing may reach stdout: a server's stdout is its log, and whisper.cpp would print
        # every segment and a progress meter there.
        params.print_progress = False
        params.print_realtime = False
        params.print_timestamps = False
        params.print_special = False
        params.translate = bool(translate)
        params.token_timestamps = bool(words)  # a start and end time for every token
        params.temperature = float(temperature)
        params.language = self._language_code(language, translate)
        if prompt:
            params.initial_prompt = prompt
        stopped = False
        if should_stop is not None:

            def abort() -> bool:
                nonlocal stopped
                stopped = stopped or bool(should_stop())
                return stopped

            params.set_abort_callback(abort)
        audio = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            raise InvalidRequest("The audio contains no samples.", param="file")
        with self._lock:
            if self._ctx is None:
                raise HooshError("The speech-to-text model was unloaded.")
            rc = pw.whisper_full(self._ctx, params, audio, audio.size)
            if stopped:
                raise DeadlineExceeded(
                    "The transcription was stopped: the request ran past its deadline."
                )
            if rc != 0:
                raise HooshError(f"whisper.cpp failed to transcribe (code {rc}).")
            segments = self._segments()
            timed = self._words() if words else None
            lang = (
                pw.whisper_lang_str(pw.whisper_full_lang_id(self._ctx))
                if self.multilingual
                else "en"
            )
        return Transcript(
            text=" ".join(s["text"] for s in segments if s["text"]),
            language="en" if translate else lang,
            duration_s=audio.size / SAMPLE_RATE,
            segments=segments,
            task="translate" if translate else "transcribe",
            temperature=float(temperature),
            words=timed,
        )

    def _language_code(self, language: str | None, translate: bool) -> str:
        if translate and not self.multilingual:
            raise InvalidRequest(
                "This speech-to-text model is English-only and cannot translate. Install a "
                "multilingual one: 'hoosh-edge models pull whisper-tiny' (or whisper-base).",
                param="model",
            )
        if not language:
            return "auto" if self.multilingual else "en"
        code = language.strip().lower()
        if not self.multilingual and code not in ("en", "english"):
            raise InvalidRequest(
                f"This speech-to-text model is English-only; language {language!r} is not supported.",
                param="language",
            )
        if self._pw.whisper_lang_id(code) < 0:
            raise InvalidRequest(f"Unknown language {language!r}.", param="language")
        return code

    def _words(self) -> list[dict[str, Any]]:
        """Words with start and end times, from token timestamps (a space starts a word)."""
        pw, ctx = self._pw, self._ctx
        eot = pw.whisper_token_eot(ctx)
        words: list[dict[str, Any]] = []
        raw, start, end = b"", 0.0, 0.0

        def flush() -> None:
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                words.append({"word": text, "start": round(start, 2), "end": round(end, 2)})

        for i in range(pw.whisper_full_n_segments(ctx)):
            for j in range(pw.whisper_full_n_tokens(ctx, i)):
                data = pw.whisper_full_get_token_data(ctx, i, j)
                if data.id >= eot:
                    continue  # timestamps and other special tokens carry no text
                piece = pw.whisper_token_to_bytes(ctx, data.id)
                if piece.startswith(b" ") or not raw:
                    flush()
                    raw, start, end = b"", data.t0 / 100.0, data.t0 / 100.0  # 10 ms steps
                raw += piece
                end = max(end, data.t1 / 100.0)
            flush()  # a segment ends a word
            raw = b""
        return words

    def _segments(self) -> list[dict[str, Any]]:
        pw, ctx = self._pw, self._ctx
        eot = pw.whisper_token_eot(ctx)
        segments = []
        for i in range(pw.whisper_full_n_segments(ctx)):
            tokens, logprobs = [], []
            for j in range(pw.whisper_full_n_tokens(ctx, i)):
                data = pw.whisper_full_get_token_data(ctx, i, j)
                tokens.append(int(data.id))
                if data.id < eot:  # text tokens only; timestamps would skew the average
                    logprobs.append(float(data.plog))
            text = pw.whisper_full_get_segment_text(ctx, i).decode("utf-8", errors="replace")
            segments.append(
                {
                    "id": i,
                    # whisper.cpp counts time in 10 ms steps
                    "start": pw.whisper_full_get_segment_t0(ctx, i) / 100.0,
                    "end": pw.whisper_full_get_segment_t1(ctx, i) / 100.0,
                    "text": text.strip(),
                    "tokens": tokens,
                    "avg_logprob": float(np.mean(logprobs)) if logprobs else 0.0,
                }
            )
        return segments

    def close(self) -> None:
        """Free the model's memory now; safe to call twice. Waits for a running transcription."""
        with self._lock:
            ctx, self._ctx = self._ctx, None
            if ctx is not None:
                self._pw.whisper_free(ctx)

    def __enter__(self) -> WhisperModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
