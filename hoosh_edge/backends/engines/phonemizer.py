"""Which phonemizer turns text into Piper's phonemes: the one place that chooses.

``[local.tts] phonemizer``: ``piper-phonemize`` (the wheel, with its own espeak-ng and data;
published for CPython 3.9-3.11 only), ``espeak-ng`` (the system's libespeak-ng through ctypes,
any Python) or ``auto`` (the wheel where it is installed, else the system library). Both give the
same phoneme ids (tests/test_phonemizer_parity.py). Each is loaded once per process and used
under ``espeak.ESPEAK_LOCK``: espeak-ng's state is global.
"""

from __future__ import annotations

import sys
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hoosh_edge.backends.engines import espeak
from hoosh_edge.config.schema import PHONEMIZERS as CHOICES
from hoosh_edge.errors import ServiceUnavailable

INSTALL = {
    "piper-phonemize": "pip install piper-phonemize (wheels for Python 3.9-3.11 only)",
    "espeak-ng": "sudo apt-get install libespeak-ng1 espeak-ng-data",
}
NO_WHEEL_FROM = (3, 12)  # piper-phonemize publishes no wheel from this Python on


class Phonemizer(Protocol):
    """Text -> Piper's phonemes, one list per sentence; ValueError for an unknown espeak voice."""

    name: str
    detail: str

    def espeak(self, text: str, voice: str) -> list[list[str]]: ...

    def codepoints(self, text: str) -> list[list[str]]: ...


class PiperPhonemize:
    """The ``piper-phonemize`` wheel, reading the espeak-ng data it ships."""

    name = "piper-phonemize"

    def __init__(self) -> None:
        import piper_phonemize

        self._pp = piper_phonemize
        self._data = str(espeak.short_data_path(Path(piper_phonemize.__file__).parent /
                                                "espeak-ng-data"))  # fmt: skip
        version = _dist_version("piper-phonemize")
        self.detail = f"piper-phonemize {version} (its bundled espeak-ng, data {self._data})"

    def espeak(self, text: str, voice: str) -> list[list[str]]:
        with espeak.ESPEAK_LOCK:
            try:
                sentences = self._pp.phonemize_espeak(text, voice, self._data)
            except RuntimeError as e:  # its only error: "Failed to set eSpeak-ng voice"
                raise ValueError(f"espeak-ng has no voice {voice!r} ({e})") from None
            self._pp.phonemize_espeak("", voice, self._data)  # see EspeakPhonemizer.espeak
        return sentences

    def codepoints(self, text: str) -> list[list[str]]:
        return self._pp.phonemize_codepoints(text)


class EspeakPhonemizer:
    """The system's libespeak-ng through ctypes (``espeak.EspeakNG``)."""

    name = "espeak-ng"

    def __init__(self, library: str | None = None, data_dir: str | None = None) -> None:
        with espeak.ESPEAK_LOCK:
            self._ng = espeak.EspeakNG(library, data_dir)
        self.detail = f"{self._ng.library} {self._ng.version} (data {self._ng.data_dir})"

    def espeak(self, text: str, voice: str) -> list[list[str]]:
        with espeak.ESPEAK_LOCK:
            sentences = self._ng.phonemize(text, voice)
            # espeak-ng keeps the character it read past the last clause for its next call; an
            # empty text takes it, so one request's "dot" never opens the next one's.
            self._ng.phonemize("", voice)
        return sentences

    def codepoints(self, text: str) -> list[list[str]]:
        """piper-phonemize's ``phonemize_codepoints``: case-folded, decomposed, one sentence."""
        return [list(unicodedata.normalize("NFD", text.casefold()))]


@dataclass(frozen=True)
class PhonemizerStatus:
    """What /v1/health, the status page and ``hoosh-edge doctor`` say about the phonemizer."""

    configured: str
    in_use: str | None
    detail: str
    fix: str | None  # what to install, when none can be used

    def as_dict(self) -> dict[str, Any]:
        return {"configured": self.configured, "in_use": self.in_use, "detail": self.detail,
                "fix": self.fix}  # fmt: skip


_made: dict[str, Phonemizer] = {}
_made_lock = threading.Lock()


def resolve(choice: str = "auto") -> Phonemizer:
    """The phonemizer ``choice`` names, loaded once per process; ServiceUnavailable says why not."""
    if choice not in CHOICES:
        raise ValueError(f"phonemizer must be one of {', '.join(CHOICES)}, not {choice!r}")
    order = ("piper-phonemize", "espeak-ng") if choice == "auto" else (choice,)
    reasons = []
    with _made_lock:
        for name in order:
            if name in _made:
                return _made[name]
            try:
                made: Phonemizer = (
                    PiperPhonemize() if name == "piper-phonemize" else EspeakPhonemizer()
                )
            except (ImportError, OSError, espeak.EspeakUnavailable) as e:
                reasons.append(f"{name}: {e}")
                continue
            _made[name] = made
            return made
    raise ServiceUnavailable(
        f"Text-to-speech needs a phonemizer and none can be used ({'; '.join(reasons)}). "
        f"To fix: {install_hint(choice)}.",
        code="phonemizer_unavailable",
    )


def status(choice: str = "auto") -> PhonemizerStatus:
    """Resolve ``choice`` and say what is in use, or what to install."""
    try:
        p = resolve(choice)
    except ServiceUnavailable as e:
        return PhonemizerStatus(choice, None, str(e), install_hint(choice))
    return PhonemizerStatus(choice, p.name, p.detail, None)


def install_hint(choice: str, python: tuple[int, int] | None = None) -> str:
    """What to install so that ``choice`` can be used on this Python (or on ``python``)."""
    python = python or (sys.version_info[0], sys.version_info[1])
    no_wheel = python >= NO_WHEEL_FROM
    if choice == "espeak-ng" or (choice == "auto" and no_wheel):
        return INSTALL["espeak-ng"]
    if choice == "piper-phonemize" and no_wheel:
        py = f"{python[0]}.{python[1]}"
        return (f'set phonemizer = "espeak-ng" and {INSTALL["espeak-ng"]} (piper-phonemize '
                f"has no wheel for Python {py})")  # fmt: skip
    if choice == "piper-phonemize":
        return INSTALL["piper-phonemize"]
    return f"{INSTALL['piper-phonemize']} or {INSTALL['espeak-ng']}"


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(version unknown)"
