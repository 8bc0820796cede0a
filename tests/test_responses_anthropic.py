"""/v1/responses and /v1/completions in front of Anthropic and with fallback: the request is
translated to chat and on to the Messages API; a failing first target falls back."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import openai_provider_toml
from tests.fake_anthropic import API_KEY, FakeAnthropic, error, reply


@pytest.fixture
def fake_anthropic():
    fake = FakeAnthropic()
    try:
        yield fake
    finally:
        fake.close()


def anthropic_toml(fake: FakeAnthropic) -> str:
    return f"""
[[providers]]
name = "claude"
type = "anthropic"
base_url = "{fake.url}"
api_key = "{API_KEY}"
models = ["claude-*"]
timeout_s = 5
max_retries = 0
"""


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)


def test_anthropic_text_tool_call_and_stream(gateway_factory, fake_anthropic):
    gw = gateway_factory(anthropic_toml(fake_anthropic))
    c = client(gw)
    fake_anthropic.script(reply("Bonjour."))
    resp = c.responses.create(model="claude-3-5-haiku-latest", input="Say hi in French.",
                              instructions="Be terse.", max_output_tokens=30)  # fmt: skip
    assert resp.output_text == "Bonjour." and resp.usage.input_tokens == 12
    sent = fake_anthropic.requests[-1].body
    assert sent["system"] in ("Be terse.", [{"type": "text", "text": "Be terse."}])
    assert sent["max_tokens"] == 30
    fake_anthropic.script(reply(None, tool_uses=[("get_weather", {"city": "Oslo"})]))
    tool = {"type": "function", "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
    called = c.responses.create(model="claude-3-5-haiku-latest", input="Weather?", tools=[tool])
    call = called.output[0]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Oslo"}
    fake_anthropic.script(reply("It is sunny."))
    done = c.responses.create(model="claude-3-5-haiku-latest", previous_response_id=called.id,
                              tools=[tool], input=[{"type": "function_call_output",
                                                    "call_id": call.call_id, "output": "sun"}])  # fmt: skip
    assert done.output_text == "It is sunny."
    blocks = fake_anthropic.requests[-1].body["messages"]
    assert blocks[1]["content"][0]["type"] == "tool_use"
    assert blocks[2]["content"][0] == {"type": "tool_result", "tool_use_id": call.call_id,
                                       "content": "sun"}  # fmt: skip
    fake_anthropic.script(reply("Streamed words here."))
    events = list(c.responses.create(model="claude-3-5-haiku-latest", input="x", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Streamed words here."


def test_anthropic_refuses_a_raw_prompt(gateway_factory, fake_anthropic):
    gw = gateway_factory(anthropic_toml(fake_anthropic))
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).completions.create(model="claude-3-5-haiku-latest", prompt="Once upon")
    assert e.value.body["param"] == "model" and "no legacy completions" in e.value.body["message"]
    assert not fake_anthropic.requests


def test_responses_fall_back_to_the_next_target(gateway_factory, fake_anthropic, fake_openai):
    toml = (anthropic_toml(fake_anthropic) + openai_provider_toml(fake_openai)
            + '[routing]\naliases = { chat = ["claude:claude-3-5-haiku-latest", '
              '"fake:gpt-4o-mini"] }\n')  # fmt: skip
    gw = gateway_factory(toml)
    fake_anthropic.script(error(529, "overloaded_error", "busy"))
    raw = client(gw).responses.with_raw_response.create(model="chat", input="fall back")
    assert raw.headers["X-Hoosh-Provider"] == "fake"
    assert raw.parse().output_text == "Echo: fall back"
    # A raw prompt skips the Anthropic target (it has none) and is served by the next one.
    out = client(gw).completions.create(model="chat", prompt="legacy", max_tokens=4)
    assert out.choices[0].text == " Echo: legacy"
