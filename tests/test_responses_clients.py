"""Clients built on the Responses API, through the gateway process: LangChain's ChatOpenAI in
Responses mode and one OpenAI Agents SDK run with one tool, on a fake cloud and on SmolLM2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import openai_provider_toml, require, require_module

require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")
langchain_openai = require_module("langchain_openai", "langchain-openai is not installed")
agents = require_module("agents", "openai-agents is not installed")
SMOLLM2 = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
require(SMOLLM2.exists(), "SmolLM2 is not pulled (hoosh-edge models pull smollm2)")
LOCAL = f'[local.llm]\nn_threads = 1\nn_ctx = 2048\n[local.llm.models]\nsmollm2 = "{SMOLLM2}"\n'

agents.set_tracing_disabled(True)  # the SDK would otherwise export traces to OpenAI


def chat_model(gw, model: str, **kw):
    return langchain_openai.ChatOpenAI(model=model, base_url=gw.url + "/v1", api_key="x",
                                       use_responses_api=True, max_retries=0, **kw)  # fmt: skip


# The provider gets the request translated to chat, or as it came (responses_api).
PASSTHROUGH = pytest.mark.parametrize("extra", ["", "responses_api = true"], ids=["chat", "as-is"])


def upstream_tools(fake) -> list[dict]:
    last = fake.requests[-1]
    if last["path"].endswith("/responses"):
        return [t["name"] for t in last["json"]["tools"]]
    return [t["function"]["name"] for t in last["json"]["tools"]]


@PASSTHROUGH
def test_langchain_responses_mode_on_the_cloud(gateway_factory, fake_openai, extra):
    gw = gateway_factory(openai_provider_toml(fake_openai, extra=extra))
    llm = chat_model(gw, "gpt-4o-mini")
    msg = llm.invoke("hello langchain")
    assert msg.text == "Echo: hello langchain"
    assert msg.usage_metadata["output_tokens"] == 3
    assert msg.response_metadata["id"].startswith("resp_")
    streamed = "".join(chunk.text for chunk in llm.stream("one two"))
    assert streamed == "Echo: one two"
    fake_openai.script("tool_call")

    def get_weather(city: str) -> str:
        """Weather of a city."""
        return "sunny"

    called = llm.bind_tools([get_weather]).invoke("Weather in Paris?")
    assert called.tool_calls[0]["name"] == "get_weather"
    assert called.tool_calls[0]["args"] == {"city": "Paris"}
    assert upstream_tools(fake_openai) == ["get_weather"]
    assert bool(fake_openai.chat_requests) == (not extra)


def test_langchain_responses_mode_on_smollm2(gateway_factory):
    gw = gateway_factory(LOCAL)
    llm = chat_model(gw, "smollm2", max_tokens=10, temperature=0)
    msg = llm.invoke("Say hello.")
    assert msg.text.strip() and 0 < msg.usage_metadata["output_tokens"] <= 10
    assert "".join(c.text for c in llm.stream("Say hello.")).strip()


def _weather_agent(model):
    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"sunny in {city}"

    agent = agents.Agent(name="weather", instructions="Answer with the weather tool.",
                         tools=[get_weather], model=model,
                         model_settings=agents.ModelSettings(tool_choice="required"))  # fmt: skip
    return agent, seen


@PASSTHROUGH
def test_agents_sdk_run_with_one_tool_on_the_cloud(gateway_factory, fake_openai, extra):
    gw = gateway_factory(openai_provider_toml(fake_openai, extra=extra))
    client = agents.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    agent, seen = _weather_agent(agents.OpenAIResponsesModel("gpt-4o-mini", client))
    fake_openai.script("tool_call")
    result = agents.Runner.run_sync(agent, "Weather in Paris?", max_turns=3)
    assert seen == ["Paris"]
    assert result.final_output == "Echo: Weather in Paris?"
    last = fake_openai.requests[-1]["json"]
    if extra:  # as it came: the call and its output are input items
        assert last["input"][-1] == {"type": "function_call_output", "call_id": "call_1",
                                     "output": "sunny in Paris"}  # fmt: skip
        assert last["input"][-2]["type"] == "function_call"
    else:
        second = last["messages"]
        assert second[-1] == {"role": "tool", "tool_call_id": "call_1",
                              "content": "sunny in Paris"}  # fmt: skip
        assert second[-2]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("stream", [False, True])
def test_agents_sdk_run_with_one_tool_on_smollm2(gateway_factory, stream):
    gw = gateway_factory(LOCAL)
    client = agents.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    agent, seen = _weather_agent(agents.OpenAIResponsesModel("smollm2", client))
    agent.model_settings = agents.ModelSettings(tool_choice="required", max_tokens=300,
                                                temperature=0, parallel_tool_calls=False)  # fmt: skip
    # A 135M model given the tool again calls it again: the run ends with the tool's answer.
    agent.tool_use_behavior = "stop_on_first_tool"
    if stream:
        import asyncio

        async def run():
            result = agents.Runner.run_streamed(agent, "Weather in Paris?", max_turns=4)
            async for _ in result.stream_events():
                pass
            return result

        result = asyncio.run(run())
    else:
        result = agents.Runner.run_sync(agent, "Weather in Paris?", max_turns=4)
    # The model's one turn called the tool (grammar-constrained arguments the SDK parsed into
    # the function's own parameters); the tool's answer is the run's.
    assert len(seen) == 1 and isinstance(seen[0], str)
    assert result.final_output == f"sunny in {seen[0]}"
    assert result.raw_responses[0].output[0].type == "function_call"
    assert result.raw_responses[0].usage.input_tokens > 20
