"""/v1/embeddings, /api/embed and /api/embeddings through the real gateway: the openai SDK,
LangChain's OpenAIEmbeddings and the ollama client get the reference vectors; the cache, the
cloud fallback with its price, and clean errors in each dialect's shape."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import requests

from tests.conftest import openai_provider_toml, require, require_module
from tests.embed_reference import MODEL_DIR, Reference, cosine
from tests.fake_openai import fake_vector

require(MODEL_DIR.is_dir(), "all-minilm-l6-v2 is not in models/ (scripts/setup --dev pulls it)")
tokenizers = require_module("tokenizers", "the tokenizers package is not installed")

MODEL = "all-minilm-l6-v2"
LOCAL = f"""
[local.embeddings.models]
{MODEL} = "{MODEL_DIR}"
"""
TEXTS = ["The weather is lovely today.", "Grüße aus München 東京", "short"]


@pytest.fixture(scope="module")
def expected():
    """Reference vectors of TEXTS (independent float64 pass)."""
    tok = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tok.no_padding()
    ref = Reference()
    return [ref.vector(tok.encode(t).ids) for t in TEXTS]


def post(gw, path, body, **kw):
    return requests.post(gw.url + path, json=body, timeout=60, **kw)


def test_openai_sdk_gets_the_reference_vectors(gateway_factory, expected):
    openai = require_module("openai", "the openai SDK is not installed")
    gw = gateway_factory(LOCAL)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused")
    got = client.embeddings.create(model=MODEL, input=TEXTS)  # the SDK asks for base64
    assert [d.index for d in got.data] == [0, 1, 2]
    for d, want in zip(got.data, expected, strict=True):
        assert len(d.embedding) == 384 and cosine(d.embedding, want) >= 0.999
    assert got.usage.prompt_tokens == got.usage.total_tokens > 3
    one = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert cosine(one.data[0].embedding, expected[0]) >= 0.999


def test_langchain_openai_embeddings(gateway_factory, expected):
    lc = require_module("langchain_openai", "langchain-openai is not installed")
    gw = gateway_factory(LOCAL)
    # check_embedding_ctx_length=False: LangChain otherwise tokenizes with tiktoken's cl100k,
    # whose tables it downloads; the strings go as they are.
    emb = lc.OpenAIEmbeddings(model=MODEL, base_url=gw.url + "/v1", api_key="unused",
                              check_embedding_ctx_length=False)  # fmt: skip
    docs = emb.embed_documents(TEXTS)
    assert [cosine(d, w) >= 0.999 for d, w in zip(docs, expected, strict=True)] == [True] * 3
    assert cosine(emb.embed_query(TEXTS[1]), expected[1]) >= 0.999


def test_ollama_client_embed_and_legacy_embeddings(gateway_factory, expected):
    ollama = require_module("ollama", "the ollama client is not installed")
    gw = gateway_factory(LOCAL)
    client = ollama.Client(host=gw.url)
    out = client.embed(model=MODEL + ":latest", input=TEXTS)
    assert len(out.embeddings) == 3
    for v, want in zip(out.embeddings, expected, strict=True):
        assert cosine(v, want) >= 0.999
    assert out.prompt_eval_count > 3 and out.total_duration > 0 and out.load_duration > 0
    again = client.embed(model=MODEL, input=TEXTS[0])
    assert again.load_duration == 0  # loaded by the first call
    legacy = client.embeddings(model=MODEL, prompt=TEXTS[1])
    assert cosine(legacy.embedding, expected[1]) >= 0.999
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="no-such-model", input="x")
    assert e.value.status_code == 404 and "no-such-model" in e.value.error
    long = "word " * 400
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model=MODEL, input=long, truncate=False)
    assert e.value.status_code == 400 and "256" in e.value.error
    assert client.embed(model=MODEL, input=long).prompt_eval_count == 256


def test_ollama_errors_are_ollamas_shape(gateway_factory):
    gw = gateway_factory(LOCAL)
    for body in ({"input": "x"}, {"model": MODEL}, {"model": MODEL, "input": [1, 2]},
                 {"model": MODEL, "input": []}, {"model": MODEL, "input": "x", "truncate": "no"},
                 [1, 2]):  # fmt: skip
        r = post(gw, "/api/embed", body)
        assert r.status_code == 400, body
        assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
    nulls = {"model": MODEL, "input": "x", "truncate": None, "dimensions": None, "options": None,
             "keep_alive": None}  # fmt: skip
    assert post(gw, "/api/embed", nulls).status_code == 200  # null fields are fields not sent
    r = requests.post(gw.url + "/api/embed", data=b"{not json", timeout=10)
    assert r.status_code == 400 and "error" in r.json()
    # curl's default form Content-Type: Ollama reads the JSON anyway.
    r = requests.post(gw.url + "/api/embed", data=f'{{"model":"{MODEL}","input":"hi"}}',
                      headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)  # fmt: skip
    assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 384
    r = post(gw, "/api/embeddings", {"model": MODEL, "prompt": ""})
    assert r.json() == {"embedding": []}
    r = post(gw, "/api/embeddings", {"model": MODEL, "prompt": 5})
    assert r.status_code == 400 and set(r.json()) == {"error"}


def test_openai_errors_and_token_arrays(gateway_factory):
    gw = gateway_factory(LOCAL)
    bad = [{"input": "x"}, {"model": MODEL}, {"model": MODEL, "input": ""},
           {"model": MODEL, "input": []}, {"model": MODEL, "input": [[]]},
           {"model": MODEL, "input": ["a", 1]}, {"model": MODEL, "input": [[1, "a"]]},
           {"model": MODEL, "input": [True]}, {"model": MODEL, "input": {"a": 1}},
           {"model": MODEL, "input": "x", "encoding_format": "int8"},
           {"model": MODEL, "input": "x", "dimensions": 0},
           {"model": MODEL, "input": "x", "dimensions": 128},
           {"model": MODEL, "input": [[1, 10**9]]},
           {"model": MODEL, "input": ["x"] * 2049}]  # fmt: skip
    for body in bad:
        r = post(gw, "/v1/embeddings", body)
        assert r.status_code == 400, body
        err = r.json()["error"]
        assert (
            set(err) == {"message", "type", "param", "code"}
            and err["type"] == "invalid_request_error"
        )
    r = post(gw, "/v1/embeddings", {"model": "nope", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = post(gw, "/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 384})
    assert r.status_code == 200  # the model's own size is allowed
    by_ids = post(gw, "/v1/embeddings", {"model": MODEL, "input": [[7592, 2088]]}).json()
    by_text = post(gw, "/v1/embeddings", {"model": MODEL, "input": "hello world"}).json()
    assert by_ids["usage"]["prompt_tokens"] == by_text["usage"]["prompt_tokens"] == 4
    assert cosine(by_ids["data"][0]["embedding"], by_text["data"][0]["embedding"]) >= 0.99999


def test_cache_hit_and_listing(gateway_factory):
    gw = gateway_factory(LOCAL)
    first = post(gw, "/v1/embeddings", {"model": MODEL, "input": TEXTS})
    assert first.headers["X-Hoosh-Cache"] == "MISS" and first.headers["X-Hoosh-Provider"] == "local"
    second = post(gw, "/v1/embeddings", {"model": MODEL, "input": TEXTS})
    assert second.headers["X-Hoosh-Cache"] == "HIT"
    assert second.json()["data"] == first.json()["data"]
    assert second.json()["usage"] == first.json()["usage"]
    other = post(gw, "/v1/embeddings", {"model": MODEL, "input": TEXTS[:2]})
    assert other.headers["X-Hoosh-Cache"] == "MISS"
    skip = post(gw, "/v1/embeddings", {"model": MODEL, "input": TEXTS},
                headers={"Cache-Control": "no-cache"})  # fmt: skip
    assert skip.headers["X-Hoosh-Cache"] == "BYPASS"
    ids = [m["id"] for m in requests.get(gw.url + "/v1/models", timeout=10).json()["data"]]
    assert MODEL in ids
    pools = requests.get(gw.url + "/v1/health", timeout=10).json()
    assert any(m["id"] == f"embed:{MODEL}" and m["loaded"] and m["kind"] == "embed"
               for m in pools["local_models"])  # fmt: skip


def test_cloud_fallback_priced_and_booked(gateway_factory, fake_openai):
    """text-embedding-3-small goes to the provider: its vectors, its token count, its price."""
    gw = gateway_factory(LOCAL + openai_provider_toml(fake_openai, models='["text-embedding-*"]'))
    texts = ["hello " * 8000, "wörld " * 7000]  # 48,000 + 49,000 bytes: 97,000 tokens at the fake
    body = {"model": "text-embedding-3-small", "input": texts, "dimensions": 16}
    r = post(gw, "/v1/embeddings", body)
    assert r.status_code == 200 and r.headers["X-Hoosh-Provider"] == "fake"
    doc = r.json()
    assert [d["embedding"] for d in doc["data"]] == [
        pytest.approx(fake_vector(texts[0], 16)), pytest.approx(fake_vector(texts[1], 16))]  # fmt: skip
    sent = [q["json"] for q in fake_openai.requests if q["path"].endswith("/embeddings")]
    assert sent[-1]["encoding_format"] == "float" and sent[-1]["dimensions"] == 16
    tokens = sum(len(t.encode()) for t in texts)
    assert tokens == 97_000 and doc["usage"]["prompt_tokens"] == tokens
    # $0.02 per million tokens, exact: the bundled price table. 97,000 tokens = 1,940 micro-USD.
    assert r.headers["X-Hoosh-Cost-USD"] == "0.00194"
    conn = sqlite3.connect(gw.tmp / "data" / "hoosh-edge.db")
    try:
        row = conn.execute("SELECT provider, model, prompt_tokens, cost_micro_usd FROM ledger "
                           "WHERE provider = 'fake'").fetchone()  # fmt: skip
    finally:
        conn.close()
    assert row == ("fake", "text-embedding-3-small", tokens, 1940)
    # A broken answer is a clean 502, never a crash.
    fake_openai.script("wrong_shape")
    r = post(gw, "/v1/embeddings", {**body, "input": "other"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    for which in range(5):  # strings, objects, bad base64, infinity, nested lists: each a 502
        fake_openai.script("bad_vectors")
        r = post(gw, "/v1/embeddings", {**body, "input": "other", "dimensions": which or 5})
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error", which
    fake_openai.script("status", 500)
    fake_openai.script("status", 500)
    fake_openai.script("status", 500)
    r = post(gw, "/v1/embeddings", {**body, "input": "again"})
    assert r.status_code == 502


def test_budget_blocks_cloud_embeddings(gateway_factory, fake_openai):
    toml = (
        LOCAL
        + openai_provider_toml(fake_openai, models='["text-embedding-*"]')
        + """
[[budgets]]
name = "tiny"
scope = "cloud"
metric = "usd"
limit = 0.000001
period = "day"
action = "block"
"""
    )
    gw = gateway_factory(toml)
    r = post(gw, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x" * 200})
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    assert not [q for q in fake_openai.requests if q["path"].endswith("/embeddings")]


def test_alias_falls_back_from_local_to_cloud(gateway_factory, fake_openai):
    toml = (
        LOCAL
        + openai_provider_toml(fake_openai, models='["text-embedding-*"]')
        + f"""
[routing.aliases]
embed = ["local:{MODEL}", "fake:text-embedding-3-small"]
"""
    )
    gw = gateway_factory(toml)
    r = post(gw, "/v1/embeddings", {"model": "embed", "input": "hello"})
    assert r.headers["X-Hoosh-Provider"] == "local" and len(r.json()["data"][0]["embedding"]) == 384
    # provider:model names one target.
    r = post(gw, "/v1/embeddings", {"model": "fake:text-embedding-3-small", "input": "hello"})
    assert r.headers["X-Hoosh-Provider"] == "fake"
    assert np.allclose(r.json()["data"][0]["embedding"], fake_vector("hello"))


def test_engine_runs_off_the_hub_and_its_queue_is_bounded(gateway_factory):
    """A long batch runs in a thread: /health answers meanwhile; a second caller waits in a
    queue of max_queue (0 here), so it is told 429 queue_full with Retry-After, in each dialect."""
    import threading
    import time

    gw = gateway_factory(LOCAL.replace("[local.embeddings.models]",
                                       "[local.embeddings]\nmax_queue = 0\n[local.embeddings.models]"))  # fmt: skip
    assert post(gw, "/v1/embeddings", {"model": MODEL, "input": "warm up"}).status_code == 200
    big = {"model": MODEL, "input": [f"text number {i} " + "word " * 200 for i in range(160)]}
    done: list[requests.Response] = []
    worker = threading.Thread(target=lambda: done.append(post(gw, "/v1/embeddings", big)))
    worker.start()
    time.sleep(0.5)  # the batch is running
    health = []
    for _ in range(5):
        t0 = time.perf_counter()
        assert requests.get(gw.url + "/health", timeout=5).ok
        health.append(time.perf_counter() - t0)
    busy = post(gw, "/v1/embeddings", {"model": MODEL, "input": "me too"})
    olla = post(gw, "/api/embed", {"model": MODEL, "input": "me too"})
    worker.join(120)
    assert done and done[0].status_code == 200 and len(done[0].json()["data"]) == 160
    assert max(health) < 0.5, health
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "queue_full"
    assert int(busy.headers["Retry-After"]) >= 1
    assert olla.status_code == 429 and set(olla.json()) == {"error"}


def test_gguf_embedding_model_and_keep_alive_zero(gateway_factory, tmp_path):
    """A .gguf in [local.embeddings.models] is served through llama.cpp; Ollama's keep_alive: 0
    frees the model after the answer, and the next call loads it again."""
    require_module("llama_cpp", "llama-cpp-python is not installed")
    from tests.synth_gguf import N_EMBD, make_tiny_gguf

    path = make_tiny_gguf(tmp_path / "tiny-embed.gguf")
    preload = f'[local.embeddings]\npreload = ["{MODEL}"]\n'
    gw = gateway_factory(preload + LOCAL + f'tiny = "{path}"\n')
    r = post(gw, "/v1/embeddings", {"model": "tiny", "input": ["abc", "hello there"]})
    assert r.status_code == 200, r.text
    vecs = [d["embedding"] for d in r.json()["data"]]
    assert [len(v) for v in vecs] == [N_EMBD, N_EMBD]
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert r.json()["usage"]["prompt_tokens"] == 3 + len(
        "hello there".replace(" ", "\u2581").encode()
    )
    r = post(gw, "/v1/embeddings", {"model": "tiny", "input": [[1, 2]]})
    assert r.status_code == 400 and "Token arrays" in r.json()["error"]["message"]

    def loaded() -> bool:
        pools = requests.get(gw.url + "/v1/health", timeout=10).json()["local_models"]
        return next(m["loaded"] for m in pools if m["id"] == f"embed:{MODEL}")

    assert loaded()  # preloaded at start-up
    out = post(gw, "/api/embed", {"model": MODEL, "input": "hi", "keep_alive": 0}).json()
    assert out["load_duration"] == 0 and not loaded()
    out = post(gw, "/api/embed", {"model": MODEL, "input": "hello", "keep_alive": "5m"}).json()
    assert out["load_duration"] > 0 and loaded()
