"""The official openai SDK chats through the gateway to a fake Anthropic upstream."""

from __future__ import annotations

import json

import openai

from tests.fake_anthropic import API_KEY, FakeAnthropic, reply


def anthropic_toml(fake: FakeAnthropic) -> str:
    return f"""
[[providers]]
name = "claude"
type = "anthropic"
base_url = "{fake.url}"
api_key = "{API_KEY}"
models = ["claude-*"]
timeout_s = 5
"""


def test_openai_sdk_to_anthropic_streaming_and_not(gateway_factory):
    with FakeAnthropic() as fake:
        gw = gateway_factory(anthropic_toml(fake))
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        fake.script(reply("Paris is the capital."))
        r = client.chat.completions.with_raw_response.create(
            model="claude-3-5-haiku-latest",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Capital of France?"},
            ],  # fmt: skip
            max_tokens=50,
        )
        c = r.parse()
        assert c.choices[0].message.content == "Paris is the capital."
        assert c.usage.prompt_tokens == 12 and c.usage.completion_tokens == 7
        assert r.headers["X-Hoosh-Provider"] == "claude"
        sent = fake.requests[-1].body
        assert sent["system"] == "Be brief." and sent["max_tokens"] == 50
        assert fake.requests[-1].headers["anthropic-version"] == "2023-06-01"

        fake.script(reply("Streamed answer here."))
        chunks = list(client.chat.completions.create(
            model="claude-3-5-haiku-latest", messages=[{"role": "user", "content": "hi"}],
            stream=True, stream_options={"include_usage": True}))  # fmt: skip
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == "Streamed answer here."
        assert len({ch.id for ch in chunks}) == 1
        assert chunks[-1].usage.completion_tokens == 7


def test_openai_sdk_tool_call_through_anthropic(gateway_factory):
    with FakeAnthropic() as fake:
        gw = gateway_factory(anthropic_toml(fake))
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        fake.script(reply(None, tool_uses=[("get_weather", {"city": "Oslo"})]))
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
        chunks = list(client.chat.completions.create(
            model="claude-3-5-haiku-latest", tools=tools, stream=True,
            messages=[{"role": "user", "content": "Weather in Oslo?"}]))  # fmt: skip
        args = "".join(ch.choices[0].delta.tool_calls[0].function.arguments or ""
                       for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls)  # fmt: skip
        assert json.loads(args) == {"city": "Oslo"}
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and
                ch.choices[0].finish_reason] == ["tool_calls"]  # fmt: skip
        assert fake.requests[-1].body["tools"][0]["name"] == "get_weather"
