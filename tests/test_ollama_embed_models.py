"""Embedding models in Ollama's model endpoints, through the real gateway and the ollama client:
/api/tags lists the on-device encoders (a sentence-transformers folder, a GGUF file) and the
cloud ones, /api/show says ``embedding`` with the files' own facts, /api/ps shows them loaded."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import openai_provider_toml, require, require_module
from tests.embed_reference import MODEL_DIR
from tests.fake_openai import fake_vector

ollama = require_module("ollama", "the ollama client is not installed")
require(MODEL_DIR.is_dir(), "all-minilm-l6-v2 is not in models/ (scripts/setup --dev pulls it)")
require_module("tokenizers", "the tokenizers package is not installed")

MODEL = "all-minilm-l6-v2"
# The tree's digest as the box's manifest pins it (hoosh_edge/manifest.toml).
MINILM_SHA = "04b1622bdf2efd1182cf06be234900d203a263b6617ef5cc7919ce719d64fee1"


def tree_size(root: Path) -> int:
    return sum((Path(d) / n).stat().st_size for d, _, names in os.walk(root) for n in names)


def safetensors_params(path: Path) -> int:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    total = 0
    for name, t in header.items():
        if name != "__metadata__":
            count = 1
            for d in t["shape"]:
                count *= d
            total += count
    return total


@pytest.fixture
def gw(gateway_factory, fake_openai, tmp_path):
    require_module("llama_cpp", "llama-cpp-python is not installed")
    from tests.synth_gguf import make_tiny_gguf

    tiny = make_tiny_gguf(tmp_path / "tiny-embed.gguf")
    # A folder of links, as a Hugging Face cache holds it, with a link back to itself.
    linked = tmp_path / "linked"
    for d, _, names in os.walk(MODEL_DIR):
        rel = Path(d).relative_to(MODEL_DIR)
        (linked / rel).mkdir(parents=True, exist_ok=True)
        for n in names:
            (linked / rel / n).symlink_to(Path(d) / n)
    (linked / "1_Pooling" / "loop").symlink_to(linked)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny.read_bytes()[:200])  # cut inside its metadata
    toml = f"""
[local.embeddings.models]
{MODEL} = "{MODEL_DIR}"
tiny = "{tiny}"
linked = "{linked}"
broken = "{broken}"
""" + openai_provider_toml(fake_openai, models='["gpt-4o-mini", "text-embedding-3-small"]')
    g = gateway_factory(toml)
    g.tiny = tiny
    return g


def test_tags_list_embedding_models_with_their_files_facts(gw):
    client = ollama.Client(host=gw.url)
    listed = {m.model: m for m in client.list().models}
    assert {f"{MODEL}:latest", "tiny:latest", "text-embedding-3-small:latest",
            "gpt-4o-mini:latest"} <= set(listed)  # fmt: skip
    minilm = listed[f"{MODEL}:latest"]
    assert minilm.digest == MINILM_SHA and minilm.size == tree_size(MODEL_DIR)
    d = minilm.details
    assert (d.format, d.family, d.families, d.parameter_size, d.quantization_level) == (
        "safetensors", "bert", ["bert"], "23M", "F32")  # fmt: skip
    tiny = listed["tiny:latest"]
    assert tiny.digest == hashlib.sha256(gw.tiny.read_bytes()).hexdigest()
    assert tiny.size == gw.tiny.stat().st_size and tiny.details.format == "gguf"
    cloud = listed["text-embedding-3-small:latest"]
    assert cloud.size == 0 and cloud.details.format == ""
    # Links are read as the files they point to: the same tree, the same digest and size.
    assert (listed["linked:latest"].digest, listed["linked:latest"].size) == (
        MINILM_SHA, tree_size(MODEL_DIR))  # fmt: skip
    # A file that cannot be read is still listed, as what it is, without facts (and no 500).
    assert listed["broken:latest"].size == 0 and listed["broken:latest"].details.format == ""
    assert client.show("broken").capabilities == ["embedding"]
    deadline = time.monotonic() + 5  # the log is read from the process's stderr
    while "cannot describe model broken from its files" not in gw.log:
        assert time.monotonic() < deadline, gw.log
        time.sleep(0.05)


def test_show_says_embedding_and_what_the_model_reads(gw):
    from tests.synth_gguf import N_EMBD

    client = ollama.Client(host=gw.url)
    for name in (MODEL, f"{MODEL}:latest"):
        shown = client.show(name)
        assert shown.capabilities == ["embedding"]
        info = shown.modelinfo
        assert info["general.architecture"] == "bert"
        assert info["bert.embedding_length"] == 384
        assert info["bert.context_length"] == 256  # max_seq_length: what the engine reads
        assert info["general.parameter_count"] == safetensors_params(
            MODEL_DIR / "model.safetensors"
        )
        assert shown.details.family == "bert" and shown.template == ""
    shown = client.show("tiny:latest")
    arch = shown.modelinfo["general.architecture"]
    assert shown.capabilities == ["embedding"] and shown.details.format == "gguf"
    assert shown.modelinfo[f"{arch}.embedding_length"] == N_EMBD
    assert shown.modelinfo[f"{arch}.context_length"] == 512  # the n_ctx it is loaded with
    for name in ("text-embedding-3-small", "text-embedding-3-small:latest"):
        assert client.show(name).capabilities == ["embedding"]
    assert client.show("gpt-4o-mini").capabilities == ["completion", "tools"]
    with pytest.raises(ollama.ResponseError) as e:
        client.show("no-such-embedder:latest")
    assert e.value.status_code == 404


def test_ps_shows_an_embedding_model_while_it_is_loaded(gw):
    client = ollama.Client(host=gw.url)
    assert f"{MODEL}:latest" not in {m.model for m in client.ps().models}
    assert len(client.embed(model=f"{MODEL}:latest", input="hello").embeddings[0]) == 384
    (entry,) = [m for m in client.ps().models if m.model == f"{MODEL}:latest"]
    assert entry.digest == MINILM_SHA and entry.context_length == 256 and entry.size > 0
    assert entry.details.family == "bert" and entry.expires_at is not None
    client.embed(model=MODEL, input="bye", keep_alive=0)
    assert f"{MODEL}:latest" not in {m.model for m in client.ps().models}


def test_cloud_embedding_name_with_latest_reaches_the_provider(gw, fake_openai):
    client = ollama.Client(host=gw.url)
    out = client.embed(model="text-embedding-3-small:latest", input="hello")
    assert out.embeddings[0] == pytest.approx(fake_vector("hello"))
    sent = [q["json"] for q in fake_openai.requests if q["path"].endswith("/embeddings")]
    assert sent[-1]["model"] == "text-embedding-3-small"


def test_one_body_reader_for_every_ollama_route(gw):
    """Ollama reads a JSON body whatever its Content-Type; so do /api/show and /api/embed here,
    and both bound it and answer in Ollama's error shape."""
    for path, body in (
        ("/api/show", {"model": MODEL}),
        ("/api/embed", {"model": MODEL, "input": "x"}),
    ):
        r = requests.post(gw.url + path, data=json.dumps(body), timeout=30,
                          headers={"Content-Type": "text/plain"})  # fmt: skip
        assert r.status_code == 200, (path, r.text)
        big = requests.post(gw.url + path, data=b"{" + b" " * (2 << 20) + b"}", timeout=30)
        assert big.status_code == 413 and set(big.json()) == {"error"}
        bad = requests.post(gw.url + path, data=b"[1, 2]", timeout=30)
        assert bad.status_code == 400 and set(bad.json()) == {"error"}
