"""The chat API end to end: a real gateway process, a real fake upstream, the official SDK."""

from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from tests.conftest import openai_provider_toml
from tests.fake_anthropic import API_KEY as ANTHROPIC_KEY
from tests.fake_anthropic import FakeAnthropic
from tests.fake_openai import FakeOpenAI


@pytest.fixture
def gw(fake_openai, gateway_factory):
    return gateway_factory(openai_provider_toml(fake_openai))


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=20)


def test_sdk_non_streaming(gw, fake_openai):
    r = sdk(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
    )
    c = r.parse()
    assert c.choices[0].message.content == "Echo: hello there"
    assert c.choices[0].finish_reason == "stop"
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens > 0
    assert c.id.startswith("chatcmpl-")
    assert r.headers["X-Hoosh-Provider"] == "fake"
    assert r.headers["X-Hoosh-Model"] == "gpt-4o-mini"
    assert r.headers["X-Request-Id"]
    # The upstream got the key of the provider, not the client's.
    assert (
        fake_openai.chat_requests[-1]["headers"]["Authorization"] == f"Bearer {fake_openai.api_key}"
    )


def test_sdk_streaming_with_usage(gw, fake_openai):
    stream = sdk(gw).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": [{"type": "text", "text": "one two three"}]}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: one two three"
    assert len({c.id for c in chunks}) == 1  # one id for every chunk of one completion
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    # Upstream was asked for usage even though the gateway decides what the client sees.
    assert fake_openai.chat_requests[-1]["json"]["stream_options"] == {"include_usage": True}


def test_stream_without_include_usage_sends_no_usage_chunk(gw):
    r = requests.post(gw.url + "/v1/chat/completions", json={
        "model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        stream=True, timeout=10)  # fmt: skip
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in r.iter_lines() if line]
    assert events[-1] == b"data: [DONE]"
    docs = [json.loads(e[6:]) for e in events[:-1]]
    assert all(d.get("usage") is None for d in docs)


def test_tool_calls_round_trip(gw, fake_openai):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    fake_openai.script("tool_call")
    c = sdk(gw).chat.completions.create(model="gpt-4o-mini", tools=tools, tool_choice="auto",
                                        messages=[{"role": "user", "content": "weather?"}])  # fmt: skip
    call = c.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
        "city": "Paris"
    }
    assert c.choices[0].finish_reason == "tool_calls"
    assert fake_openai.chat_requests[-1]["json"]["tools"] == tools
    fake_openai.script("tool_call")
    chunks = list(sdk(gw).chat.completions.create(
        model="gpt-4o-mini", tools=tools, messages=[{"role": "user", "content": "weather?"}],
        stream=True))  # fmt: skip
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                   for c in chunks if c.choices and c.choices[0].delta.tool_calls)  # fmt: skip
    assert json.loads(args) == {"city": "Paris"}


def test_max_tokens_and_finish_length(gw, fake_openai):
    c = sdk(gw).chat.completions.create(model="gpt-4o-mini", max_completion_tokens=2,
                                        messages=[{"role": "user", "content": "a b c d e"}])  # fmt: skip
    assert c.choices[0].finish_reason == "length"
    assert c.choices[0].message.content == "Echo: a"
    assert fake_openai.chat_requests[-1]["json"]["max_completion_tokens"] == 2


ANTHROPIC_GLOBS = f"""
[[providers]]
name = "claude"
type = "anthropic"
base_url = "{{url}}"
api_key = "{ANTHROPIC_KEY}"
models = ["claude-*", "claude-opus-9"]
timeout_s = 5
"""


def _listed(gw) -> dict[str, dict]:
    return {m["id"]: m for m in requests.get(gw.url + "/v1/models", timeout=5).json()["data"]}


def test_models_of_a_glob_provider_are_asked_of_the_provider(fake_openai, gateway_factory):
    """`models = ["gpt-*"]` lists what the provider really has that the glob admits."""
    fake_openai.model_list = ["gpt-4o-mini", "gpt-4.1-nano", "text-embedding-3-small"]
    gw = gateway_factory(openai_provider_toml(fake_openai, models='["gpt-*", "o3-mini"]'))
    assert not any(r["path"].endswith("/models") for r in fake_openai.requests)  # not at start-up
    listed = _listed(gw)  # the first listing waits (a second at most) for the provider's list
    assert listed["o3-mini"]["owned_by"] == "fake" and listed["o3-mini"]["source"] == "config"
    assert set(listed) == {"gpt-4o-mini", "gpt-4.1-nano", "o3-mini"}
    assert listed["gpt-4.1-nano"]["source"] == "provider"
    assert "text-embedding-3-small" not in listed  # the provider has it; the glob does not admit it
    asked = [r for r in fake_openai.requests if r["path"].endswith("/models")]
    assert asked[0]["headers"]["Authorization"] == f"Bearer {fake_openai.api_key}"
    for _ in range(5):
        _listed(gw)
    assert len([r for r in fake_openai.requests if r["path"].endswith("/models")]) == 1  # cached
    assert {m.id for m in sdk(gw).models.list().data} == set(listed)


def test_sdk_lists_what_each_glob_provider_really_has(fake_openai, gateway_factory):
    """OpenAI- and Anthropic-type providers with globs: config ids plus their own admitted ids."""
    fake_openai.model_list = ["gpt-4o-mini", "gpt-4.1-nano", "o3-mini", "text-embedding-3-small"]
    with FakeAnthropic() as claude:
        claude.model_list = ["claude-3-5-haiku-latest", "claude-sonnet-4-5", "other-model"]
        openai_part = openai_provider_toml(fake_openai, models='["gpt-*", "o3-mini", "gpt-5"]')
        gw = gateway_factory(openai_part + ANTHROPIC_GLOBS.format(url=claude.url))
        client = sdk(gw)
        listed = {(m.id, m.owned_by, m.source) for m in client.models.list().data}
        # A second listing answers from the cached catalogs: the same, without asking again.
        again = {(m.id, m.owned_by, m.source) for m in client.models.list().data}
        anthropic_asked = [r for r in claude.requests if r.method == "GET"]
    # Named in the config: listed as "config" (gpt-5 too, which the provider lacks; o3-mini once
    # although the provider lists it as well). text-embedding-3-small and other-model: the
    # providers have them, but no glob admits them.
    expected = {("gpt-5", "fake", "config"), ("o3-mini", "fake", "config"),
                ("gpt-4o-mini", "fake", "provider"), ("gpt-4.1-nano", "fake", "provider"),
                ("claude-opus-9", "claude", "config"),
                ("claude-3-5-haiku-latest", "claude", "provider"),
                ("claude-sonnet-4-5", "claude", "provider")}  # fmt: skip
    assert listed == expected and again == expected
    assert len([r for r in fake_openai.requests if r["path"].endswith("/models")]) == 1
    assert len(anthropic_asked) == 1 and anthropic_asked[0].headers["x-api-key"] == ANTHROPIC_KEY


def test_models_listing_survives_a_provider_that_cannot_list(gateway_factory):
    """A provider whose model list fails still gets a listing of its named models, quickly."""
    with FakeOpenAI() as broken:
        broken.model_list = None  # the fake answers 500 to GET /models
        gw = gateway_factory(openai_provider_toml(broken, models='["gpt-*", "gpt-4o"]'))
        for _ in range(3):
            started = time.monotonic()
            listed = _listed(gw)
            assert time.monotonic() - started < 1.5
            assert listed["gpt-4o"]["source"] == "config"
            time.sleep(0.2)
        assert requests.get(gw.url + "/health", timeout=5).ok


def test_models_list_and_get(gw):
    listed = [(x.id, x.owned_by, x.source) for x in sdk(gw).models.list().data]
    assert listed == [("gpt-4o-mini", "fake", "provider")]  # the fake lists it, `gpt-*` admits it
    got = sdk(gw).models.retrieve("gpt-4o-mini")
    assert got.id == "gpt-4o-mini" and got.owned_by == "fake"
    with pytest.raises(openai.NotFoundError):
        sdk(gw).models.retrieve("no-such-model")


def test_health_endpoints(gw):
    assert requests.get(gw.url + "/health", timeout=5).json()["status"] == "ok"
    h = requests.get(gw.url + "/v1/health", timeout=5).json()
    assert [p["name"] for p in h["providers"]] == ["fake"]
    assert h["providers"][0]["state"] == "ok"
