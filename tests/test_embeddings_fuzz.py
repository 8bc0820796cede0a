"""Generated hostile bodies for /v1/embeddings, /api/embed and /api/embeddings: never a 500, an
error always in the dialect's own shape, and the gateway still serving after each one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzzing
from tests.conftest import GatewayProcess, openai_provider_toml, require
from tests.embed_reference import MODEL_DIR
from tests.fake_openai import FakeOpenAI

require(MODEL_DIR.is_dir(), "all-minilm-l6-v2 is not in models/ (scripts/setup --dev pulls it)")

MODELS = ["all-minilm-l6-v2", "text-embedding-3-small", "no-such-model", "all-minilm-l6-v2:latest"]
TEXT = st.one_of(st.sampled_from(fuzzing.NASTY_TEXT), st.text(max_size=300))
TOKENS = st.lists(st.integers(min_value=-5, max_value=40000), max_size=40)


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[GatewayProcess]:
    with FakeOpenAI() as fake:
        cfg = f"""
[local.embeddings.models]
all-minilm-l6-v2 = "{MODEL_DIR}"
""" + openai_provider_toml(fake, models='["text-embedding-*"]')
        with GatewayProcess(cfg, tmp_path_factory.mktemp("fuzz-embed")) as proc:
            yield proc


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@st.composite
def openai_request(draw: st.DrawFn) -> dict:
    doc = {"model": draw(st.sampled_from(MODELS)),
           "input": draw(st.one_of(TEXT, st.lists(TEXT, max_size=5), TOKENS,
                                   st.lists(TOKENS, max_size=3)))}  # fmt: skip
    if draw(st.booleans()):
        doc["encoding_format"] = draw(st.sampled_from(["float", "base64", "int8", ""]))
    if draw(st.booleans()):
        doc["dimensions"] = draw(st.sampled_from([1, 16, 384, 0, -1, 10**6]))
    return doc


@st.composite
def ollama_request(draw: st.DrawFn) -> dict:
    doc = {"model": draw(st.sampled_from(MODELS)),
           "input": draw(st.one_of(TEXT, st.lists(TEXT, max_size=5)))}  # fmt: skip
    for key, values in (("truncate", [True, False, "no"]), ("keep_alive", [0, "5m", "0s", -1]),
                        ("options", [{}, {"temperature": 1}]), ("dimensions", [8, 0])):  # fmt: skip
        if draw(st.booleans()):
            doc[key] = draw(st.sampled_from(values))
    return doc


def check(gw: GatewayProcess, http: requests.Session, r: requests.Response, ollama: bool) -> None:
    body = r.content
    time.sleep(0.002)  # let the log reader catch up with what the request wrote
    problems = gw.log_problems()
    new, gw.fuzz_seen = problems[getattr(gw, "fuzz_seen", 0) :], len(problems)
    assert r.status_code < 500, body[:500]
    if r.status_code >= 400:
        doc = json.loads(body)
        if ollama:
            assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"]
        else:
            assert set(doc) == {"error"} and set(doc["error"]) == {
                "message",
                "type",
                "param",
                "code",
            }
    assert http.get(gw.url + "/health", timeout=10).status_code == 200
    assert not new, new[0]


@given(fuzzing.broken(openai_request()), st.booleans())
def test_v1_embeddings(gw, http, mutated, raw_utf8):
    data = fuzzing.encode(*mutated, raw_utf8)
    r = http.post(gw.url + "/v1/embeddings", data=data, timeout=60,
                  headers={"Content-Type": "application/json"})  # fmt: skip
    check(gw, http, r, ollama=False)


@given(fuzzing.broken(ollama_request()), st.booleans())
def test_api_embed(gw, http, mutated, raw_utf8):
    r = http.post(gw.url + "/api/embed", data=fuzzing.encode(*mutated, raw_utf8), timeout=60)
    check(gw, http, r, ollama=True)


@given(st.fixed_dictionaries({"model": st.sampled_from(MODELS), "prompt": TEXT}), st.booleans())
def test_api_embeddings(gw, http, doc, raw_utf8):
    r = http.post(gw.url + "/api/embeddings", data=fuzzing.encode(doc, [], raw_utf8), timeout=60)
    check(gw, http, r, ollama=True)
