"""Tool calls and structured output on SmolLM2 through the gateway, with the openai and
anthropic SDKs. A 135M model: the tests assert structure and schema validity, not wisdom."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import jsonschema
import openai
import pytest
import requests

from tests.conftest import require, require_module

require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")

SMOLLM2 = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
}
TIMER = {"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1,
                                                      "maximum": 90}}, "required": ["minutes"]}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                      "description": "The weather forecast of a city"}},
    {"type": "function", "function": {"name": "start_timer", "parameters": TIMER,
                                      "description": "Start a kitchen timer"}},
]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "start_timer": TIMER}
ASK = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]
pytestmark = pytest.mark.slow


@pytest.fixture
def gw(gateway_factory):
    require(SMOLLM2.exists(), "SmolLM2 is not pulled (hoosh-edge models pull smollm2)")
    return gateway_factory(
        f'[local.llm]\nn_ctx = 2048\n[local.llm.models]\nsmollm2 = "{SMOLLM2}"\n'
    )


def valid(calls, names=tuple(SCHEMAS)) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def streamed(c: openai.OpenAI, **kw) -> tuple[list, str | None]:
    """The streamed tool calls, joined, and the finish reason."""
    calls: dict[int, dict] = {}
    finish = None
    live = {"Cache-Control": "no-cache"}  # generated now, not replayed from the cache
    for chunk in c.chat.completions.create(model="smollm2", stream=True, extra_headers=live, **kw):
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or ():
                if tc.id:  # the first delta of a call: id, type and name, arguments ""
                    assert tc.index not in calls and tc.type == "function"
                    assert tc.function.name and tc.function.arguments == ""
                    calls[tc.index] = {"id": tc.id, "name": tc.function.name, "args": ""}
                else:
                    calls[tc.index]["args"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    out = [openai.types.chat.ChatCompletionMessageToolCall(
        id=v["id"], type="function", function={"name": v["name"], "arguments": v["args"]})
        for _, v in sorted(calls.items())]  # fmt: skip
    return out, finish


def test_every_tool_choice_streamed_and_not(gw):
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    base = {"messages": ASK, "tools": TOOLS, "max_tokens": 120, "temperature": 0}
    r = c.chat.completions.create(model="smollm2", tool_choice="required", **base)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    valid(r.choices[0].message.tool_calls)
    calls, finish = streamed(c, tool_choice="required", **base)
    assert finish == "tool_calls"
    valid(calls)
    named = {"type": "function", "function": {"name": "start_timer"}}
    for parallel in (False, True):
        r = c.chat.completions.create(model="smollm2", tool_choice=named,
                                      parallel_tool_calls=parallel, **base)  # fmt: skip
        valid(r.choices[0].message.tool_calls, ("start_timer",))
        if not parallel:
            assert len(r.choices[0].message.tool_calls) == 1
    calls, finish = streamed(c, tool_choice=named, parallel_tool_calls=False, **base)
    assert finish == "tool_calls" and len(calls) == 1
    valid(calls, ("start_timer",))
    for stream in (False, True):  # auto: text or calls, whichever, well formed
        if stream:
            calls, finish = streamed(c, **base)
        else:
            r = c.chat.completions.create(model="smollm2", **base)
            calls, finish = r.choices[0].message.tool_calls, r.choices[0].finish_reason
        if calls:
            valid(calls)
            assert finish == "tool_calls"
        else:
            assert finish in ("stop", "length")
    r = c.chat.completions.create(model="smollm2", tool_choice="none", **base)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


def test_the_model_answers_from_a_tool_result(gw):
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    first = c.chat.completions.create(model="smollm2", messages=ASK, tools=TOOLS, max_tokens=120,
                                      tool_choice="required", temperature=0)  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    turns = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 31 degrees Celsius"}]  # fmt: skip
    r = c.chat.completions.create(model="smollm2", messages=turns, tools=TOOLS, max_tokens=60,
                                  tool_choice="none", temperature=0)  # fmt: skip
    assert "31" in r.choices[0].message.content, r.choices[0].message.content
    # The call and its result are in the prompt: longer than the bare question's.
    bare = c.chat.completions.create(model="smollm2", messages=ASK, tools=TOOLS, max_tokens=1,
                                     tool_choice="none")  # fmt: skip
    assert r.usage.prompt_tokens > bare.usage.prompt_tokens + 20


def test_json_schema_enums_bounds_nesting_and_arrays(gw):
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 30},
            "color": {"type": "string", "enum": ["red", "green", "yellow"]},
            "weight_g": {"type": "integer", "minimum": 50, "maximum": 400},
            "origin": {"type": "object", "properties": {
                "country": {"type": "string", "maxLength": 30},
                "organic": {"type": "boolean"}}, "required": ["country", "organic"],
                "additionalProperties": False},
            "uses": {"type": "array", "items": {"type": "string", "maxLength": 20},
                     "minItems": 1, "maxItems": 3},
            "rating": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 5},
                                 {"type": "null"}]},
        },
        "required": ["name", "color", "weight_g", "origin", "uses", "rating"],
        "additionalProperties": False,
    }  # fmt: skip
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "fruit", "schema": schema, "strict": True},
    }
    msgs = [{"role": "user", "content": "Describe an apple as JSON."}]
    for temperature in (0, 1):
        r = c.chat.completions.create(model="smollm2", messages=msgs, response_format=fmt,
                                      max_tokens=300, temperature=temperature, seed=7)  # fmt: skip
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="smollm2", messages=msgs, response_format=fmt, max_tokens=300, stream=True,
        temperature=0) if ch.choices)  # fmt: skip
    jsonschema.validate(json.loads(text), schema)
    r = c.chat.completions.create(model="smollm2", max_tokens=200, temperature=0, messages=[
        {"role": "user", "content": "Give the name and the color of an apple as JSON."}],
        response_format={"type": "json_object"})  # fmt: skip
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    bad = {**schema, "properties": {**schema["properties"], "weight_g": {
        "type": "integer", "multipleOf": 5}}}  # fmt: skip
    r = requests.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "smollm2", "messages": msgs,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": bad}}})  # fmt: skip
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "response_format" and "multipleOf" in err["message"]
    assert "properties.weight_g" in err["message"]


def test_anthropic_sdk_tool_use_on_smollm2(gw):
    a = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    tools = [{"name": "get_weather", "description": "The weather forecast of a city",
              "input_schema": WEATHER}]  # fmt: skip
    msg = a.messages.create(model="smollm2", max_tokens=150, tools=tools, messages=ASK,
                            tool_choice={"type": "any"}, extra_body={"temperature": 0})  # fmt: skip
    assert msg.stop_reason == "tool_use"
    use = next(b for b in msg.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.id
    jsonschema.validate(use.input, WEATHER)
    with a.messages.stream(model="smollm2", max_tokens=150, tools=tools, messages=ASK,
                           tool_choice={"type": "tool", "name": "get_weather"}) as s:  # fmt: skip
        deltas = [e.delta.partial_json for e in s
                  if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]  # fmt: skip
        final = s.get_final_message()
    assert len(deltas) > 1 and final.stop_reason == "tool_use"
    jsonschema.validate(next(b for b in final.content if b.type == "tool_use").input, WEATHER)
    follow = a.messages.create(model="smollm2", max_tokens=60, tools=tools,
                               extra_body={"temperature": 0},
                               tool_choice={"type": "none"}, messages=[
        *ASK, {"role": "assistant", "content": [use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "Rain, 12 degrees Celsius"}]}])  # fmt: skip
    assert follow.content[0].type == "text" and "12" in follow.content[0].text
