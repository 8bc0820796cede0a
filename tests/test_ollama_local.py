"""Ollama's API in front of the box's own model (SmolLM2 on llama.cpp), and /api/pull and
/api/delete through the model store against a local file server."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import ollama
import pytest
import requests

from tests.conftest import require
from tests.test_modelstore import FileServer, RangeHandler
from tests.test_ollama_cloud import HA_BODY, WEBUI_BODY, lines

SMOLLM2 = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def local_toml(n_ctx: int = 2048) -> str:
    return f"""
[local.llm]
n_threads = 1
n_ctx = {n_ctx}
[local.llm.models]
smollm2 = "{SMOLLM2}"
"""


@pytest.fixture
def gw(gateway_factory):
    require(SMOLLM2.exists(), "SmolLM2 is not pulled (hoosh-edge models pull smollm2)")
    return gateway_factory(local_toml())


def ps(client: ollama.Client) -> dict[str, ollama.ProcessResponse.Model]:
    return {m.model: m for m in client.ps().models}


def test_tags_and_show_describe_the_gguf_file(gw):
    client = ollama.Client(host=gw.url)
    (entry,) = client.list().models
    assert entry.model == "smollm2:latest" and entry.digest == SMOLLM2_SHA
    assert entry.size == SMOLLM2.stat().st_size
    d = entry.details
    assert (d.format, d.family, d.parameter_size, d.quantization_level) == (
        "gguf", "llama", "135M", "Q4_1")  # fmt: skip
    for name in ("smollm2", "smollm2:latest"):
        shown = client.show(name)
        assert shown.modelinfo["llama.context_length"] == 2048  # what this box serves it with
        assert shown.modelinfo["general.architecture"] == "llama"
        assert shown.capabilities == ["completion", "tools"]
        assert "<|im_start|>" in shown.template


def test_chat_and_generate_with_options_timed_in_nanoseconds(gw):
    client = ollama.Client(host=gw.url)
    msgs = [{"role": "user", "content": "Count to twenty."}]
    cold = client.chat(model="smollm2:latest", messages=msgs,
                       options={"num_predict": 6, "temperature": 0, "seed": 3, "top_k": 10})  # fmt: skip
    assert cold.done_reason == "length" and cold.eval_count == 6 and cold.prompt_eval_count > 5
    assert cold.load_duration > 1_000_000  # the first call loaded the model: measured, > 1 ms
    parts = cold.load_duration + cold.prompt_eval_duration + cold.eval_duration
    assert 0 < parts <= cold.total_duration < 120 * 10**9
    warm = client.chat(model="smollm2", messages=msgs,
                       options={"num_predict": 6, "temperature": 0, "seed": 3})  # fmt: skip
    assert warm.load_duration == 0 and warm.message.content == cold.message.content
    stream = list(client.chat(model="smollm2", messages=msgs, stream=True,
                              options={"num_predict": 5, "temperature": 0}))  # fmt: skip
    assert [p.done for p in stream].count(True) == 1 and stream[-1].eval_count == 5
    assert "".join(p.message.content for p in stream).strip()
    gen = list(client.generate(model="smollm2", prompt="The sky is", stream=True,
                               options={"num_predict": 4, "stop": ["\n"]}))  # fmt: skip
    assert gen[-1].done and gen[-1].eval_count <= 4 and all(not p.done for p in gen[:-1])
    out = client.generate(model="smollm2", prompt="A JSON object about a cat:", format="json",
                          options={"num_predict": 40, "temperature": 0})  # fmt: skip
    if out.done_reason == "stop":
        json.loads(out.response)  # the grammar held: whole JSON
    assert out.response.lstrip().startswith(("{", "["))


def test_keep_alive_loads_keeps_and_unloads(gw):
    client = ollama.Client(host=gw.url)
    assert ps(client) == {}
    loaded = client.generate(model="smollm2")  # no prompt: load only
    assert loaded.done_reason == "load" and loaded.load_duration > 0
    assert "smollm2:latest" in ps(client)
    client.chat(model="smollm2", keep_alive="90s", options={"num_predict": 1},
                messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    left = ps(client)["smollm2:latest"].expires_at - datetime.now(timezone.utc)
    assert timedelta(seconds=80) < left <= timedelta(seconds=91)
    client.chat(model="smollm2", keep_alive=-1, messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 1})  # fmt: skip
    assert ps(client)["smollm2:latest"].expires_at.year == 9999
    gone = client.generate(model="smollm2", keep_alive=0)
    assert gone.done_reason == "unload" and ps(client) == {}
    # keep_alive 0 on a real answer: it is served, then the model leaves memory.
    r = client.chat(model="smollm2", keep_alive=0, options={"num_predict": 2},
                    messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert r.eval_count == 2
    deadline = time.monotonic() + 5
    while ps(client) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ps(client) == {} and "unloaded llm model smollm2" in gw.log


def test_home_assistant_and_open_webui_bodies_on_the_local_model(gw):
    ha = {**HA_BODY, "model": "smollm2:latest", "options": {"num_ctx": 8192, "num_predict": 8}}
    got = lines(requests.post(gw.url + "/api/chat", json=ha, stream=True, timeout=60))
    assert got[-1]["done"] is True and got[-1]["eval_count"] >= 1
    assert all(x["model"] == "smollm2:latest" for x in got)
    webui = {**WEBUI_BODY, "model": "smollm2"}
    r = requests.post(gw.url + "/api/chat", json=webui, stream=True, timeout=60)
    assert r.headers["X-Hoosh-Provider"] == "local"
    got = lines(r)
    assert got[-1]["done"] and got[-1]["eval_count"] <= 64
    deadline = time.monotonic() + 5  # the log comes through a pipe a thread reads: wait for it
    while gw.log.count('"path":"/api/chat"') < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    access = [json.loads(x) for x in gw.log.splitlines() if '"path":"/api/chat"' in x]
    assert [a["provider"] for a in access] == ["local", "local"]


# ---- pull and delete ----------------------------------------------------------------------------

BLOB = os.urandom(3 << 20)  # three progress steps of a MiB


@pytest.fixture
def files():
    srv = FileServer()
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def store_gateway(gateway_factory, files, tmp_path, data: bytes, extra: str = ""):
    models = tmp_path / "store"
    models.mkdir()
    files.files["/blob.bin"] = BLOB
    (models / "manifest.toml").write_text(f"""
schema = 1
[[model]]
id = "blob"
kind = "llm"
[[model.files]]
name = "blob.gguf"
size = {len(data)}
sha256 = "{hashlib.sha256(data).hexdigest()}"
[[model.sources]]
type = "url"
url = "{files.url("/blob.bin")}"
""")
    return gateway_factory(f'[server]\nmodels_dir = "{models}"\n{extra}'), models


def test_pull_reports_ollamas_progress_and_delete_removes(gateway_factory, files, tmp_path):
    gw, models = store_gateway(gateway_factory, files, tmp_path, BLOB)
    client = ollama.Client(host=gw.url)
    steps = list(client.pull("blob:latest", stream=True))
    assert steps[0].status == "pulling manifest" and steps[-1].status == "success"
    digest = "sha256:" + hashlib.sha256(BLOB).hexdigest()
    progress = [s for s in steps if s.digest]
    assert progress and all(s.digest == digest and s.total == len(BLOB) for s in progress)
    done = [s.completed for s in progress]
    assert done == sorted(done) and done[-1] == len(BLOB) and len(set(done)) >= 3
    assert (models / "blob.gguf").read_bytes() == BLOB
    again = client.pull("blob")  # installed already: quick success
    assert again.status == "success" and len(files.seen) == 1
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("no-such-model")
    assert e.value.status_code == 404
    assert client.delete("blob").status == "success"
    assert not (models / "blob.gguf").exists()
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("blob")
    assert e.value.status_code == 404


def test_a_pull_with_the_wrong_bytes_fails_and_installs_nothing(gateway_factory, files, tmp_path):
    gw, models = store_gateway(gateway_factory, files, tmp_path, b"other bytes" * 10)
    steps = lines(requests.post(gw.url + "/api/pull", json={"model": "blob"}, stream=True,
                                timeout=30))  # fmt: skip
    assert "error" in steps[-1] and not any(s.get("status") == "success" for s in steps)
    assert not (models / "blob.gguf").exists()
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=gw.url).pull("blob")  # not streamed: one error status
    assert e.value.status_code == 502


def test_pull_with_keys_needs_the_admin_key(gateway_factory, files, tmp_path):
    gw, models = store_gateway(gateway_factory, files, tmp_path, BLOB,
                               extra='api_keys = ["sk-client-0123456789"]\n'
                                     'admin_key = "sk-admin-0123456789"\n')  # fmt: skip
    client = ollama.Client(host=gw.url, headers={"Authorization": "Bearer sk-client-0123456789"})
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("blob")
    assert e.value.status_code == 403 and files.seen == []
    admin = ollama.Client(host=gw.url, headers={"Authorization": "Bearer sk-admin-0123456789"})
    assert admin.pull("blob").status == "success"
    assert (models / "blob.gguf").read_bytes() == BLOB


class SlowHandler(RangeHandler):
    """Serves a file in 64 KiB pieces, 20 ms apart: a pull that takes about a second."""

    def do_GET(self) -> None:
        srv: FileServer = self.server  # type: ignore[assignment]
        srv.seen.append((self.path, dict(self.headers)))
        data = srv.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for at in range(0, len(data), 64 << 10):
            self.wfile.write(data[at : at + (64 << 10)])
            self.wfile.flush()
            time.sleep(0.02)


def test_one_pull_per_model_at_a_time_and_the_gateway_keeps_answering(gateway_factory, tmp_path):
    srv = FileServer()
    srv.RequestHandlerClass = SlowHandler
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        gw, models = store_gateway(gateway_factory, srv, tmp_path, BLOB)
        r = requests.post(gw.url + "/api/pull", json={"model": "blob"}, stream=True, timeout=30)
        it = r.iter_lines()
        assert json.loads(next(it)) == {"status": "pulling manifest"}
        json.loads(next(it))  # the first progress line: the download is under way
        second = requests.post(gw.url + "/api/pull", json={"model": "blob"}, timeout=10)
        assert second.status_code == 409 and "being pulled" in second.json()["error"]
        started = time.monotonic()
        assert requests.get(gw.url + "/api/version", timeout=5).ok
        assert time.monotonic() - started < 0.5  # other requests are served meanwhile
        rest = [json.loads(x) for x in it if x]
        assert rest[-1] == {"status": "success"}
        assert (models / "blob.gguf").read_bytes() == BLOB
    finally:
        srv.shutdown()
        srv.server_close()
