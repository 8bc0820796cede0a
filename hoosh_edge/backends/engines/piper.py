"""Piper text-to-speech: a voice (``.onnx`` + ``.onnx.json``) run by onnxruntime.

Text goes through ``split_sentences`` -> espeak-ng phonemes (a ``phonemizer.Phonemizer``: the
``piper-phonemize`` wheel or the system's libespeak-ng) -> the voice's phoneme ids -> the VITS
graph -> int16 PCM. Every call here BLOCKS for as long as the model runs; the caller runs it in a
pool thread (``hoosh_edge.threads.run_blocking`` / ``ThreadStream``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from hoosh_edge.backends.engines.phonemizer import SYSTEM_DATA, EspeakData, Phonemizer, resolve
from hoosh_edge.errors import DeadlineExceeded, InvalidRequest, ServiceUnavailable

log = logging.getLogger(__name__)

BOS, EOS, PAD = "^", "$", "_"
MIN_SPEED, MAX_SPEED = 0.25, 4.0  # the range OpenAI's /v1/audio/speech accepts

# Words whose trailing period does not end a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt ft vs etc e.g i.e a.m p.m no approx dept est fig inc ltd co "
    "corp jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)")
_SOFT_BREAK = re.compile(r"[,;:\u2014\u2013]\s")


def split_sentences(text: str, *, min_chars: int = 20, max_chars: int = 250) -> list[str]:
    """Split text into speakable sentences: no tiny fragments, none longer than ``max_chars``."""
    raw: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        start = 0
        for m in _SENTENCE_END.finditer(paragraph):
            if m.group().rstrip("\"'\u201d\u2019)]") == "." and _is_abbreviation(
                paragraph[start : m.start() + 1]
            ):
                continue
            raw.append(paragraph[start : m.end()].strip())
            start = m.end()
        raw.append(paragraph[start:].strip())
    pieces = [p for s in raw if _speakable(s) for p in _break_long(s, max_chars)]
    # Merge fragments ("Hi.", "No!") into their neighbour: each inference has a fixed cost and
    # a one-word utterance sounds clipped.
    merged: list[str] = []
    for piece in pieces:
        if merged and len(merged[-1]) < min_chars and len(merged[-1]) + len(piece) < max_chars:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    if (
        len(merged) > 1
        and len(merged[-1]) < min_chars
        and len(merged[-2]) + len(merged[-1]) < max_chars
    ):
        merged[-2:] = [f"{merged[-2]} {merged[-1]}"]
    return merged


def complete_sentences_end(text: str) -> int:
    """Where the last finished sentence in ``text`` ends (0: none yet), for text still arriving.

    A sentence is finished once its end mark is followed by whitespace: "3." may become "3.5".
    """
    end = 0
    for m in _SENTENCE_END.finditer(text):
        if m.end() >= len(text) or not text[m.end()].isspace():
            continue
        if m.group().rstrip("\"'\u201d\u2019)]") == "." and _is_abbreviation(text[: m.start() + 1]):
            continue
        end = m.end()
    return end


def _is_abbreviation(sentence_so_far: str) -> bool:
    """Does the text end in an abbreviation or an initial ("Dr.", "e.g.", "J.") rather than a full stop?"""
    if not sentence_so_far.endswith("."):
        return False
    word = sentence_so_far.rsplit(None, 1)[-1].lstrip("(\"'\u201c").rstrip(".").lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _speakable(s: str) -> bool:
    return any(ch.isalnum() for ch in s)


def _break_long(sentence: str, max_chars: int) -> list[str]:
    """Break an over-long sentence at the last comma-like mark (else space) before ``max_chars``."""
    out: list[str] = []
    while len(sentence) > max_chars:
        window = sentence[: max_chars + 1]
        cuts = [m.end() for m in _SOFT_BREAK.finditer(window) if m.end() > max_chars // 3]
        cut = cuts[-1] if cuts else window.rfind(" ") + 1
        if cut <= 0:
            cut = max_chars  # one giant "word": cut it anyway rather than never finish
        out.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    if sentence:
        out.append(sentence)
    return out


@dataclass(frozen=True)
class VoiceConfig:
    """The parts of a Piper ``.onnx.json`` that synthesis needs."""

    sample_rate: int
    phoneme_id_map: dict[str, list[int]]
    phoneme_type: str  # "espeak" or "text"
    espeak_voice: str
    noise_scale: float
    length_scale: float
    noise_w: float
    num_speakers: int
    phoneme_map: dict[str, list[str]]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VoiceConfig:
        """Validate and read a parsed ``.onnx.json``."""
        try:
            inference = d.get("inference", {})
            id_map = {str(k): [int(i) for i in v] for k, v in d["phoneme_id_map"].items()}
            cfg = cls(
                sample_rate=int(d["audio"]["sample_rate"]),
                phoneme_id_map=id_map,
                phoneme_type=str(d.get("phoneme_type", "espeak")),
                espeak_voice=str(d.get("espeak", {}).get("voice", "en-us")),
                noise_scale=float(inference.get("noise_scale", 0.667)),
                length_scale=float(inference.get("length_scale", 1.0)),
                noise_w=float(inference.get("noise_w", 0.8)),
                num_speakers=int(d.get("num_speakers", 1)),
                phoneme_map={str(k): list(v) for k, v in (d.get("phoneme_map") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed Piper voice config: {e!r}") from e
        if cfg.phoneme_type not in ("espeak", "text"):
            raise ValueError(f"unsupported Piper phoneme_type {cfg.phoneme_type!r}")
        for sym in (BOS, EOS, PAD):
            if sym not in id_map:
                raise ValueError(f"Piper phoneme_id_map lacks {sym!r}")
        return cfg


def config_path(onnx_path: str) -> str:
    """Piper's convention: the config sits beside the model as ``<model>.onnx.json``."""
    return onnx_path + ".json"


class PiperVoice:
    """One loaded Piper voice; ``synthesize_stream`` yields int16 mono LE PCM per sentence."""

    def __init__(
        self, session: Any, config: VoiceConfig, onnx_path: str, phonemizer: Phonemizer
    ) -> None:
        self._session = session
        self.config = config
        self.onnx_path = onnx_path
        self.sample_rate = config.sample_rate
        inputs = {i.name for i in session.get_inputs()}
        self._use_sid = config.num_speakers > 1 and "sid" in inputs
        self.phonemizer = phonemizer

    @classmethod
    def load(
        cls,
        onnx_path: str,
        n_threads: int = 0,
        phonemizer: str = "auto",
        espeak_data: EspeakData = SYSTEM_DATA,
    ) -> PiperVoice:
        """Read ``<onnx_path>.json`` and open the graph; ``n_threads=0`` lets onnxruntime choose.

        ``phonemizer`` is ``[local.tts] phonemizer`` and ``espeak_data`` the data its espeak-ng
        path reads; ServiceUnavailable if it cannot be had.
        """
        chosen = resolve(phonemizer, espeak_data)
        import onnxruntime as ort

        with open(config_path(onnx_path), encoding="utf-8") as f:
            config = VoiceConfig.from_dict(json.load(f))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(0, int(n_threads))
        opts.inter_op_num_threads = 1  # a VITS graph is one chain; more pools only cost memory
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if config.phoneme_type == "espeak":
            try:
                chosen.espeak("", config.espeak_voice)
            except ValueError:  # a voice file naming a language espeak-ng lacks
                raise ServiceUnavailable(
                    f"Voice {os.path.basename(onnx_path)} cannot speak: its .onnx.json names espeak "
                    f"voice {config.espeak_voice!r}, which {chosen.name} lacks "
                    "(espeak-ng --voices lists them).",
                    code="voice_unavailable",
                ) from None
        session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        return cls(session, config, onnx_path, chosen)

    @staticmethod
    def estimate_bytes(onnx_path: str) -> int:
        """Resident memory a loaded voice needs: weights plus onnxruntime arenas and activations."""
        # Measured: joe-medium (63 MB file) grew RSS by ~95 MB on load and ~113 MB after a sentence.
        return int(os.path.getsize(onnx_path) * 1.6) + 32 * 1024 * 1024

    def phonemize(self, text: str) -> list[str]:
        """Text -> one flat phoneme list (espeak's own sentence splits joined by a space)."""
        text = text.replace("\x00", " ")  # C strings: a NUL would end the text there
        if self.config.phoneme_type == "text":
            sentences = self.phonemizer.codepoints(text)
        else:
            sentences = self.phonemizer.espeak(text, self.config.espeak_voice)
        phonemes: list[str] = []
        for sentence in sentences:
            if phonemes and sentence:
                phonemes.append(" ")
            for p in sentence:
                phonemes.extend(self.config.phoneme_map.get(p, [p]))
        return phonemes

    def phoneme_ids(self, phonemes: list[str]) -> list[int]:
        """Piper's id layout: BOS, PAD, then each known phoneme followed by PAD, then EOS."""
        id_map = self.config.phoneme_id_map
        pad = id_map[PAD]
        ids = [*id_map[BOS], *pad]
        missing: Counter[str] = Counter()
        for p in phonemes:
            if p not in id_map:
                missing[p] += 1
                continue
            ids.extend(id_map[p])
            ids.extend(pad)
        ids.extend(id_map[EOS])
        if missing:
            log.warning("voice %s: skipped unknown phonemes %s", self.onnx_path, dict(missing))
        return ids

    def synthesize_ids(
        self, ids: list[int], *, speed: float = 1.0, speaker_id: int = 0
    ) -> np.ndarray:
        """Run the graph on one id sequence; returns float32 audio in [-1, 1]."""
        feeds: dict[str, np.ndarray] = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array(
                [self.config.noise_scale, self.config.length_scale / speed, self.config.noise_w],
                dtype=np.float32,
            ),
        }
        if self._use_sid:
            feeds["sid"] = np.array([speaker_id], dtype=np.int64)
        if self._session is None:
            raise RuntimeError(f"voice {self.onnx_path} is closed")
        audio = self._session.run(None, feeds)[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1)

    def synthesize_stream(
        self,
        text: str,
        *,
        speed: float = 1.0,
        should_stop: Callable[[], bool] | None = None,
        speaker_id: int = 0,
    ) -> Iterator[bytes]:
        """Yield int16 mono little-endian PCM at ``sample_rate``, one sentence at a time.

        ``should_stop`` is asked before each sentence; once it says so this raises
        ``DeadlineExceeded`` (a sentence already running in onnxruntime finishes first).
        """
        speed = _check_speed(speed)
        for sentence in split_sentences(text):
            if should_stop is not None and should_stop():
                raise DeadlineExceeded(
                    "Speech synthesis stopped: the request ran past its deadline."
                )
            phonemes = self.phonemize(sentence)
            if not any(p.strip() for p in phonemes):
                continue
            audio = self.synthesize_ids(
                self.phoneme_ids(phonemes), speed=speed, speaker_id=speaker_id
            )
            if audio.size:
                yield float_to_int16(audio)

    def synthesize(self, text: str, speed: float = 1.0) -> bytes:
        """All of ``synthesize_stream`` joined into one PCM buffer."""
        return b"".join(self.synthesize_stream(text, speed=speed))

    def close(self) -> None:
        """Drop the onnxruntime session so its memory can be freed."""
        self._session = None


def float_to_int16(audio: np.ndarray) -> bytes:
    """Peak-normalise one utterance to full scale, as Piper does, and pack as int16 LE."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    scaled = audio * (32767.0 / max(0.01, peak))  # the floor keeps near-silence from being boosted
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


def _check_speed(speed: float) -> float:
    try:
        speed = float(speed)
    except (TypeError, ValueError):
        raise InvalidRequest("speed must be a number", param="speed") from None
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise InvalidRequest(f"speed must be between {MIN_SPEED} and {MAX_SPEED}", param="speed")
    return speed
