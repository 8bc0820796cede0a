"""Which espeak-ng data the espeak-ng path reads, through the real gateway and doctor.

Pulled data in models_dir is read without a word of config; ``[local.tts] espeak_data`` points
elsewhere; on the system's own data the voices speak, and /v1/health, /admin/status.json, the
status page and ``hoosh-edge doctor`` say the ids may differ and name the pull that fixes it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from hoosh_edge.backends.engines.phonemizer import PULL_DATA, EspeakData, espeak_data
from hoosh_edge.backends.modelstore.tree import tree_sha256
from hoosh_edge.config import ConfigError, load_config
from tests.conftest import require_module
from tests.synth_piper import make_voice
from tests.test_phonemizer_gateway import doctor, speak
from tests.test_status_page import PageFields, chromium, needs_chromium


def fork_data() -> Path:
    """The espeak-ng data the voices were trained on: the folder in the piper-phonemize wheel."""
    pp = require_module("piper_phonemize", "piper-phonemize is in the local extra (Python 3.11)")
    return Path(pp.__file__).parent / "espeak-ng-data"


def config(voice: str, models: Path, extra: str = "", phonemizer: str = "espeak-ng") -> str:
    return (f'[server]\nmodels_dir = "{models}"\n[local.tts]\nphonemizer = "{phonemizer}"\n'
            f'{extra}[local.tts.voices]\ntiny = "{voice}"\n')  # fmt: skip


def phonemizer_report(gw) -> dict:
    tts = requests.get(gw.url + "/v1/health", timeout=10).json()["tts"]
    assert requests.get(gw.url + "/admin/status.json", timeout=10).json()["tts"] == tts
    return tts["phonemizer"]


def test_the_config_key_is_a_folder_path_for_tts_only(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[local.tts]\nespeak_data = "/opt/espeak-ng-data"\n')
    assert load_config(cfg, env={}).tts.espeak_data == "/opt/espeak-ng-data"
    assert load_config(None, env={}).tts.espeak_data is None
    for bad in ("1", '""', "[]"):
        cfg.write_text(f"[local.tts]\nespeak_data = {bad}\n")
        with pytest.raises(ConfigError, match=r"local\.tts\.espeak_data"):
            load_config(cfg, env={})
    cfg.write_text('[local.llm]\nespeak_data = "/x"\n')
    with pytest.raises(ConfigError, match=r"local\.llm\.espeak_data"):
        load_config(cfg, env={})


def test_which_data_is_read_config_then_espeak_data_path_then_pulled_then_the_systems(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("ESPEAK_DATA_PATH", raising=False)
    models = tmp_path / "models"
    assert espeak_data(None, models) == EspeakData(None, "system")
    (models / "espeak-ng-data").mkdir(parents=True)
    assert espeak_data(None, models) == EspeakData(str(models / "espeak-ng-data"), "models")
    monkeypatch.setenv("ESPEAK_DATA_PATH", str(tmp_path / "env"))  # the library reads it itself
    assert espeak_data(None, models) == EspeakData(None, "ESPEAK_DATA_PATH")
    monkeypatch.chdir(tmp_path)
    assert espeak_data("mine", models) == EspeakData(str(tmp_path / "mine"), "config")


def test_pulled_data_in_models_dir_is_read_and_named_everywhere(gateway_factory, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(fork_data(), models / "espeak-ng-data")  # what `models pull` leaves there
    gw = gateway_factory(config(make_voice(str(tmp_path)), models))
    r = speak(gw)
    assert r.status_code == 200 and r.content.startswith(b"RIFF")
    ph = phonemizer_report(gw)
    assert ph["in_use"] == "espeak-ng" and ph["data_origin"] == "models"
    assert ph["data"] == str(models / "espeak-ng-data") and ph["warning"] is None
    assert f"data {models / 'espeak-ng-data'}, pulled" in ph["detail"]
    out = doctor(gw.config_path)
    line = next(x for x in out.stdout.splitlines() if x.startswith("[ok] phonemizer"))
    assert f"data {models / 'espeak-ng-data'}, pulled" in line, line
    assert "is the system's" not in out.stdout
    assert "[ok] model espeak-ng-data: ok" in out.stdout  # the copy is the pinned tree
    assert not any("may differ" in x for x in gw.stderr_lines)


def test_on_the_systems_data_every_report_says_ids_may_differ(gateway_factory, tmp_path):
    gw = gateway_factory(config(make_voice(str(tmp_path)), tmp_path / "empty-models"))
    assert speak(gw).status_code == 200  # it speaks all the same
    ph = phonemizer_report(gw)
    assert ph["in_use"] == "espeak-ng" and ph["data_origin"] == "system"
    assert ph["data"] and not ph["data"].startswith(str(tmp_path))
    assert "may differ from the voice's training" in ph["warning"]
    assert ph["warning"].endswith(f"To fix: {PULL_DATA}, then restart the gateway")
    assert ph["fix"] is None
    assert any("may differ" in x and PULL_DATA in x for x in gw.stderr_lines)
    lines = doctor(gw.config_path).stdout.splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith("[--] espeak-ng data"))
    assert lines[i - 1].startswith("[ok] phonemizer espeak-ng") and "the system's" in lines[i - 1]
    assert lines[i] == (f"[--] espeak-ng data {ph['data']} is the system's: phoneme ids may "
                        "differ from the voice's training")  # fmt: skip
    assert lines[i + 1] == f"     fix: {PULL_DATA} (read from the gateway's next start)"


def test_espeak_data_points_elsewhere_and_a_missing_folder_is_a_clear_503(
    gateway_factory, tmp_path
):
    elsewhere = tmp_path / "mine" / "espeak-ng-data"
    shutil.copytree(fork_data(), elsewhere)
    assert tree_sha256(elsewhere) == tree_sha256(fork_data())
    voice = make_voice(str(tmp_path))
    gw = gateway_factory(config(voice, tmp_path / "m", f'espeak_data = "{elsewhere}"\n'))
    assert speak(gw).status_code == 200
    ph = phonemizer_report(gw)
    assert (ph["data"], ph["data_origin"], ph["warning"]) == (str(elsewhere), "config", None)
    assert "local.tts.espeak_data" in ph["detail"]
    missing = tmp_path / "nowhere"
    bad = gateway_factory(config(voice, tmp_path / "m", f'espeak_data = "{missing}"\n'))
    ph = phonemizer_report(bad)
    assert ph["in_use"] is None and f"{missing} does not exist" in ph["detail"]
    assert ph["fix"].startswith("set local.tts.espeak_data") and PULL_DATA in ph["fix"]
    for _ in range(2):
        r = speak(bad)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "phonemizer_unavailable"
    assert requests.get(bad.url + "/health", timeout=5).ok
    assert not any("Traceback" in x for x in bad.stderr_lines)
    out = doctor(bad.config_path)
    assert out.returncode == 1 and f"     fix: {ph['fix']}" in out.stdout.splitlines()


def test_a_data_path_too_long_for_libespeak_ng_is_read_through_a_short_alias(
    gateway_factory, tmp_path
):
    """espeak-ng keeps the path in a fixed buffer and, given a longer one, reads its default:
    a deep folder (the single file's cache is one) is handed over by a short private alias."""
    deep = tmp_path.joinpath(*["d" * 50] * 4)  # well past 1.51's 160 bytes
    deep.mkdir(parents=True)
    (deep / "espeak-ng-data").symlink_to(fork_data())
    gw = gateway_factory(config(make_voice(str(tmp_path)), tmp_path / "m",
                                f'espeak_data = "{deep / "espeak-ng-data"}"\n'))  # fmt: skip
    ph = phonemizer_report(gw)
    assert ph["in_use"] == "espeak-ng" and ph["data_origin"] == "config"
    alias = Path(ph["data"])
    assert len(str(alias)) <= 159 and alias.resolve() == fork_data().resolve()
    assert os.stat(alias.parent).st_mode & 0o077 == 0  # private: nobody else can swap it
    r = speak(gw)
    assert r.status_code == 200 and r.content[:4] == b"RIFF"
    assert not any("Traceback" in x for x in gw.stderr_lines)


def test_the_wheel_reads_its_own_data_and_warns_of_nothing(gateway_factory, tmp_path):
    data = fork_data()
    gw = gateway_factory(config(make_voice(str(tmp_path)), tmp_path / "m", "", "piper-phonemize"))
    ph = phonemizer_report(gw)
    assert (ph["in_use"], ph["data"], ph["data_origin"]) == (
        "piper-phonemize", str(data), "piper-phonemize")  # fmt: skip
    assert ph["warning"] is None


@needs_chromium
def test_the_status_page_names_the_data_and_the_fix(gateway_factory, tmp_path):
    voice = make_voice(str(tmp_path))
    system = gateway_factory(config(voice, tmp_path / "none"))
    page = PageFields(chromium(tmp_path, system.url + "/", "--dump-dom"))
    text = page.by_id["tts"]
    assert text.startswith("Speech phonemizer: espeak-ng (libespeak-ng") and "the system's" in text
    assert "may differ from the voice's training" in text and f"To fix: {PULL_DATA}" in text
    models = tmp_path / "models"
    shutil.copytree(fork_data(), models / "espeak-ng-data")
    pulled = gateway_factory(config(voice, models))
    text = PageFields(chromium(tmp_path, pulled.url + "/", "--dump-dom")).by_id["tts"]
    assert f"data {models / 'espeak-ng-data'}, pulled)" in text and "differ" not in text
