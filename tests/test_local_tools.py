"""Tool calls and structured output on an on-device model, framing through the gateway process.

The tiny synthetic GGUF writes noise, so what holds here is what the grammar and the framing
promise whatever the model wants: the calls' shape, their ids, schema-valid arguments, the
stream's order of deltas, the 400s of what the grammar cannot enforce, the fallback.
"""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import jsonschema
import openai
import pytest
import requests

from tests.conftest import openai_provider_toml, require_module
from tests.synth_gguf import make_tiny_gguf

require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"enum": ["C", "F"]},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
CLOCK = {"type": "object", "properties": {"zone": {"type": "integer", "minimum": -12,
                                                   "maximum": 14}}, "required": ["zone"]}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": CLOCK}},
]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", n_ctx_train=4096)


def local_toml(path: Path, n_ctx: int = 4096) -> str:
    return f'[local.llm]\nn_threads = 1\nn_ctx = {n_ctx}\n[local.llm.models]\ntiny = "{path}"\n'


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)


def check_calls(calls, names=SCHEMAS) -> None:
    assert calls, "no tool call"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({c.id for c in calls}) == len(calls)


def test_required_and_named_calls_validate_and_stream_as_openai_does(tiny, gateway_factory):
    c = client(gateway_factory(local_toml(tiny)))
    for seed in (1, 2, 3):
        r = c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, seed=seed,
                                      tool_choice="required", max_tokens=300,
                                      parallel_tool_calls=False)  # fmt: skip
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        check_calls(choice.message.tool_calls)
    # Parallel calls: this model never ends by itself; it writes calls until one repeats an
    # earlier one (that one is not sent) or the token limit cuts one.
    for seed in (4, 5):
        r = c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, seed=seed,
                                      tool_choice="required", max_tokens=400)  # fmt: skip
        calls = r.choices[0].message.tool_calls
        finish = r.choices[0].finish_reason
        assert finish in ("tool_calls", "length")
        check_calls(calls if finish == "tool_calls" else calls[:-1])
        sent = [(x.function.name, x.function.arguments) for x in calls]
        assert len(set(sent)) == len(sent)
    named = {"type": "function", "function": {"name": "get_time"}}
    r = c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice=named,
                                  max_tokens=300, parallel_tool_calls=False)  # fmt: skip
    calls = r.choices[0].message.tool_calls
    check_calls(calls, {"get_time"})
    assert len(calls) == 1 and r.choices[0].finish_reason == "tool_calls"

    chunks = list(c.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=300,
        stream=True, seed=5, parallel_tool_calls=False, stream_options={"include_usage": True}))  # fmt: skip
    deltas = [ch.choices[0] for ch in chunks if ch.choices]
    first = deltas[0].delta.tool_calls[0]
    assert deltas[0].delta.role == "assistant"
    assert (first.index, first.type, first.function.arguments) == (0, "function", "")
    assert first.id.startswith("call_") and first.function.name in SCHEMAS
    fragments = [d.delta.tool_calls[0] for d in deltas[1:] if d.delta.tool_calls]
    assert len(fragments) > 2  # arguments arrive token by token, not at the end
    assert all(f.id is None and f.function.name is None for f in fragments if f.index == 0)
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["tool_calls"]
    assert deltas[-1].finish_reason == "tool_calls" and chunks[-1].usage.completion_tokens > 0
    args = "".join(f.function.arguments for f in fragments if f.index == 0)
    jsonschema.validate(json.loads(args), SCHEMAS[first.function.name])


def test_parallel_false_is_one_call_and_auto_is_text_or_calls(tiny, gateway_factory):
    c = client(gateway_factory(local_toml(tiny)))
    for seed in range(4):
        r = c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, seed=seed,
                                      tool_choice="required", parallel_tool_calls=False,
                                      max_tokens=300)  # fmt: skip
        assert len(r.choices[0].message.tool_calls) == 1
    for seed in range(6):
        r = c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, seed=seed,
                                      max_tokens=40)  # fmt: skip
        msg = r.choices[0].message
        if msg.tool_calls:
            assert r.choices[0].finish_reason in ("tool_calls", "length")
        else:  # text: the grammar keeps it from opening like a call
            assert msg.content and msg.content[0] not in "< \n\t"
            assert r.choices[0].finish_reason == "length"
    r = c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="none",
                                  max_tokens=8)  # fmt: skip
    assert r.choices[0].message.tool_calls is None and len(r.choices[0].message.content) == 8


def test_tool_result_turns_render_and_are_answered(tiny, gateway_factory):
    c = client(gateway_factory(local_toml(tiny)))
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 2}'}}  # fmt: skip
    turns = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "tool_call_id": "call_1", "content": "-3 C, snow"}]  # fmt: skip
    with_result = c.chat.completions.create(model="tiny", messages=turns, tools=TOOLS,
                                            tool_choice="none", max_tokens=4)  # fmt: skip
    without = c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS,
                                        tool_choice="none", max_tokens=4)  # fmt: skip
    assert with_result.choices[0].message.content and with_result.choices[0].finish_reason
    # The call and its result are in the prompt: the call block, the response block, the text.
    extra = len('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}'
                '\n</tool_call>') + len("-3 C, snow")  # fmt: skip
    grown = with_result.usage.prompt_tokens - without.usage.prompt_tokens
    assert grown > extra  # byte tokens: at least one per character of the two blocks


def test_structured_output_and_what_the_grammar_cannot_enforce(tiny, gateway_factory):
    gw = gateway_factory(local_toml(tiny))
    c = client(gw)
    schema = {"type": "object", "properties": {
        "level": {"type": "integer", "minimum": 3, "exclusiveMaximum": 7},
        "mood": {"enum": ["ok", "meh"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
        "inner": {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]},
    }, "required": ["level", "mood", "tags", "inner"]}  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    for seed in range(3):
        r = c.chat.completions.create(model="tiny", messages=ASK, response_format=fmt,
                                      seed=seed, max_tokens=400)  # fmt: skip
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = c.chat.completions.create(model="tiny", messages=ASK, max_tokens=600, seed=1,
                                  response_format={"type": "json_object"})  # fmt: skip
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.startswith("{")
    bad = [
        ("response_format", {"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "number", "minimum": 0}}}}, "minimum"),
        ("response_format", {"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"oneOf": [{"type": "string"}]}}}}, "oneOf"),
        ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"s": {"type": "string", "format": "email"}}}}}]},
         "email"),
        ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "required": ["x"]}}}]}, "'x'"),
        ("tool_choice", {"tools": TOOLS, "tool_choice": {"type": "function",
                                                         "function": {"name": "nope"}}}, "nope"),
    ]  # fmt: skip
    for param, extra, word in bad:
        body = {"model": "tiny", "messages": ASK, **extra}
        for stream in (False, True):
            r = requests.post(gw.url + "/v1/chat/completions", json={**body, "stream": stream},
                              timeout=30)  # fmt: skip
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["param"] == param and word in err["message"], err
            assert err["type"] == "invalid_request_error"
    assert c.chat.completions.create(model="tiny", messages=ASK, max_tokens=2).choices


def test_anthropic_sdk_calls_a_local_tool(tiny, gateway_factory):
    gw = gateway_factory(local_toml(tiny))
    a = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
    msg = a.messages.create(model="tiny", max_tokens=300, tools=tools, messages=ASK,
                            tool_choice={"type": "any", "disable_parallel_tool_use": True})  # fmt: skip
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert msg.stop_reason == "tool_use" and uses and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER)
    with a.messages.stream(model="tiny", max_tokens=300, tools=tools, messages=ASK,
                           tool_choice={"type": "tool", "name": "get_weather",
                                        "disable_parallel_tool_use": True}) as s:  # fmt: skip
        events = [e.type for e in s]
        final = s.get_final_message()
    assert "input_json" in events and final.stop_reason == "tool_use"
    block = next(b for b in final.content if b.type == "tool_use")
    jsonschema.validate(block.input, WEATHER)
    # A tool_result turn goes back to the model as the tool's result.
    follow = a.messages.create(model="tiny", max_tokens=5, tools=tools, messages=[
        *ASK, {"role": "assistant", "content": [block.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id,
                                      "content": "sunny"}]}],
        tool_choice={"type": "none"})  # fmt: skip
    assert follow.content[0].type == "text" and follow.stop_reason == "max_tokens"
    # Counting tokens on a local model counts the tools too, as the model is shown them.
    bare = a.messages.count_tokens(model="tiny", messages=ASK).input_tokens
    shown = a.messages.count_tokens(model="tiny", messages=ASK, tools=tools).input_tokens
    assert shown > bare + len(json.dumps(WEATHER))
    bad = [{"name": "f", "input_schema": {"type": "object", "properties": {
        "n": {"type": "number", "maximum": 3}}}}]  # fmt: skip
    with pytest.raises(anthropic.BadRequestError) as e:
        a.messages.create(model="tiny", max_tokens=5, tools=bad, messages=ASK)
    assert e.value.body["type"] == "error" and "maximum" in e.value.body["error"]["message"]
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_tool_request_too_long_for_the_local_context_falls_back(tiny, fake_openai,
                                                                gateway_factory):  # fmt: skip
    cfg = (
        local_toml(tiny, n_ctx=1024)
        + openai_provider_toml(fake_openai)
        + """
[routing]
aliases = { chat = ["local:tiny", "fake:gpt-4o-mini"] }
"""
    )
    c = client(gateway_factory(cfg))
    long = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                              "description": "Weather. " * 150}}]  # fmt: skip
    r = c.chat.completions.with_raw_response.create(model="chat", messages=ASK, tools=long,
                                                    tool_choice="required")  # fmt: skip
    assert r.headers["X-Hoosh-Provider"] == "fake"
    sent = fake_openai.chat_requests[-1]["json"]
    assert sent["tools"] == long and sent["tool_choice"] == "required"
    short = c.chat.completions.with_raw_response.create(model="chat", messages=ASK, tools=TOOLS[:1],
                                                        tool_choice="required", max_tokens=150,
                                                        parallel_tool_calls=False)  # fmt: skip
    assert short.headers["X-Hoosh-Provider"] == "local"
    check_calls(short.parse().choices[0].message.tool_calls)
