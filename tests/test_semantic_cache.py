"""The semantic cache through the gateway: a reworded question is served from the cache, marked
SEMANTIC with its similarity; an unrelated one, another scope, tools or a non-zero temperature are
not. The fake upstream echoes the question, so an answer shows which question it was made for."""

from __future__ import annotations

import json
import sqlite3

import pytest
import requests

from hoosh_edge.books.cache_policy import CachePolicy
from tests.conftest import openai_provider_toml, require
from tests.embed_reference import MODEL_DIR

require(MODEL_DIR.is_dir(), "all-minilm-l6-v2 is not in models/ (scripts/setup --dev pulls it)")

SEMANTIC = f"""
[local.embeddings.models]
all-minilm-l6-v2 = "{MODEL_DIR}"

[cache]
semantic = {{ models = ["gpt-4o-mini", "smart"], min_similarity = 0.9, max_entries = 3 }}

[routing.aliases]
smart = ["fake:gpt-4o-mini"]
"""
FIRST = "What is the capital of France?"


def ask(gw, text, *, system=None, model="gpt-4o-mini", stream=False, **extra):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}]  # fmt: skip
    body = {"model": model, "messages": messages, "temperature": 0, "stream": stream, **extra}
    return requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30, stream=stream)


def content(r) -> str:
    return r.json()["choices"][0]["message"]["content"]


def chat_calls(fake) -> int:
    return len(fake.chat_requests)


def test_reworded_question_hits_and_unrelated_one_does_not(gateway_factory, fake_openai):
    gw = gateway_factory(openai_provider_toml(fake_openai) + SEMANTIC)
    first = ask(gw, FIRST)
    assert first.headers["X-Hoosh-Cache"] == "MISS" and content(first) == f"Echo: {FIRST}"
    reworded = ask(gw, "What's the capital city of France?")
    assert reworded.headers["X-Hoosh-Cache"] == "SEMANTIC"
    assert 0.9 <= float(reworded.headers["X-Hoosh-Cache-Similarity"]) < 1.0
    assert content(reworded) == f"Echo: {FIRST}"  # the stored answer, not a new one
    assert reworded.headers["X-Hoosh-Cost-USD"] == "0"
    assert reworded.json()["usage"]["cost_usd"] == 0
    assert chat_calls(fake_openai) == 1
    # Close in words, not in meaning: below the threshold, so a call of its own.
    germany = ask(gw, "What is the capital of Germany?")
    assert germany.headers["X-Hoosh-Cache"] == "MISS"
    assert "X-Hoosh-Cache-Similarity" not in germany.headers
    assert content(germany) == "Echo: What is the capital of Germany?"
    unrelated = ask(gw, "How do I bake sourdough bread?")
    assert content(unrelated) == "Echo: How do I bake sourdough bread?"
    assert chat_calls(fake_openai) == 3
    # The same words again are an exact hit, which goes first.
    assert ask(gw, FIRST).headers["X-Hoosh-Cache"] == "HIT"
    # An alias listed in models works the same (its own scope: the target is in the hash too).
    assert ask(gw, "Which city is the capital of France?", model="smart").headers[
        "X-Hoosh-Cache"] == "SEMANTIC"  # fmt: skip
    # Streamed: the stored answer replayed as chunks.
    r = ask(gw, "Tell me the capital of France.", stream=True)
    assert r.headers["X-Hoosh-Cache"] == "SEMANTIC"
    docs = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith(b"data: {")]
    text = "".join(d["choices"][0]["delta"].get("content") or "" for d in docs if d["choices"])
    assert text == f"Echo: {FIRST}"
    assert chat_calls(fake_openai) == 3
    gw.stop()
    lines = [json.loads(x) for x in gw.log.splitlines() if x.startswith('{"ts"')]
    sem = [x for x in lines if x.get("cache") == "SEMANTIC"]
    assert len(sem) == 3 and all(0.9 <= x["similarity"] < 1 for x in sem)


def test_only_the_last_user_message_may_differ(gateway_factory, fake_openai):
    gw = gateway_factory(openai_provider_toml(fake_openai) + SEMANTIC)
    ask(gw, FIRST, system="You are terse.")
    reworded = "What's the capital city of France?"
    assert ask(gw, reworded, system="You are terse.").headers["X-Hoosh-Cache"] == "SEMANTIC"
    # Another system prompt, option, or model: another scope.
    assert ask(gw, reworded, system="You are verbose.").headers["X-Hoosh-Cache"] == "MISS"
    assert ask(gw, reworded, system="You are terse.", max_tokens=5).headers[
        "X-Hoosh-Cache"] == "MISS"  # fmt: skip
    assert (
        ask(gw, reworded, model="gpt-4.1-mini", system="You are terse.").headers["X-Hoosh-Cache"]
        == "MISS"
    )  # fmt: skip (not listed in semantic.models)
    # Tools: never, unless semantic.tools = true.
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ask(gw, FIRST, tools=[tool])
    assert ask(gw, reworded, tools=[tool]).headers["X-Hoosh-Cache"] == "MISS"
    # A non-zero temperature is not repeatable: neither cache.
    assert ask(gw, reworded, temperature=0.8).headers["X-Hoosh-Cache"] == "BYPASS"
    # Cache-Control: no-cache skips the lookup.
    r = requests.post(gw.url + "/v1/chat/completions", timeout=30, headers={
        "Cache-Control": "no-cache"}, json={"model": "gpt-4o-mini", "temperature": 0,
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": reworded}]})  # fmt: skip
    assert r.headers["X-Hoosh-Cache"] == "BYPASS" and content(r) == f"Echo: {reworded}"


def test_bounded_by_max_entries(gateway_factory, fake_openai):
    gw = gateway_factory(openai_provider_toml(fake_openai) + SEMANTIC)
    for q in ("one question about trains", "a second about ships", "a third about planes",
              "a fourth about bicycles", "a fifth about rockets"):  # fmt: skip
        assert ask(gw, q).status_code == 200
    conn = sqlite3.connect(gw.tmp / "data" / "hoosh-edge.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM semantic_cache").fetchone()[0] == 3
    finally:
        conn.close()
    stats = requests.get(gw.url + "/admin/cache", timeout=10).json()["semantic"]
    assert stats == {"enabled": True, "entries": 3, "max_entries": 3, "min_similarity": 0.9,
                     "hits": 0, "misses": 5, "stores": 5}  # fmt: skip
    # The newest are kept (its rewording, at 0.95, is found); the oldest went first (its
    # rewording, at 0.98, would be found if it were still there).
    assert ask(gw, "a fifth one about rockets").headers["X-Hoosh-Cache"] == "SEMANTIC"
    assert ask(gw, "a question about trains").headers["X-Hoosh-Cache"] == "MISS"
    assert requests.delete(gw.url + "/admin/cache", timeout=10).ok  # every row goes with it
    assert requests.get(gw.url + "/admin/cache", timeout=10).json()["semantic"]["entries"] == 0


def test_without_an_embedding_model_chat_still_works(gateway_factory, fake_openai):
    toml = (
        openai_provider_toml(fake_openai)
        + """
[cache]
semantic = { models = ["gpt-4o-mini"] }
"""
    )
    gw = gateway_factory(toml)
    assert ask(gw, FIRST).headers["X-Hoosh-Cache"] == "MISS"
    assert ask(gw, "What's the capital city of France?").headers["X-Hoosh-Cache"] == "MISS"
    assert "the semantic cache is off" in gw.log


@pytest.mark.parametrize("table, why", [
    ({"models": []}, "non-empty list"),
    ({"models": ["m"], "min_similarity": 1.5}, "min_similarity"),
    ({"models": ["m"], "min_similarity": True}, "min_similarity"),
    ({"models": ["m"], "max_entries": 0}, "max_entries"),
    ({"models": ["m"], "tools": "yes"}, "tools"),
    ({"models": ["m"], "threshold": 0.9}, "no setting 'threshold'"),
    ("on", "must be a table"),
])  # fmt: skip
def test_config_is_checked(table, why):
    with pytest.raises(ValueError, match=why):
        CachePolicy.from_config({"semantic": table})


def test_survives_a_kill_9(gateway_factory, fake_openai, tmp_path):
    data = f'[server]\ndata_dir = "{tmp_path / "shared-data"}"\n'
    first = gateway_factory(data + openai_provider_toml(fake_openai) + SEMANTIC)
    assert ask(first, FIRST).headers["X-Hoosh-Cache"] == "MISS"
    first.kill9()
    second = gateway_factory(data + openai_provider_toml(fake_openai) + SEMANTIC)
    again = ask(second, "Which city is the capital of France?")
    assert again.headers["X-Hoosh-Cache"] == "SEMANTIC" and content(again) == f"Echo: {FIRST}"
    assert chat_calls(fake_openai) == 1
