"""/v1/responses and /v1/completions as chat calls: budgets and costs, the cache, access lines
and metrics, a failure mid-stream; the stored-response books' bounds, TTL and scopes."""

from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from hoosh_edge.books.db import Database
from hoosh_edge.books.responses import ResponseStore, StoredResponse
from tests.conftest import openai_provider_toml

PRICED = """
[pricing."gpt-4o-mini"]
input_usd_per_mtok = 10
output_usd_per_mtok = 100
"""
TINY_BUDGET = """
[[budgets]]
name = "tiny"
scope = "cloud"
metric = "usd"
limit = 0.001
period = "day"
action = "block"
"""


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)


def access_lines(gw, path: str) -> list[dict]:
    out = []
    for line in gw.log.splitlines():
        if line.startswith("{") and f'"path":"{path}"' in line:
            out.append(json.loads(line))
    return out


def test_costs_budgets_and_access_lines(gateway_factory, fake_openai):
    gw = gateway_factory(openai_provider_toml(fake_openai) + PRICED + TINY_BUDGET)
    raw = client(gw).responses.with_raw_response.create(model="gpt-4o-mini", input="hi there",
                                                        max_output_tokens=5)  # fmt: skip
    resp = raw.parse()
    assert raw.headers["X-Hoosh-Provider"] == "fake"
    cost = float(raw.headers["X-Hoosh-Cost-USD"])
    assert cost > 0 and resp.usage.model_extra["cost_usd"] == pytest.approx(cost)
    # The tiny budget is spent: the next call of either door is refused before the upstream.
    calls = len(fake_openai.chat_requests)
    with pytest.raises(openai.RateLimitError) as e:
        client(gw).responses.create(model="gpt-4o-mini", input="again", max_output_tokens=5)
    assert e.value.body["code"] == "budget_exceeded"
    with pytest.raises(openai.RateLimitError):
        client(gw).completions.create(model="gpt-4o-mini", prompt="again", max_tokens=5)
    assert len(fake_openai.chat_requests) == calls
    time.sleep(0.3)  # the access line is written as the response ends
    lines = access_lines(gw, "/v1/responses")
    assert lines[0]["status"] == 200 and lines[0]["provider"] == "fake"
    assert lines[0]["cost_usd"] == pytest.approx(cost)
    assert [x["status"] for x in lines[1:]] == [429]
    metrics = requests.get(gw.url + "/metrics", timeout=10).text
    assert 'route="/v1/responses",status="200"' in metrics
    assert 'route="/v1/completions",status="429"' in metrics


def test_cache_serves_a_repeated_response(gateway_factory, fake_openai):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    c = client(gw)
    first = c.responses.with_raw_response.create(model="gpt-4o-mini", input="same", temperature=0)
    again = c.responses.with_raw_response.create(model="gpt-4o-mini", input="same", temperature=0)
    assert first.headers["X-Hoosh-Cache"] == "MISS" and again.headers["X-Hoosh-Cache"] == "HIT"
    assert again.parse().output_text == first.parse().output_text == "Echo: same"
    assert again.parse().id != first.parse().id  # a new response, stored on its own
    assert c.responses.retrieve(again.parse().id).output_text == "Echo: same"
    assert len(fake_openai.chat_requests) == 1


def test_failure_mid_stream_is_response_failed(gateway_factory, fake_openai):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("cut", 3)
    events = list(client(gw).responses.create(model="gpt-4o-mini", input="a b c d e f g h",
                                              stream=True))  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error.message
    with pytest.raises(openai.NotFoundError):  # a failed response is not kept
        client(gw).responses.retrieve(events[-1].response.id)


def _record(i: int) -> StoredResponse:
    return StoredResponse(f"resp_{i}", {"id": f"resp_{i}", "output": []},
                          [{"id": f"msg_{i}"}], [{"role": "user", "content": str(i)}])  # fmt: skip


def test_store_is_bounded_expires_and_keeps_scopes(tmp_path):
    db = Database.open(tmp_path)
    try:
        store = ResponseStore(db, max_stored=2, ttl_s=3600)
        for i in range(3):
            store.put("a" if i != 1 else "b", _record(i))
            time.sleep(0.01)
        assert store.get("a", "resp_0") is None  # the oldest left to keep two
        assert store.get("b", "resp_1").messages == [{"role": "user", "content": "1"}]
        assert store.get("a", "resp_1") is None  # another scope's record is not found
        assert not store.delete("a", "resp_1") and store.delete("b", "resp_1")
        assert store.count() == 1
        short = ResponseStore(db, max_stored=10, ttl_s=0.05)
        short.put("", _record(7))
        assert short.get("", "resp_7") is not None
        time.sleep(0.1)
        assert short.get("", "resp_7") is None and not short.delete("", "resp_7")
        short.put("", _record(8))  # a write sweeps what expired
        assert {r[0] for r in db.reader.execute("SELECT id FROM stored_responses")} == {
            "resp_2", "resp_8"}  # fmt: skip
        tight = ResponseStore(db, max_stored=100, ttl_s=3600)
        for i in range(10, 15):
            tight.put("", _record(i))
            size = db.reader.execute("SELECT size FROM stored_responses WHERE id = ?",
                                     [f"resp_{i}"]).fetchone()[0]  # fmt: skip
            tight.max_bytes = size * 3  # records of one size: three fit
            time.sleep(0.01)
        ids = {r[0] for r in db.reader.execute("SELECT id FROM stored_responses")}
        assert ids == {"resp_12", "resp_13", "resp_14"}  # the byte bound: the newest three
        huge = StoredResponse("resp_big", {"id": "resp_big", "x": "y" * size * 4}, [], [])
        tight.put("", huge)  # larger than the whole bound: not kept, nothing else dropped
        assert tight.get("", "resp_big") is None and tight.count() == 3
    finally:
        db.close()
