"""``[local.tts] phonemizer`` through the real gateway: health, status page, doctor, speech.

With the espeak-ng path forced, speech works and /v1/health, /admin/status.json, the status page
and ``hoosh-edge doctor`` name it; with no phonemizer to be had, voices stay listed and each of
those says what to install, and a speech request is a clear 503, never silence.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import requests

from hoosh_edge.backends.engines.phonemizer import install_hint
from hoosh_edge.config import ConfigError, load_config
from tests.conftest import require, require_module
from tests.synth_piper import make_voice
from tests.test_audio_api import word_error_rate
from tests.test_cli import cli_env
from tests.test_status_page import PageFields, chromium, needs_chromium

ROOT = Path(__file__).resolve().parent.parent
NO_LIBRARY = os.path.join(os.sep, "nonexistent", "libespeak-ng.so.1")
APT_HINT = "sudo apt-get install libespeak-ng1 espeak-ng-data"


def tts_config(voice: str, phonemizer: str) -> str:
    return f'[local.tts]\nphonemizer = "{phonemizer}"\n[local.tts.voices]\ntiny = "{voice}"\n'


def speak(gw, text: str = "Hello there. How are you?") -> requests.Response:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"}
    return requests.post(gw.url + "/v1/audio/speech", json=body, timeout=60)


def doctor(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hoosh_edge", "doctor", "--config", str(config)],
        capture_output=True, text=True, timeout=120, env={**cli_env(), **(env or {})},
        cwd=config.parent,
    )  # fmt: skip


def test_the_config_key_takes_three_values_and_names_itself_otherwise(tmp_path):
    cfg = tmp_path / "c.toml"
    for value in ("auto", "piper-phonemize", "espeak-ng"):
        cfg.write_text(f'[local.tts]\nphonemizer = "{value}"\n')
        assert load_config(cfg, env={}).tts.phonemizer == value
    assert load_config(None, env={}).tts.phonemizer == "auto"
    for bad in ('"espeak"', "1", '""'):
        cfg.write_text(f"[local.tts]\nphonemizer = {bad}\n")
        with pytest.raises(ConfigError, match=r"local\.tts\.phonemizer"):
            load_config(cfg, env={})
    cfg.write_text('[local.stt]\nphonemizer = "espeak-ng"\n')  # a tts key only
    with pytest.raises(ConfigError, match=r"local\.stt\.phonemizer"):
        load_config(cfg, env={})


def test_the_fix_fits_the_python():
    wheel = "pip install piper-phonemize (wheels for Python 3.9-3.11 only)"
    assert install_hint("auto", (3, 11)) == f"{wheel} or {APT_HINT}"
    assert install_hint("auto", (3, 13)) == install_hint("espeak-ng", (3, 11)) == APT_HINT
    assert install_hint("piper-phonemize", (3, 10)) == wheel
    assert install_hint("piper-phonemize", (3, 13)) == (
        f'set phonemizer = "espeak-ng" and {APT_HINT} (piper-phonemize has no wheel for Python 3.13)'
    )


def test_forced_espeak_ng_speaks_and_every_report_names_it(gateway_factory, tmp_path):
    gw = gateway_factory(tts_config(make_voice(str(tmp_path)), "espeak-ng"))
    r = speak(gw)
    assert r.status_code == 200 and r.content.startswith(b"RIFF") and len(r.content) > 1000
    health = requests.get(gw.url + "/v1/health", timeout=10).json()
    tts = health["tts"]
    assert tts["state"] == "ok" and tts["voices"] == ["tiny"]
    assert tts["phonemizer"]["configured"] == "espeak-ng"
    assert tts["phonemizer"]["in_use"] == "espeak-ng" and tts["phonemizer"]["fix"] is None
    assert "libespeak-ng" in tts["phonemizer"]["detail"]
    status = requests.get(gw.url + "/admin/status.json", timeout=10).json()
    assert status["tts"] == tts
    out = doctor(gw.config_path)
    line = next(x for x in out.stdout.splitlines() if "phonemizer" in x)
    assert line.startswith("[ok] phonemizer espeak-ng (local.tts.phonemizer = 'espeak-ng')"), line


def test_auto_prefers_piper_phonemize_where_it_is_installed(gateway_factory, tmp_path):
    has_wheel = importlib.util.find_spec("piper_phonemize") is not None
    if sys.version_info < (3, 12):
        require(has_wheel, "piper-phonemize is in the local extra on Python 3.11")
    gw = gateway_factory(tts_config(make_voice(str(tmp_path)), "auto"))
    assert speak(gw).status_code == 200
    ph = requests.get(gw.url + "/v1/health", timeout=10).json()["tts"]["phonemizer"]
    expected = "piper-phonemize" if has_wheel else "espeak-ng"
    assert ph["configured"] == "auto" and ph["in_use"] == expected


def test_no_phonemizer_is_said_everywhere_and_speech_is_a_clear_503(gateway_factory, tmp_path):
    env = {"HOOSH_ESPEAK_LIBRARY": NO_LIBRARY}
    gw = gateway_factory(tts_config(make_voice(str(tmp_path)), "espeak-ng"), env=env)
    assert "tiny" in [
        m["id"] for m in requests.get(gw.url + "/v1/models", timeout=10).json()["data"]
    ]
    health = requests.get(gw.url + "/v1/health", timeout=10).json()
    assert health["status"] == "degraded"
    tts = health["tts"]
    assert tts["state"] == "unavailable" and tts["phonemizer"]["in_use"] is None
    assert tts["phonemizer"]["fix"] == APT_HINT and NO_LIBRARY in tts["phonemizer"]["detail"]
    for _ in range(2):  # the slot's failed load leaves nothing behind: the same answer again
        r = speak(gw)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "phonemizer_unavailable" and APT_HINT in err["message"]
        assert err["type"] == "server_error"
    assert requests.get(gw.url + "/health", timeout=5).ok
    assert any("cannot speak" in line and APT_HINT in line for line in gw.stderr_lines)
    out = doctor(gw.config_path, env)
    assert out.returncode == 1, out.stdout
    lines = out.stdout.splitlines()
    i = next(i for i, x in enumerate(lines) if "phonemizer" in x)
    assert lines[i].startswith("[!!] phonemizer (local.tts.phonemizer = 'espeak-ng')"), lines[i]
    assert lines[i + 1] == f"     fix: {APT_HINT}"


def without_the_wheel(tmp_path: Path) -> str:
    """A PYTHONPATH on which ``import piper_phonemize`` fails, as on Python 3.12+."""
    shadow = tmp_path / "shadow" / "piper_phonemize"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("no piper-phonemize here")\n')
    return str(shadow.parent)


def test_auto_without_the_wheel_speaks_through_libespeak_ng(gateway_factory, tmp_path):
    """A Python 3.13 box: no piper-phonemize, the system library there."""
    env = {"PYTHONPATH": without_the_wheel(tmp_path)}
    gw = gateway_factory(tts_config(make_voice(str(tmp_path)), "auto"), env=env)
    r = speak(gw)
    assert r.status_code == 200 and r.content.startswith(b"RIFF")
    health = requests.get(gw.url + "/v1/health", timeout=10).json()
    assert health["tts"]["state"] == "ok" and health["tts"]["phonemizer"]["in_use"] == "espeak-ng"


def test_auto_with_neither_installed_names_both_ways(gateway_factory, tmp_path):
    """No wheel importable (a package that refuses to import shadows it) and no library."""
    env = {"HOOSH_ESPEAK_LIBRARY": NO_LIBRARY, "PYTHONPATH": without_the_wheel(tmp_path)}
    gw = gateway_factory(tts_config(make_voice(str(tmp_path)), "auto"), env=env)
    ph = requests.get(gw.url + "/v1/health", timeout=10).json()["tts"]["phonemizer"]
    assert ph["in_use"] is None and "no piper-phonemize here" in ph["detail"]
    wheel = "pip install piper-phonemize (wheels for Python 3.9-3.11 only)"
    assert ph["fix"] == (APT_HINT if sys.version_info >= (3, 12) else f"{wheel} or {APT_HINT}")
    r = speak(gw)
    assert r.status_code == 503 and ph["fix"] in r.json()["error"]["message"]


@pytest.mark.parametrize("phonemizer", ["espeak-ng", "piper-phonemize"])
def test_a_voice_naming_an_unknown_espeak_voice_is_a_clear_503(
    gateway_factory, tmp_path, phonemizer
):
    require_module("piper_phonemize", "piper-phonemize is in the local extra (Python 3.11)")
    voice = make_voice(str(tmp_path))
    cfg = json.loads(Path(voice + ".json").read_text(encoding="utf-8"))
    cfg["espeak"] = {"voice": "xx-nowhere"}
    Path(voice + ".json").write_text(json.dumps(cfg), encoding="utf-8")
    gw = gateway_factory(tts_config(voice, phonemizer))
    for _ in range(2):
        r = speak(gw)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "voice_unavailable" and "'xx-nowhere'" in err["message"]
    assert requests.get(gw.url + "/health", timeout=5).ok


@needs_chromium
def test_the_status_page_shows_the_phonemizer_or_what_to_install(gateway_factory, tmp_path):
    voice = make_voice(str(tmp_path))
    good = gateway_factory(tts_config(voice, "espeak-ng"))
    page = PageFields(chromium(tmp_path, good.url + "/", "--dump-dom"))
    assert "tts" not in page.hidden
    assert page.by_id["tts"].startswith("Speech phonemizer: espeak-ng (libespeak-ng")
    bad = gateway_factory(tts_config(voice, "espeak-ng"), env={"HOOSH_ESPEAK_LIBRARY": NO_LIBRARY})
    page = PageFields(chromium(tmp_path, bad.url + "/", "--dump-dom"))
    assert page.by_id["tts"] == f"Speech cannot be made: no phonemizer. To fix: {APT_HINT}"


@pytest.mark.slow
def test_real_round_trip_through_the_espeak_ng_path(gateway_factory):
    """joe speaks through libespeak-ng, whisper hears it: the same WER bound as test_audio_api."""
    models = ROOT / "models"
    voice, whisper = models / "en_US-joe-medium.onnx", models / "ggml-tiny.en.bin"
    require(
        voice.exists() and whisper.exists(), "run scripts/setup to pull joe and whisper-tiny.en"
    )
    gw = gateway_factory(f"""
[local.stt.models]
"whisper-tiny.en" = "{whisper}"
[local.tts]
phonemizer = "espeak-ng"
[local.tts.voices]
joe = "{voice}"
""")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=120)
    sentence = ("The quick brown fox jumps over the lazy dog. "
                "Please turn on the kitchen lights at seven o'clock.")  # fmt: skip
    wav = client.audio.speech.create(model="tts-1", voice="joe", input=sentence,
                                     response_format="wav").read()  # fmt: skip
    assert wav.startswith(b"RIFF")
    ph = requests.get(gw.url + "/v1/health", timeout=10).json()["tts"]["phonemizer"]
    assert ph["in_use"] == "espeak-ng"
    text = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", wav)).text
    wer = word_error_rate(sentence, text)
    print(f"espeak-ng path round trip: WER {wer:.3f} ({text!r})")
    assert wer < 0.2, (text, wer)
