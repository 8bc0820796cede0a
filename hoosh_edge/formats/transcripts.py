"""Render a Transcript in the response formats of OpenAI's /v1/audio endpoints.

``json`` -> ``{"text"}``; ``text`` -> the plain text; ``srt`` / ``vtt`` -> subtitles;
``verbose_json`` -> OpenAI's detailed shape. Fields whisper.cpp cannot tell us (a segment's
no-speech probability, its decoding window) are 0, never invented.
"""

from __future__ import annotations

import zlib
from typing import Any

from hoosh_edge.errors import InvalidRequest

FORMATS = ("json", "text", "srt", "verbose_json", "vtt")

# Whisper's language codes and the names OpenAI's verbose_json reports.
_LANGUAGE_NAMES = dict(
    pair.split(":")
    for pair in (
        "en:english zh:chinese de:german es:spanish ru:russian ko:korean fr:french ja:japanese "
        "pt:portuguese tr:turkish pl:polish ca:catalan nl:dutch ar:arabic sv:swedish it:italian "
        "id:indonesian hi:hindi fi:finnish vi:vietnamese he:hebrew uk:ukrainian el:greek "
        "ms:malay cs:czech ro:romanian da:danish hu:hungarian ta:tamil no:norwegian th:thai "
        "ur:urdu hr:croatian bg:bulgarian lt:lithuanian la:latin mi:maori ml:malayalam cy:welsh "
        "sk:slovak te:telugu fa:persian lv:latvian bn:bengali sr:serbian az:azerbaijani "
        "sl:slovenian kn:kannada et:estonian mk:macedonian br:breton eu:basque is:icelandic "
        "hy:armenian ne:nepali mn:mongolian bs:bosnian kk:kazakh sq:albanian sw:swahili "
        "gl:galician mr:marathi pa:punjabi si:sinhala km:khmer sn:shona yo:yoruba so:somali "
        "af:afrikaans oc:occitan ka:georgian be:belarusian tg:tajik sd:sindhi gu:gujarati "
        "am:amharic yi:yiddish lo:lao uz:uzbek fo:faroese ht:haitian_creole ps:pashto "
        "tk:turkmen nn:nynorsk mt:maltese sa:sanskrit lb:luxembourgish my:myanmar bo:tibetan "
        "tl:tagalog mg:malagasy as:assamese tt:tatar haw:hawaiian ln:lingala ha:hausa "
        "ba:bashkir jw:javanese su:sundanese yue:cantonese"
    ).split()
)


def language_name(code: str | None) -> str | None:
    """Whisper's full language name for a code ('en' -> 'english'); unknown codes pass through."""
    if not code:
        return code
    name = _LANGUAGE_NAMES.get(code.lower())
    return name.replace("_", " ") if name else code


def compression_ratio(text: str) -> float:
    """Whisper's repetition gauge: UTF-8 length over zlib-compressed length."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def _clock(seconds: float, decimal: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def _cue_text(text: str) -> str:
    # A blank line ends a cue in both SRT and WebVTT, so one inside the text would cut it short.
    return "\n".join(line for line in text.strip().splitlines() if line.strip())


def to_srt(segments: list[dict[str, Any]]) -> str:
    """SubRip: numbered cues, comma before the milliseconds."""
    cues = []
    for n, seg in enumerate((s for s in segments if _cue_text(s["text"])), start=1):
        start, end = _clock(seg["start"], ","), _clock(seg["end"], ",")
        cues.append(f"{n}\n{start} --> {end}\n{_cue_text(seg['text'])}\n")
    return "\n".join(cues)


def to_vtt(segments: list[dict[str, Any]]) -> str:
    """WebVTT: a header, then cues with a dot before the milliseconds."""
    cues = ["WEBVTT\n"]
    for seg in segments:
        text = _cue_text(seg["text"]).replace("-->", "->")  # "-->" would read as a timing line
        if text:
            cues.append(f"{_clock(seg['start'], '.')} --> {_clock(seg['end'], '.')}\n{text}\n")
    return "\n".join(cues)


def to_verbose_json(transcript: Any) -> dict[str, Any]:
    """OpenAI's verbose_json body."""
    segments = []
    for seg in transcript.segments:
        segments.append(
            {
                "id": seg["id"],
                "seek": 0,  # whisper.cpp does not report its decoding window
                "start": round(float(seg["start"]), 3),
                "end": round(float(seg["end"]), 3),
                "text": seg["text"],
                "tokens": list(seg.get("tokens", [])),
                "temperature": float(getattr(transcript, "temperature", 0.0)),
                "avg_logprob": float(seg.get("avg_logprob", 0.0)),
                "compression_ratio": compression_ratio(seg["text"]),
                "no_speech_prob": 0.0,
            }
        )
    out = {
        "task": getattr(transcript, "task", "transcribe"),
        "language": language_name(transcript.language),
        "duration": round(float(transcript.duration_s), 3),
        "text": transcript.text,
        "segments": segments,
    }
    words = getattr(transcript, "words", None)
    if words is not None:
        out["words"] = [dict(w) for w in words]  # timestamp_granularities[] = word
    return out


def render(transcript: Any, response_format: str | None) -> tuple[str | dict, str]:
    """(body, mimetype) for ``response_format``; a dict body is to be sent as JSON."""
    fmt = (response_format or "json").strip().lower()
    if fmt == "json":
        return {"text": transcript.text}, "application/json"
    if fmt == "text":
        return transcript.text + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        return to_srt(transcript.segments), "text/plain; charset=utf-8"
    if fmt == "vtt":
        return to_vtt(transcript.segments), "text/vtt; charset=utf-8"
    if fmt == "verbose_json":
        return to_verbose_json(transcript), "application/json"
    raise InvalidRequest(
        f"Unknown response_format {response_format!r}; use one of: {', '.join(FORMATS)}.",
        param="response_format",
    )
