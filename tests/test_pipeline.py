"""The pipeline without any door: a neutral request in, a neutral answer or chunks out.

A new door (Ollama's API, Wyoming) gets keys, cache, single flight, budgets, routing, fallback and
the books by calling these functions; here they are driven with no Flask app and no HTTP request
on the gateway's side (the fake upstream is a real HTTP server).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hoosh_edge.books.keys import KeyRecord
from hoosh_edge.config import load_config
from hoosh_edge.errors import BudgetExceeded, ModelNotFound, PermissionDenied
from hoosh_edge.gateway import build_gateway
from hoosh_edge.pipeline.call import KEEPALIVE, CacheAsk, Caller, ChunkStream
from hoosh_edge.pipeline.chat import ChatAnswer, serve_chat
from tests.conftest import openai_provider_toml
from tests.fake_openai import FakeOpenAI


def _gateway(tmp_path: Path, fake: FakeOpenAI, extra: str = ""):
    cfg = tmp_path / "hoosh-edge.toml"
    cfg.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\nmodels_dir = "{tmp_path / "m"}"\n'
                   + openai_provider_toml(fake) + extra)  # fmt: skip
    return build_gateway(load_config(cfg, env={}), start=False)


@pytest.fixture
def gw(tmp_path, fake_openai):
    g = _gateway(
        tmp_path,
        fake_openai,
        """
[pricing."gpt-4o-mini"]
input_usd_per_mtok = 10
output_usd_per_mtok = 100
""",
    )
    yield g
    g.close()


def _req(text: str, **kw):
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **kw}


def test_a_whole_answer_is_served_billed_and_recorded(gw):
    result = serve_chat(gw, _req("Grüße, 東京 🌸"), Caller("req-one-0001"))
    assert isinstance(result, ChatAnswer)
    assert result.doc["choices"][0]["message"]["content"] == "Echo: Grüße, 東京 🌸"
    served = result.served
    assert (served.provider, served.model, served.cache) == ("fake", "gpt-4o-mini", "BYPASS")
    usage = result.doc["usage"]
    assert usage["cost_usd"] > 0 and served.cost_usd is not None
    assert served.fields["prompt_tokens"] == usage["prompt_tokens"]
    # The books have it: one committed call, nothing left reserved.
    with gw.db.read() as db:
        rows = db.execute("SELECT provider, model, request_id FROM ledger").fetchall()
        assert [tuple(r) for r in rows] == [("fake", "gpt-4o-mini", "req-one-0001")]
        assert db.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0


def test_a_stream_is_neutral_chunks_then_settled_usage(gw):
    result = serve_chat(gw, _req("one two three", stream=True), Caller("req-two-0002"))
    assert isinstance(result, ChunkStream)
    text = []
    try:
        for item in result:
            if item is KEEPALIVE:
                continue
            assert isinstance(item.get("choices"), list)  # content chunks only: usage comes apart
            for choice in item.get("choices") or ():
                text.append((choice.get("delta") or {}).get("content") or "")
    finally:
        result.close()
    assert "".join(text) == "Echo: one two three"
    assert result.error is None and result.status == 200
    assert result.usage["cost_usd"] > 0 and result.usage["completion_tokens"] > 0
    assert result.served.fields["stream"] is True
    with gw.db.read() as db:
        assert db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 1


def test_a_stream_closed_early_is_still_billed_and_says_499(gw):
    result = serve_chat(gw, _req("a b c d e f g h", stream=True), Caller("req-cut-0003"))
    for item in result:
        if item is not KEEPALIVE:
            break  # the caller goes away after the first chunk
    result.close()
    assert result.status == 499
    with gw.db.read() as db:
        assert db.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 1


def test_the_cache_answers_the_second_identical_call_for_free(gw, fake_openai):
    req = _req("cache me", temperature=0)
    first = serve_chat(gw, dict(req), Caller("req-c1-00001"), CacheAsk())
    second = serve_chat(gw, dict(req), Caller("req-c2-00002"), CacheAsk())
    assert first.served.cache == "MISS" and second.served.cache == "HIT"
    assert second.served.provider == "cache" and second.doc["usage"]["cost_usd"] == 0
    assert second.doc["choices"] == first.doc["choices"]
    assert len(fake_openai.chat_requests) == 1
    third = serve_chat(gw, dict(req), Caller("req-c3-00003"), CacheAsk(lookup=False))
    assert third.served.cache == "BYPASS" and len(fake_openai.chat_requests) == 2


def test_a_block_rule_refuses_before_the_upstream_is_called(tmp_path, fake_openai):
    gw = _gateway(
        tmp_path,
        fake_openai,
        """
[[budgets]]
name = "no-cloud"
scope = "cloud"
metric = "requests"
limit = 0
period = "day"
action = "block"
""",
    )
    try:
        with pytest.raises(BudgetExceeded) as e:
            serve_chat(gw, _req("hello"), Caller("req-blk-0004"))
        assert "no-cloud" in e.value.message
        assert fake_openai.chat_requests == []
    finally:
        gw.close()


def test_the_callers_key_limits_its_models_and_unknown_models_are_named(gw):
    key = KeyRecord(name="kitchen", prefix="hk-kit", allowed_models=("llama-*",))
    with pytest.raises(PermissionDenied):
        serve_chat(gw, _req("hi"), Caller("req-key-0005", key=key))
    with pytest.raises(ModelNotFound) as e:
        serve_chat(gw, {**_req("hi"), "model": "no-such-model"}, Caller("req-nf-00006"))
    assert "no-such-model" in e.value.message


def test_the_pipeline_imports_no_flask():
    import subprocess

    code = ("import sys, hoosh_edge.pipeline.chat, hoosh_edge.pipeline.audio, hoosh_edge.gateway;"
            "print('flask' in sys.modules, 'werkzeug' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
