"""libespeak-ng through ctypes: Piper's phonemes without the ``piper-phonemize`` wheel.

``piper-phonemize`` links a fork of espeak-ng with one extra call,
``espeak_TextToPhonemesWithTerminator``, which also says which punctuation ended each clause;
Piper appends that mark to the clause's phonemes (``,`` ``:`` ``;`` followed by a space, ``.``
``?`` ``!`` alone) and starts a new sentence after a sentence-ending one. The system library
(Debian's ``libespeak-ng1``) has only ``espeak_TextToPhonemes``; it moves the text pointer past
each clause, so the clause's text is known and its terminator is read back from it with the
same punctuation table espeak-ng uses (``_CLAUSE_MARKS``). Where the library does have the fork's
call, it is used instead.

espeak-ng keeps global state and is not thread-safe: the caller holds ``ESPEAK_LOCK``. Its data
folder is global too: two ``EspeakNG`` on one library with different data re-initialise it when
they take turns (``_DATA_IN_USE``), so neither reads the other's dictionaries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

# One lock for every espeak-ng in the process (this library and the wheel's copy alike).
ESPEAK_LOCK = threading.Lock()
# The data folder each loaded library (by its dlopen handle) was last initialised with.
_DATA_IN_USE: dict[int, bytes | None] = {}

_AUDIO_OUTPUT_SYNCHRONOUS = 0x02
_INITIALIZE_DONT_EXIT = 0x8000  # a missing data folder returns an error instead of exit()
_CHARS_AUTO = 0
_PHONEMES_IPA = 0x02  # piper-phonemize's phoneme mode: IPA, no separator, no ties
_EE_OK = 0

# espeak-ng's clause values (readclause.h), after Piper's mask of the top flag bits.
_PUNCT_MASK = 0x000FFFFF
_TYPE_SENTENCE = 0x00080000
_PIPER_MARKS = {
    40 | 0x0000 | _TYPE_SENTENCE: ".",  # CLAUSE_PERIOD
    40 | 0x2000 | _TYPE_SENTENCE: "?",  # CLAUSE_QUESTION
    45 | 0x3000 | _TYPE_SENTENCE: "!",  # CLAUSE_EXCLAMATION
    20 | 0x1000 | 0x00040000: ", ",  # CLAUSE_COMMA
    30 | 0x0000 | 0x00040000: ": ",  # CLAUSE_COLON
    30 | 0x1000 | 0x00040000: "; ",  # CLAUSE_SEMICOLON
}

# What a clause-ending character means to Piper: (mark appended, ends the sentence). Taken from
# espeak-ng's punctuation table (readclause.c) and checked against the fork's terminator values
# (tests/test_phonemizer_parity.py). A mark espeak-ng flags further (the ellipsis, CJK and
# full-width marks that need no space after them) matches none of Piper's six, so Piper adds no
# mark for it; whether it ends a sentence is still espeak-ng's clause type.
_CLAUSE_MARKS: dict[str, tuple[str, bool]] = {
    ",": (", ", False),
    ".": (".", True),
    "?": ("?", True),
    "!": ("!", True),
    ":": (": ", False),
    ";": ("; ", False),
    "\u2013": ("; ", False),  # en dash
    "\u2014": ("; ", False),  # em dash
    "\u2026": ("", False),  # ellipsis (and "..." or more dots)
    "\u037e": ("?", True),  # Greek question mark
    "\u0387": ("; ", False),  # Greek ano teleia
    "\u0964": ("", True),  # Devanagari danda
    "\u0589": ("", True),  # Armenian full stop
    "\u055d": (", ", False),  # Armenian comma
    "\u060c": (", ", False),  # Arabic comma
    "\u061b": ("; ", False),  # Arabic semicolon
    "\u061f": ("?", True),  # Arabic question mark
    "\u06d4": (".", True),  # Arabic full stop
    "\u00a1": ("", False),  # inverted exclamation (Spanish)
    "\u00bf": ("", False),  # inverted question (Spanish)
    "\u3001": ("", False),  # ideographic comma
    "\u3002": ("", True),  # ideographic full stop
    "\uff01": ("", True),  # full-width exclamation
    "\uff0c": ("", False),  # full-width comma
    "\uff0e": ("", True),  # full-width full stop
    "\uff1a": ("", False),  # full-width colon
    "\uff1b": ("", False),  # full-width semicolon
    "\uff1f": ("", True),  # full-width question mark
}
# espeak-ng's IsRomanU: the letters after which an ordinal-dot language reads "." as an ordinal.
_ROMAN = frozenset("IVXL")
_ROMAN_OR_SPACE = frozenset("IVXL \t\n\r")
# Closing marks espeak-ng reads past after a clause's punctuation ("Stop!" she said).
_CLOSERS = frozenset(")]}>\"'\u201d\u2019\u00bb\u203a")

# piper-phonemize's only built-in phoneme map (phonemize.cpp): Brazilian Portuguese 'c' -> 'k'.
_DEFAULT_PHONEME_MAPS = {"pt-br": {"c": ["k"]}}

SONAMES = ("libespeak-ng.so.1", "libespeak-ng.so")


class EspeakUnavailable(RuntimeError):
    """libespeak-ng (or its data) cannot be loaded; the message says what to install."""


# espeak-ng keeps its data path in a 160-byte buffer: a longer one is cut short and espeak exits
# the whole process at the first phoneme ("Error processing file .../phontab"). Deep installs
# reach it: the single file unpacks under ~/.cache/hoosh-edge/hoosh-edge.pyz_<sha256>/.
ESPEAK_PATH_MAX = 159


def short_data_path(data: Path) -> Path:
    """``data``, or a short alias of it in a private folder when its path is too long for espeak."""
    if len(os.fsencode(data)) <= ESPEAK_PATH_MAX:
        return data
    import tempfile

    # A private directory (mode 0700, random name) holds the alias: nobody else can swap it.
    alias = Path(tempfile.mkdtemp(prefix="hoosh-espeak-")) / "espeak-ng-data"
    alias.symlink_to(data, target_is_directory=True)
    if len(os.fsencode(alias)) > ESPEAK_PATH_MAX:
        raise EspeakUnavailable(f"espeak-ng cannot use {data}: its path is over "
                                f"{ESPEAK_PATH_MAX} bytes (move the espeak-ng data to a shorter path)")  # fmt: skip
    return alias


class EspeakDataRefused(EspeakUnavailable):
    """libespeak-ng read other data than the folder it was given (a path too long for it)."""


def find_library() -> str | None:
    """The system libespeak-ng, by its soname or through ``ctypes.util.find_library``."""
    for name in SONAMES:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    return ctypes.util.find_library("espeak-ng")


@dataclass(frozen=True)
class Clause:
    """One clause as espeak-ng gave it: its IPA, Piper's mark for it, and if a sentence ends."""

    ipa: str
    mark: str
    ends_sentence: bool


class EspeakNG:
    """A loaded, initialised libespeak-ng; every call must be made under ``ESPEAK_LOCK``."""

    def __init__(self, library: str | None = None, data_dir: str | None = None) -> None:
        path = library or os.environ.get("HOOSH_ESPEAK_LIBRARY") or find_library()
        if not path:
            raise EspeakUnavailable(
                "libespeak-ng is not installed (sudo apt-get install libespeak-ng1 espeak-ng-data)"
            )
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise EspeakUnavailable(f"cannot load {path}: {e}") from e
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]  # fmt: skip
        self._with_terminator = getattr(lib, "espeak_TextToPhonemesWithTerminator", None)
        if self._with_terminator is not None:
            self._with_terminator.restype = ctypes.c_char_p
            self._with_terminator.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                              ctypes.c_int, ctypes.POINTER(ctypes.c_int)]  # fmt: skip
        encoded = data_dir.encode() if data_dir else None
        self._lib, self._init_path = lib, encoded
        if not self._initialise():
            if data_dir:
                raise EspeakUnavailable(f"libespeak-ng found no espeak-ng data in {data_dir}")
            raise EspeakUnavailable(
                "libespeak-ng found no data in its default place "
                "(sudo apt-get install espeak-ng-data)"
            )
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        found = ctypes.c_char_p()
        self.version = (lib.espeak_Info(ctypes.byref(found)) or b"?").decode("ascii", "replace")
        self._voice = ""
        self._ordinal_dot: dict[str, bool] = {}
        self.library = path
        # Where espeak-ng really reads its data (its default, ESPEAK_DATA_PATH, or ``data_dir``).
        self.data_dir = (found.value or encoded or b"").decode("utf-8", "replace")
        if data_dir and not _same_folder(self.data_dir, data_dir):
            # espeak-ng keeps the path in a fixed buffer (160 bytes in 1.51) and, given a longer
            # one, silently reads its default data instead: the very thing ``data_dir`` avoids.
            _DATA_IN_USE[lib._handle] = b"\0"
            raise EspeakDataRefused(
                f"libespeak-ng did not take the data folder {data_dir} "
                f"({len(encoded or b'')} bytes long) and read {self.data_dir} instead"
            )

    @property
    def has_terminator_call(self) -> bool:
        """Whether this library is the fork with ``espeak_TextToPhonemesWithTerminator``."""
        return self._with_terminator is not None

    def _initialise(self) -> bool:
        """(Re-)initialise the library on this object's data folder; False if it found none."""
        rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self._init_path, _INITIALIZE_DONT_EXIT
        )
        _DATA_IN_USE[self._lib._handle] = self._init_path if rate > 0 else b"\0"
        return rate > 0

    def set_voice(self, voice: str) -> None:
        """Select an espeak voice (``en-us``, ``de``, ...); ValueError if espeak-ng has none."""
        if _DATA_IN_USE.get(self._lib._handle) != self._init_path:
            self._initialise()  # another EspeakNG on this library read other data since
        if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self._voice = voice

    def clauses(self, text: str, *, use_terminator_call: bool = True) -> list[Clause]:
        """Text -> espeak-ng's clauses in the current voice, each with Piper's mark."""
        raw = text.encode("utf-8")
        buf = ctypes.create_string_buffer(raw)  # espeak-ng reads it in place; keep it alive
        base = ctypes.addressof(buf)
        ptr = ctypes.c_void_p(base)
        out: list[Clause] = []
        fork = self._with_terminator if use_terminator_call else None
        ordinal_dot = fork is None and self.ordinal_dot()
        carried = ""
        while ptr.value is not None:
            start = ptr.value - base
            if fork is not None:
                term = ctypes.c_int(0)
                ipa = fork(ctypes.byref(ptr), _CHARS_AUTO, _PHONEMES_IPA, ctypes.byref(term))
                value = term.value & _PUNCT_MASK
                mark, ends = _PIPER_MARKS.get(value, ""), bool(value & _TYPE_SENTENCE)
            else:
                ipa = self._lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_AUTO, _PHONEMES_IPA)
                end = len(raw) if ptr.value is None else ptr.value - base
                seg = raw[start:end].decode("utf-8", "replace")
                last = ptr.value is None
                mark, ends = clause_mark(seg, last=last, ordinal_dot=ordinal_dot, carried=carried)
                # The character read past this clause is the first of the next one.
                carried = seg[-1:] if not last and not seg[-1:].isspace() else ""
            out.append(Clause((ipa or b"").decode("utf-8", "replace"), mark, ends))
            if ipa is None or (ptr.value is not None and ptr.value - base <= start):
                break  # espeak-ng could not decode the text, or read none of it: never spin
        return out

    def ordinal_dot(self) -> bool:
        """Whether the current voice reads "V." as an ordinal, not a full stop (de, da, fi, ...).

        espeak-ng's NUM_ORDINAL_DOT languages never end a clause at a dot after a Roman numeral
        (I, V, X, L); the dot is then no mark for Piper. Seen from outside: "X V. Y" stays one
        clause. Asked once per voice.
        """
        if self._voice not in self._ordinal_dot:
            self._ordinal_dot[self._voice] = self._probe_ordinal_dot()
        return self._ordinal_dot[self._voice]

    def _probe_ordinal_dot(self) -> bool:
        raw = ctypes.create_string_buffer(b"X V. Y")
        ptr = ctypes.c_void_p(ctypes.addressof(raw))
        clauses = 0
        while ptr.value is not None and clauses < 3:
            self._lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_AUTO, _PHONEMES_IPA)
            clauses += 1
        self._drain()
        return clauses == 1

    def _drain(self) -> None:
        """Let espeak-ng take the character it read past the last text, so it opens no other."""
        empty = ctypes.create_string_buffer(b"")
        ptr = ctypes.c_void_p(ctypes.addressof(empty))
        while ptr.value is not None:
            self._lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_AUTO, _PHONEMES_IPA)

    def phonemize(self, text: str, voice: str, **kw: bool) -> list[list[str]]:
        """What ``piper_phonemize.phonemize_espeak`` returns: one phoneme list per sentence."""
        self.set_voice(voice)  # every call, as piper-phonemize does
        mapping = _DEFAULT_PHONEME_MAPS.get(voice, {})
        sentences: list[list[str]] = []
        current: list[str] | None = None
        for clause in self.clauses(text, **kw):
            if current is None:
                current = []
                sentences.append(current)
            mapped = [m for ch in unicodedata.normalize("NFD", clause.ipa)
                      for m in mapping.get(ch, [ch])]  # fmt: skip
            current.extend(_drop_language_flags(mapped))
            current.extend(clause.mark)
            if clause.ends_sentence:
                current = None
        return sentences


def _same_folder(found: str, asked: str) -> bool:
    """Whether espeak-ng's data folder is ``asked`` (or the espeak-ng-data folder inside it)."""
    real = os.path.realpath(found)
    return real in (
        os.path.realpath(asked),
        os.path.realpath(os.path.join(asked, "espeak-ng-data")),
    )


def clause_mark(
    consumed: str, *, last: bool, ordinal_dot: bool = False, carried: str = ""
) -> tuple[str, bool]:
    """Piper's mark for a clause, and whether it ends a sentence, from the text espeak-ng read.

    ``consumed`` is what espeak-ng read for this clause; ``carried`` the character it had read
    past the clause before, which opens this one. espeak-ng reads one character past a clause's punctuation and the blank after it
    (the start of the next clause, which it keeps for the next call) or past a closing quote or
    bracket, so that character is dropped before the punctuation is looked at.
    """
    s = consumed.rstrip("\x00")
    if not last and s and not s[-1].isspace():
        s = s[:-1]
    newlines = s[len(s.rstrip()) :].count("\n")
    s = s.rstrip()
    closed = bool(s) and s[-1] in _CLOSERS
    while s and s[-1] in _CLOSERS:
        s = s[:-1]
    stripped = s
    while s and s[-1] in _CLAUSE_MARKS:
        s = s[:-1]
    run = stripped[len(s) :]
    ends_clause = bool(run)
    if ordinal_dot and run[:1] == "." and run[:3] != "..." and _after_roman_numeral(carried + s):
        # "Ludwig XIV." in German, Danish, Finnish ...: an ordinal, no full stop, unless a
        # line break follows it at once.
        ends_clause = newlines == 1 and not closed
    if newlines >= 2 and not (closed and ends_clause):
        return "", True  # a paragraph's end: a sentence ends, and Piper marks it not at all
    if not ends_clause:
        return "", last  # the end of the text, or a clause espeak-ng cut for length
    if run.startswith("..."):
        return _CLAUSE_MARKS["\u2026"]
    return _CLAUSE_MARKS[run[0]]


def _after_roman_numeral(clause: str) -> bool:
    """espeak-ng's test before an ordinal dot: a Roman letter after another or after a blank.

    The clause starts after a blank, and espeak-ng reads three dots or more as an ellipsis and a
    blank.
    """
    text = re.sub(r"\.{3,}", "\u2026 ", clause)
    return text[-1:] in _ROMAN and (text[-2:-1] or " ") in _ROMAN_OR_SPACE


def _drop_language_flags(phonemes: list[str]) -> list[str]:
    """Remove espeak-ng's ``(en)`` language-switch flags, as piper-phonemize does."""
    out: list[str] = []
    inside = False
    for p in phonemes:
        if inside:
            inside = p != ")"
        elif p == "(":
            inside = True
        else:
            out.append(p)
    return out
