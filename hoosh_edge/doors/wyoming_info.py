"""What ``describe`` answers: the box's whisper models, Piper voices and conversation model.

Home Assistant waits about a second for ``info``, so nothing here loads a model: a whisper
model's languages come from its file header (English-only or multilingual), a voice's language
and speakers from its ``.onnx.json``.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    HandleModel,
    HandleProgram,
    Info,
    TtsProgram,
    TtsVoice,
    TtsVoiceSpeaker,
)

from hoosh_edge.backends.engines.piper import config_path
from hoosh_edge.backends.local import OPENAI_VOICES, whisper_multilingual
from hoosh_edge.version import __version__

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger(__name__)

# whisper's languages (its tokenizer's list), for a multilingual model.
WHISPER_LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th "
    "ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr "
    "pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt "
    "haw ln ha ba jw su yue"
).split()
_BY = Attribution(name="hoosh-edge", url="")


def _voice_doc(onnx: str) -> dict[str, Any]:
    try:
        with open(config_path(onnx), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        log.warning("wyoming: cannot read the config of voice %s: %s", onnx, e)
        return {}
    return doc if isinstance(doc, dict) else {}


def speaker_ids(onnx: str) -> dict[str, int]:
    """A multi-speaker voice's speakers by name (empty for a voice of one speaker)."""
    doc = _voice_doc(onnx)
    found = doc.get("speaker_id_map") or {}
    if not isinstance(found, dict) or int(doc.get("num_speakers") or 1) < 2:
        return {}
    return {str(k): v for k, v in found.items() if isinstance(v, int) and not isinstance(v, bool)}


def voice_facts(onnx: str) -> tuple[list[str], list[str]]:
    """A Piper voice's languages and speaker names, from its ``.onnx.json``."""
    doc = _voice_doc(onnx)
    lang: Any = doc.get("language") or {}
    code = lang.get("code") if isinstance(lang, dict) else None
    if not isinstance(code, str) or not code:
        espeak = doc.get("espeak") or {}
        code = str(espeak.get("voice") or "en").replace("-", "_")
    speakers = speaker_ids(onnx)
    return [code], sorted(speakers, key=lambda name: speakers[name])


def _providers(gw: Gateway, model: str, *, transcribe: bool) -> list[str]:
    """Names of the providers that could serve ``model`` as speech-to-text or text-to-speech."""
    return [b.name for b in gw.router.backends
            if not b.is_local and (b.can_transcribe if transcribe else b.can_speak)
            and b.serves(model)]  # fmt: skip


def build_info(gw: Gateway) -> Info:
    """The ``info`` event's content for this gateway's models."""
    speech, w = gw.speech, gw.config.wyoming
    asr_models = [
        AsrModel(name=mid, attribution=_BY, installed=True, description=f"whisper.cpp {mid}",
                 version=None,
                 languages=list(WHISPER_LANGUAGES) if whisper_multilingual(path) else ["en"])
        for mid, path in speech.stt.items()
    ]  # fmt: skip
    cloud_stt = _providers(gw, w.stt_model, transcribe=True)
    if cloud_stt and not speech.stt:  # with a local model, whisper-1 is served by it
        asr_models.append(AsrModel(name=w.stt_model, attribution=_BY, installed=True,
                                   description=f"{w.stt_model} via {', '.join(cloud_stt)}",
                                   version=None, languages=list(WHISPER_LANGUAGES)))  # fmt: skip
    voices = []
    for vid, path in speech.tts.items():
        languages, speakers = voice_facts(path)
        voices.append(TtsVoice(name=vid, attribution=_BY, installed=True,
                               description=f"Piper {vid}", version=None, languages=languages,
                               speakers=[TtsVoiceSpeaker(name=s) for s in speakers] or None))  # fmt: skip
    cloud_tts = _providers(gw, w.tts_model, transcribe=False)
    if cloud_tts and not speech.tts:  # with a local voice, OpenAI names map to it
        via = ", ".join(cloud_tts)
        voices += [TtsVoice(name=v, attribution=_BY, installed=True, version=None,
                            description=f"{v} ({w.tts_model} via {via})", languages=["en"])
                   for v in OPENAI_VOICES]  # fmt: skip
    info = Info()
    if asr_models:
        info.asr = [AsrProgram(name="hoosh-edge", attribution=_BY, installed=True,
                               description="hoosh-edge speech-to-text (whisper.cpp)",
                               version=__version__, models=asr_models,
                               supports_transcript_streaming=True)]  # fmt: skip
    if voices:
        info.tts = [TtsProgram(name="hoosh-edge", attribution=_BY, installed=True,
                               description="hoosh-edge text-to-speech (Piper)",
                               version=__version__, voices=voices,
                               supports_synthesize_streaming=True)]  # fmt: skip
    if w.chat_model:
        langs = sorted({lang.split("_")[0] for v in voices for lang in v.languages}) or ["en"]
        info.handle = [HandleProgram(name="hoosh-edge", attribution=_BY, installed=True,
                                     description="hoosh-edge conversation", version=__version__,
                                     models=[HandleModel(name=w.chat_model, attribution=_BY,
                                                         installed=True, version=None,
                                                         description=f"chat: {w.chat_model}",
                                                         languages=langs)])]  # fmt: skip
    return info
