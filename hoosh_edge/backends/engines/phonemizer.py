"""Which phonemizer turns text into Piper's phonemes: the one place that chooses.

``[local.tts] phonemizer``: ``piper-phonemize`` (the wheel, with its own espeak-ng and data;
published for CPython 3.9-3.11 only), ``espeak-ng`` (the system's libespeak-ng through ctypes,
any Python) or ``auto`` (the wheel where it is installed, else the system library). Each is
loaded once per process and used under ``espeak.ESPEAK_LOCK``: espeak-ng's state is global.

The voices were trained on the phonemes of the wheel's espeak-ng *and its data*; the espeak-ng
path gives the same ids when it reads that data (``hoosh-edge models pull espeak-ng-data``
puts it in models/; tests/test_espeak_data_parity.py), and may differ on the system's own data
(libespeak-ng 1.52's gives other phonemes for dozens of words). ``espeak_data`` picks the folder.
"""

from __future__ import annotations

import os
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
PULL_DATA = "hoosh-edge models pull espeak-ng-data"
DATA_DIR_NAME = "espeak-ng-data"  # where ``models pull espeak-ng-data`` puts it in models_dir


@dataclass(frozen=True)
class EspeakData:
    """The espeak-ng data folder the espeak-ng path reads, and why that one.

    ``origin``: ``config`` (``[local.tts] espeak_data``), ``ESPEAK_DATA_PATH`` (espeak-ng's own
    variable, read by the library), ``models`` (models_dir/espeak-ng-data) or ``system``.
    """

    path: str | None
    origin: str


def espeak_data(configured: str | None, models_dir: str | Path | None) -> EspeakData:
    """Which data the espeak-ng path reads: the configured folder, else ESPEAK_DATA_PATH, else
    the pulled one in models_dir, else the system's."""
    if configured:
        return EspeakData(os.path.abspath(configured), "config")
    if os.environ.get("ESPEAK_DATA_PATH"):
        return EspeakData(None, "ESPEAK_DATA_PATH")
    pulled = Path(models_dir) / DATA_DIR_NAME if models_dir is not None else None
    if pulled is not None and pulled.is_dir():
        return EspeakData(str(pulled.resolve()), "models")
    return EspeakData(None, "system")


SYSTEM_DATA = EspeakData(None, "system")


class Phonemizer(Protocol):
    """Text -> Piper's phonemes, one list per sentence; ValueError for an unknown espeak voice."""

    name: str
    detail: str
    data_dir: str  # the espeak-ng data folder it reads
    data_origin: str  # EspeakData.origin, or "piper-phonemize" for the wheel's own

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
        self.data_dir, self.data_origin = self._data, "piper-phonemize"
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

    def __init__(
        self, library: str | None = None, data_dir: str | None = None, origin: str = "system"
    ) -> None:
        if data_dir:  # a deep folder (the single file's cache) is given by a short alias
            data_dir = str(espeak.short_data_path(Path(data_dir)))
        with espeak.ESPEAK_LOCK:
            self._ng = espeak.EspeakNG(library, data_dir)
        self.data_dir, self.data_origin = self._ng.data_dir, origin
        where = {"models": "pulled", "config": "local.tts.espeak_data", "system": "the system's"}
        self.detail = (f"{self._ng.library} {self._ng.version} (data {self._ng.data_dir}, "
                       f"{where.get(origin, origin)})")  # fmt: skip

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
    data: str | None = None  # the espeak-ng data folder read
    data_origin: str | None = None  # EspeakData.origin, or "piper-phonemize"
    warning: str | None = None  # speaks, but maybe not with the voices' own phoneme ids

    def as_dict(self) -> dict[str, Any]:
        return {"configured": self.configured, "in_use": self.in_use, "detail": self.detail,
                "fix": self.fix, "data": self.data, "data_origin": self.data_origin,
                "warning": self.warning}  # fmt: skip


class PhonemizerUnavailable(ServiceUnavailable):
    """No phonemizer can be loaded; ``fix`` says what to do about it."""

    code = "phonemizer_unavailable"

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


_made: dict[tuple[str, str | None], Phonemizer] = {}
_made_lock = threading.Lock()


def resolve(choice: str = "auto", data: EspeakData = SYSTEM_DATA) -> Phonemizer:
    """The phonemizer ``choice`` names, loaded once per process; ServiceUnavailable says why not.

    ``data`` is the folder the espeak-ng path reads (the wheel always reads its own).
    """
    if choice not in CHOICES:
        raise ValueError(f"phonemizer must be one of {', '.join(CHOICES)}, not {choice!r}")
    order = ("piper-phonemize", "espeak-ng") if choice == "auto" else (choice,)
    reasons, fix = [], install_hint(choice, data=data)
    with _made_lock:
        for name in order:
            key = (name, data.path if name == "espeak-ng" else None)
            if key in _made:
                return _made[key]
            if name == "espeak-ng" and data.path is not None and not os.path.isdir(data.path):
                reasons.append(f"espeak-ng: its data folder {data.path} does not exist")
                continue
            try:
                made: Phonemizer = (
                    PiperPhonemize()
                    if name == "piper-phonemize"
                    else EspeakPhonemizer(None, data.path, data.origin)
                )
            except espeak.EspeakDataRefused as e:
                reasons.append(f"{name}: {e}")
                fix = (f"move the espeak-ng data to a shorter path and set local.tts.espeak_data "
                       f"to it (libespeak-ng refused {data.path})")  # fmt: skip
                continue
            except (ImportError, OSError, espeak.EspeakUnavailable) as e:
                reasons.append(f"{name}: {e}")
                continue
            _made[key] = made
            return made
    raise PhonemizerUnavailable(
        f"Text-to-speech needs a phonemizer and none can be used ({'; '.join(reasons)}). "
        f"To fix: {fix}.",
        fix,
    )


def status(choice: str = "auto", data: EspeakData = SYSTEM_DATA) -> PhonemizerStatus:
    """Resolve ``choice`` and say what is in use and which data it reads, or what to install."""
    try:
        p = resolve(choice, data)
    except PhonemizerUnavailable as e:
        return PhonemizerStatus(choice, None, str(e), e.fix)
    warning = None
    if p.data_origin == "system":
        warning = (f"espeak-ng reads the system's data ({p.data_dir}), not the data Piper voices "
                   f"were trained on: phoneme ids may differ from the voice's training. "
                   f"To fix: {PULL_DATA}, then restart the gateway")  # fmt: skip
    return PhonemizerStatus(choice, p.name, p.detail, None, p.data_dir, p.data_origin, warning)


def install_hint(
    choice: str, python: tuple[int, int] | None = None, data: EspeakData = SYSTEM_DATA
) -> str:
    """What to install so that ``choice`` can be used on this Python (or on ``python``)."""
    missing = data.origin == "config" and data.path and not os.path.isdir(data.path)
    if missing and choice != "piper-phonemize":  # the wheel reads its own data, never this
        return (
            f"set local.tts.espeak_data to an espeak-ng-data folder, or remove it and {PULL_DATA}"
        )
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
