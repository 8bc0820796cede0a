"""The single file: dist/hoosh-edge.pyz copied alone into an empty folder, run by a bare Python.

The file is built once for the module (scripts/build-pyz, about half a minute from the cached
llama.cpp wheel and pip's cache), or taken from $HOOSH_EDGE_PYZ when .ci/run built it already.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, GatewayProcess, openai_provider_toml, require, require_module
from tests.fake_openai import FakeOpenAI

MODELS = ROOT / "models"
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
WHISPER = MODELS / "ggml-tiny.en.bin"
JOE = MODELS / "en_US-joe-medium.onnx"
INSTALL = ROOT / "scripts" / "install.sh"


def bare_env(cache: Path) -> dict[str, str]:
    """An environment that names no packages: no PYTHONPATH, no venv, no cloud keys."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "HOOSH_EDGE_CONFIG", "SHIV_ROOT")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.endswith("_API_KEY")}
    env["HOOSH_EDGE_CACHE"] = str(cache)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # for source trees; the file's cache gets .pyc anyway
    return env


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built file: $HOOSH_EDGE_PYZ (built by .ci/run) or a fresh build of this checkout."""
    given = os.environ.get("HOOSH_EDGE_PYZ")
    if given:
        assert Path(given).is_file(), f"HOOSH_EDGE_PYZ={given} is not a file"
        return Path(given).resolve()
    require_module("shiv", "shiv builds the single file (scripts/setup --dev)")
    out = tmp_path_factory.mktemp("dist") / "hoosh-edge.pyz"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build-pyz"), "-o", str(out)],
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv without pip or site packages, on this Python: nothing of ours is in it."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import flask"], capture_output=True, timeout=60)
    assert probe.returncode != 0, "the bare venv can import flask: it is not bare"
    return python


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache") / "hoosh-edge"


@pytest.fixture(scope="module")
def box(pyz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder holding a copy of the file and nothing else; models stay outside."""
    d = tmp_path_factory.mktemp("box")
    shutil.copy(pyz, d / "hoosh-edge.pyz")
    assert sorted(p.name for p in d.iterdir()) == ["hoosh-edge.pyz"]
    return d


def builds(cache: Path) -> list[Path]:
    """The unpacked builds in the cache folder (one per file and build)."""
    return sorted(p for p in cache.glob("hoosh-edge.pyz_*") if not p.name.endswith(".tmp"))


class PyzGateway(GatewayProcess):
    """``python hoosh-edge.pyz serve`` by the bare Python, from ``workdir`` (config and data)."""

    def __init__(self, python: Path, pyz: Path, workdir: Path, config_text: str,
                 cache: Path) -> None:  # fmt: skip
        workdir.mkdir(exist_ok=True)
        super().__init__(config_text, workdir)
        self.env = bare_env(cache)
        self.python = python
        self.pyz = pyz

    def command(self) -> list[str]:
        return [str(self.python), str(self.pyz), "serve", "--config", str(self.config_path),
                "--port", "0"]  # fmt: skip

    def mapped(self) -> set[str]:
        """The files the gateway process has mapped (its native libraries)."""
        assert self.proc is not None
        text = Path(f"/proc/{self.proc.pid}/maps").read_text()
        return {line.split()[-1] for line in text.splitlines() if line.split()[-1].startswith("/")}


def config_text(fake: FakeOpenAI, box: Path, data: str = "data") -> str:
    models = box / "models"  # what `models pull` would fill; links to the checkout's files here
    models.mkdir(exist_ok=True)
    for f in (SMOLLM2, WHISPER, JOE, JOE.with_name(JOE.name + ".json")):
        if f.exists() and not (models / f.name).exists():
            (models / f.name).symlink_to(f)
    return f"""
[server]
data_dir = "{box / data}"
models_dir = "{models}"

[local.llm]
n_threads = 1
n_ctx = 2048
""" + openai_provider_toml(fake, models='["gpt-*"]')


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        yield f


@pytest.fixture(scope="module")
def gw(bare: Path, box: Path, cache: Path, fake: FakeOpenAI) -> Iterator[PyzGateway]:
    """The first start: the cache folder is empty, so this one unpacks the file."""
    require(SMOLLM2.exists(), "SmolLM2 is not pulled (hoosh-edge models pull smollm2)")
    assert builds(cache) == []
    g = PyzGateway(bare, box / "hoosh-edge.pyz", box, config_text(fake, box), cache)
    with g:
        yield g


def test_built_for_names_python_and_platform_without_unpacking(pyz: Path, bare: Path,
                                                               tmp_path: Path) -> None:  # fmt: skip
    fresh = tmp_path / "cache"
    for args in (["--built-for"], ["--help"]):
        out = subprocess.run([str(bare), "-I", str(pyz), *args], capture_output=True, text=True,
                             env=bare_env(fresh), cwd=tmp_path, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr
        py = f"{sys.version_info[0]}.{sys.version_info[1]}"
        assert f"CPython {py}" in out.stdout and platform.machine() in out.stdout, out.stdout
        if args == ["--built-for"]:
            assert not fresh.exists()  # answered before anything was unpacked
        else:
            assert re.findall(r"^\s{4}(\w+)", out.stdout, re.M)[:2] == ["serve", "models"]
            assert str(fresh) in out.stdout  # where its packages went


def runs(python: str, version: str) -> bool:
    """Whether ``python`` starts and is ``version`` (a pyenv shim may be neither)."""
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return out.returncode == 0 and out.stdout.strip() == version


def test_another_python_is_refused_before_unpacking(pyz: Path, tmp_path: Path) -> None:
    import zipfile

    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    # A copy of the file that says it was built for a Python that does not exist, run by this one.
    other = tmp_path / "for-another-python.pyz"
    with zipfile.ZipFile(pyz) as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "__main__.py":
                text = data.decode()
                assert f"'{mine}'" in text and f"CPython {mine}" in text
                data = text.replace(f"'{mine}'", "'3.99'").replace(f"CPython {mine}",
                                                                   "CPython 3.99").encode()  # fmt: skip
            dst.writestr(item, data)
    runs_here = [(sys.executable, other, "3.99")]
    # On PATH, or installed beside this one (pyenv, /opt/python/3.x): the real file, another Python.
    near = sorted(Path(sys.base_prefix).parent.glob("*/bin/python3.*"))
    runs_here += [(str(p), pyz, mine) for v in ("3.10", "3.12", "3.13", "3.9") if v != mine
                  for p in [shutil.which(f"python{v}"), *(n for n in near if n.name == f"python{v}")]
                  if p and runs(str(p), v)][:1]  # fmt: skip
    for python, file, built_for in runs_here:
        out = subprocess.run([python, str(file), "--help"], capture_output=True, text=True,
                             env=bare_env(tmp_path / "cache"), timeout=120)  # fmt: skip
        assert out.returncode == 2, out.stderr
        assert f"this file is for CPython {built_for}" in out.stderr
        assert "scripts/build-pyz" in out.stderr
        assert not (tmp_path / "cache").exists()  # refused before anything was unpacked


def test_serves_health_a_cloud_chat_and_a_local_chat(gw: PyzGateway, cache: Path,
                                                     fake: FakeOpenAI) -> None:  # fmt: skip
    health = requests.get(gw.url + "/health", timeout=5)
    assert health.status_code == 200, health.text

    cloud = requests.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "from the file"}]})  # fmt: skip
    assert cloud.status_code == 200, cloud.text
    assert cloud.headers["X-Hoosh-Provider"] == "fake"
    assert cloud.json()["choices"][0]["message"]["content"] == "Echo: from the file"
    assert fake.chat_requests[-1]["json"]["messages"][-1]["content"] == "from the file"

    local = requests.post(gw.url + "/v1/chat/completions", timeout=120, json={
        "model": "smollm2", "temperature": 0, "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say hello."}]})  # fmt: skip
    assert local.status_code == 200, local.text
    assert local.headers["X-Hoosh-Provider"] == "local"
    body = local.json()
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0

    # llama.cpp and its OpenMP runtime were loaded from the unpacked file, not from a venv.
    (build,) = builds(cache)
    libs = gw.mapped()
    for name in ("libllama.so", "libgomp.so.1"):
        where = [p for p in libs if Path(p).name.startswith(name)]
        assert where and all(p.startswith(str(build)) for p in where), (name, where)


def test_speech_both_ways_from_the_file(gw: PyzGateway) -> None:
    """Piper (onnxruntime, piper-phonemize) speaks, whisper.cpp hears: their native libraries too."""
    require(JOE.exists() and WHISPER.exists(), "joe and whisper-tiny.en are not pulled")
    try:
        speech = requests.post(gw.url + "/v1/audio/speech", timeout=120, json={
            "model": "tts-1", "voice": "joe", "input": "Dinner is ready.",
            "response_format": "wav"})  # fmt: skip
    except requests.ConnectionError:
        time.sleep(1)
        pytest.fail(f"the gateway died: {gw.proc and gw.proc.poll()}\n{gw.log[-4000:]}")
    assert speech.status_code == 200, speech.text
    assert speech.content[:4] == b"RIFF" and len(speech.content) > 10_000
    heard = requests.post(gw.url + "/v1/audio/transcriptions", timeout=120,
                          data={"model": "whisper-1"},
                          files={"file": ("dinner.wav", speech.content, "audio/wav")})  # fmt: skip
    assert heard.status_code == 200, heard.text
    assert "dinner" in heard.json()["text"].lower()


def test_second_start_reuses_what_the_first_unpacked(gw: PyzGateway, bare: Path, box: Path,
                                                     cache: Path, fake: FakeOpenAI) -> None:  # fmt: skip
    (build,) = builds(cache)
    before = build.stat().st_mtime_ns
    # The first start left bytecode for what it imported: later starts do not compile again.
    assert list((build / "site-packages/hoosh_edge/__pycache__").glob("app.*.pyc"))
    second = PyzGateway(
        bare, box / "hoosh-edge.pyz", box / "again", config_text(fake, box, "data2"), cache
    )
    started = time.monotonic()
    with second:
        took = time.monotonic() - started
        assert requests.get(second.url + "/health", timeout=5).status_code == 200
    assert builds(cache) == [build] and build.stat().st_mtime_ns == before
    print(f"second start to healthy: {took:.2f} s")


def cli(bare: Path, box: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -I hoosh-edge.pyz ARGS`` from the box: isolated mode, no site or env paths."""
    return subprocess.run([str(bare), "-I", str(box / "hoosh-edge.pyz"), *args], cwd=box,
                          capture_output=True, text=True, env=bare_env(cache), timeout=300)  # fmt: skip


def test_every_subcommand_runs_from_the_file(gw: PyzGateway, bare: Path, box: Path,
                                             cache: Path) -> None:  # fmt: skip
    listed = cli(bare, box, cache, "--help")
    assert listed.returncode == 0, listed.stderr
    commands = re.findall(r"^\s{4}(\w+)", listed.stdout, re.M)
    assert "doctor" in commands and "serve" in commands
    for command in commands:
        out = cli(bare, box, cache, command, "-h")
        assert out.returncode == 0 and "usage: hoosh-edge " + command in out.stdout, out.stderr

    c = str(gw.config_path)
    made = cli(bare, box, cache, "keys", "create", "laptop", "--config", c)
    key = re.search(r"hk-[A-Za-z0-9_-]{43}", made.stdout)
    assert made.returncode == 0 and key, made.stderr
    keys = cli(bare, box, cache, "keys", "list", "--config", c)
    assert keys.returncode == 0 and "laptop" in keys.stdout, keys.stderr
    models = cli(bare, box, cache, "models", "list", "--config", c)
    assert models.returncode == 0, models.stderr
    assert re.search(r"^smollm2\s+llm\s+installed", models.stdout, re.M), models.stdout
    for args in (("budget", "list"), ("cache", "stats")):
        out = cli(bare, box, cache, *args, "--config", c)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (args, out.stderr)
    doctor = cli(bare, box, cache, "doctor", "--config", c)
    assert "[ok] package llama-cpp-python" in doctor.stdout, doctor.stdout + doctor.stderr
    assert "[ok] package onnxruntime" in doctor.stdout and "Traceback" not in doctor.stderr
    status = cli(bare, box, cache, "status", "--server", gw.url, "--config", c)
    assert status.returncode == 0 and "smollm2" in status.stdout, status.stdout + status.stderr
    # With a key made, the gateway asks every caller for one (the CLI too).
    chat = cli(bare, box, cache, "chat", "--server", gw.url, "--api-key", key[0], "--config", c,
               "-m", "gpt-4o-mini", "from", "the", "CLI")  # fmt: skip
    assert chat.returncode == 0 and "Echo: from the CLI" in chat.stdout, chat.stderr
    require(JOE.exists() and WHISPER.exists(), "joe and whisper-tiny.en are not pulled")
    wav = box / "dinner.wav"
    speak = cli(bare, box, cache, "speak", "--server", gw.url, "--api-key", key[0], "--config", c,
                "--voice", "joe", "-o", str(wav), "Dinner", "is", "ready.")  # fmt: skip
    assert speak.returncode == 0 and wav.read_bytes()[:4] == b"RIFF", speak.stderr
    heard = cli(bare, box, cache, "transcribe", "--server", gw.url, "--api-key", key[0],
                "--config", c, "--format", "text", str(wav))  # fmt: skip
    assert heard.returncode == 0 and "dinner" in heard.stdout.lower(), heard.stderr


@pytest.mark.usefixtures("systemd_analyze_path")
def test_install_sh_installs_the_service_from_the_file(pyz: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if k != "HOOSH_EDGE_CONFIG"}
    env["PYTHON"] = getattr(sys, "_base_executable", sys.executable)
    install = ["bash", str(INSTALL), "--root", str(root), "--pyz", str(pyz), "--no-apt",
               "--no-models"]  # fmt: skip
    proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    opt = root / "opt/hoosh-edge"
    assert not (opt / "venv").exists()
    assert (opt / "hoosh-edge.pyz").read_bytes() == pyz.read_bytes()
    launcher = opt / "bin/hoosh-edge"
    assert os.access(launcher, os.X_OK)
    # Unpacked by the installer with every module compiled: the service only reads it.
    (build,) = builds(opt / "cache")
    assert list((build / "site-packages/llama_cpp/__pycache__").glob("llama.*.pyc"))

    # The launcher the unit starts serves, with the installed config moved to a scratch data dir.
    config = tmp_path / "config.toml"
    text = (root / "etc/hoosh-edge/config.toml").read_text()
    text = text.replace('data_dir = "/var/lib/hoosh-edge"', f'data_dir = "{tmp_path / "data"}"')
    config.write_text(text)
    run_env = bare_env(tmp_path / "unused")
    del run_env["HOOSH_EDGE_CACHE"]  # the launcher names the installed packages itself
    run_env["HOME"] = str(tmp_path / "home")  # so an unpack into ~/.cache would show
    serve = subprocess.Popen([str(launcher), "serve", "--config", str(config), "--port", "0"],
                             cwd="/", env=run_env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert serve.stdout is not None
        first = serve.stdout.readline()
        assert not (tmp_path / "home").exists() and builds(opt / "cache") == [build]
        assert "listening on" in first, first + serve.stderr.read() if serve.stderr else first
        url = first.strip().rsplit(" ", 1)[-1]
        deadline = time.monotonic() + 60
        while True:
            try:
                assert requests.get(url + "/health", timeout=2).status_code == 200
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "never healthy"
                time.sleep(0.1)
    finally:
        serve.terminate()
        serve.wait(30)

    unit = (root / "etc/systemd/system/hoosh-edge.service").read_text()
    exec_start = "/opt/hoosh-edge/bin/hoosh-edge"
    copy = tmp_path / "hoosh-edge.service"
    copy.write_text(unit.replace(exec_start, str(root) + exec_start))
    verify = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert verify.returncode == 0, verify.stderr

    # An upgrade keeps the packages the service now runs and drops an earlier file's.
    old = opt / "cache" / "hoosh-edge.pyz_0123456789abcdef"
    (old / "site-packages").mkdir(parents=True)
    again = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (
        builds(opt / "cache") == [build]
        and f"removing an earlier build's packages: {old}" in again.stdout
    )
