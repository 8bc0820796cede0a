"""A provider with OpenAI's Responses API (``responses_api = true``) gets /v1/responses as it
came, through the same pipeline (budget, cache, store), and its answer back in Responses shape."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from hoosh_edge.config.providers import parse_provider
from hoosh_edge.config.schema import ConfigError
from tests.conftest import openai_provider_toml

PRICED = """
[pricing."gpt-4o-mini"]
input_usd_per_mtok = 10
output_usd_per_mtok = 100
"""
TOOL = {"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip


@pytest.fixture
def gw(gateway_factory, fake_openai):
    return gateway_factory(openai_provider_toml(fake_openai, extra="responses_api = true") + PRICED)


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)


def sent(fake) -> list[dict]:
    return [r["json"] for r in fake.requests if r["path"] == "/v1/responses"]


def test_text_goes_as_it_came(gw, fake_openai):
    raw = client(gw).responses.with_raw_response.create(
        model="gpt-4o-mini", input="as it came", instructions="Be brief.",
        max_output_tokens=40, text={"format": {"type": "text"}, "verbosity": "low"},
        metadata={"a": "b"})  # fmt: skip
    resp = raw.parse()
    assert resp.output_text == "Echo: as it came" and resp.id.startswith("resp_")
    assert resp.id != "resp_upstream"  # the gateway's own id: its store answers for it
    assert float(raw.headers["X-Hoosh-Cost-USD"]) > 0 and resp.usage.output_tokens == 4
    body = sent(fake_openai)[-1]
    assert body["instructions"] == "Be brief." and body["text"]["verbosity"] == "low"
    assert body["input"] == [{"type": "message", "role": "user", "content": "as it came"}]
    assert body["store"] is False and body["max_output_tokens"] == 40
    assert body["model"] == "gpt-4o-mini" and "previous_response_id" not in body
    assert not fake_openai.chat_requests
    assert client(gw).responses.retrieve(resp.id).output_text == "Echo: as it came"


def test_stream_goes_as_it_came(gw, fake_openai):
    events = list(client(gw).responses.create(model="gpt-4o-mini", input="one two three",
                                              stream=True))  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Echo: one two three"
    assert sent(fake_openai)[-1]["stream"] is True and not fake_openai.chat_requests


def test_tool_call_and_previous_response_id_become_input_items(gw, fake_openai):
    c = client(gw)
    fake_openai.script("tool_call")
    first = c.responses.create(model="gpt-4o-mini", input="Weather in Paris?", tools=[TOOL])
    call = first.output[0]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
    second = c.responses.create(model="gpt-4o-mini", previous_response_id=first.id, tools=[TOOL],
                                input=[{"type": "function_call_output", "call_id": call.call_id,
                                        "output": "sunny"}])  # fmt: skip
    assert second.output_text == "Echo: Weather in Paris?"
    body = sent(fake_openai)[-1]
    assert body["input"] == [
        {"type": "message", "role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]  # fmt: skip
    assert body["tools"] == [TOOL]
    c.responses.create(model="gpt-4o-mini", input=[
        {"type": "message", "id": "msg_ours", "role": "user", "content": "x"}])  # fmt: skip
    assert sent(fake_openai)[-1]["input"] == [{"type": "message", "role": "user", "content": "x"}]
    fake_openai.script("tool_call")
    events = list(c.responses.create(model="gpt-4o-mini", input="Weather?", tools=[TOOL],
                                     stream=True))  # fmt: skip
    final = events[-1].response
    assert final.output[0].type == "function_call" and final.output[0].name == "get_weather"
    assert json.loads(final.output[0].arguments) == {"city": "Paris"}


def test_without_the_flag_it_is_chat(gateway_factory, fake_openai):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    assert client(gw).responses.create(model="gpt-4o-mini", input="x").output_text == "Echo: x"
    assert not sent(fake_openai) and "responses" not in fake_openai.chat_requests[-1]["json"]
    r = requests.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
        "responses": {"body": {}, "input": []}})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "responses"


def test_the_flag_in_config():
    def parse(**t):
        return parse_provider(t, 0, "t.toml", {"OPENAI_API_KEY": "k"}, [])

    assert parse(type="openai", api_key="k").responses_api  # OpenAI's own endpoint has it
    assert not parse(type="openai", api_key="k", base_url="http://127.0.0.1:9/v1").responses_api
    assert not parse(type="groq", api_key="k").responses_api
    assert parse(type="openai", base_url="http://127.0.0.1:9/v1", responses_api=True).responses_api
    with pytest.raises(ConfigError, match="responses_api"):
        parse(type="anthropic", api_key="k", responses_api=True)
    with pytest.raises(ConfigError):
        parse(type="openai", api_key="k", responses_api="yes")
