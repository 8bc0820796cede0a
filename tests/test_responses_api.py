"""OpenAI's Responses API through the gateway process, with the official SDK: a fake cloud and
SmolLM2 on the box; stored responses across a restart and per key; what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import openai
import pytest
import requests

from tests.conftest import openai_provider_toml, require, require_module

require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")
SMOLLM2 = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
require(SMOLLM2.exists(), "SmolLM2 is not pulled (hoosh-edge models pull smollm2)")

LOCAL = f'[local.llm]\nn_threads = 1\nn_ctx = 2048\n[local.llm.models]\nsmollm2 = "{SMOLLM2}"\n'
KEYS = ["hk-responses-key-one-0000000001", "hk-responses-key-two-0000000002"]
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}  # fmt: skip
ORDER = ["response.created", "response.in_progress", "response.output_item.added",
         "response.content_part.added", "response.output_text.delta"]  # fmt: skip
CLOSING = ["response.output_text.done", "response.content_part.done",
           "response.output_item.done"]  # fmt: skip


def client(gw, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture
def cloud(gateway_factory, fake_openai):
    return gateway_factory(openai_provider_toml(fake_openai)), fake_openai


def last_chat(fake) -> dict:
    return [r["json"] for r in fake.requests if r["path"].endswith("/chat/completions")][-1]


def check_stream(events: list) -> str:
    """The semantic events in OpenAI's order, numbered 0, 1, 2 ...; the text the deltas make."""
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:5] == ORDER, kinds
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert kinds[kinds.index("response.output_text.done") :] == [*CLOSING, kinds[-1]]
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == "".join(deltas)
    final = events[-1].response
    assert final.output_text == done.text and final.usage.output_tokens > 0
    return done.text


def test_text_answer_from_the_cloud(cloud):
    gw, fake = cloud
    resp = client(gw).responses.create(model="gpt-4o-mini", input="hello there",
                                       instructions="Be brief.", max_output_tokens=50,
                                       metadata={"who": "test"}, user="u-1")  # fmt: skip
    assert resp.output_text == "Echo: hello there"
    assert resp.status == "completed" and resp.object == "response"
    assert resp.id.startswith("resp_") and resp.metadata == {"who": "test"}
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens == 3
    sent = last_chat(fake)
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello there"}]  # fmt: skip
    assert sent["max_tokens"] == 50 and sent["user"] == "u-1"


def test_stream_from_the_cloud(cloud):
    gw, _ = cloud
    events = list(client(gw).responses.create(model="gpt-4o-mini", input="one two three",
                                              stream=True))  # fmt: skip
    assert check_stream(events) == "Echo: one two three"
    assert events[-1].type == "response.completed"


def test_function_call_and_its_output_continue_by_previous_response_id(cloud):
    gw, fake = cloud
    c = client(gw)
    fake.script("tool_call")
    first = c.responses.create(model="gpt-4o-mini", input="Weather in Paris?",
                               tools=[WEATHER_TOOL])  # fmt: skip
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    sent = last_chat(fake)
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    second = c.responses.create(
        model="gpt-4o-mini", previous_response_id=first.id, tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
    )  # fmt: skip
    assert second.status == "completed" and second.previous_response_id == first.id
    msgs = last_chat(fake)["messages"]
    assert msgs[0] == {"role": "user", "content": "Weather in Paris?"}
    assert msgs[1]["role"] == "assistant"
    assert msgs[1]["tool_calls"][0]["id"] == calls[0].call_id
    assert msgs[2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "sunny"}


def test_streamed_function_call_events(cloud):
    gw, fake = cloud
    fake.script("tool_call")
    events = list(client(gw).responses.create(model="gpt-4o-mini", input="Weather?",
                                              tools=[WEATHER_TOOL], stream=True))  # fmt: skip
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert done.arguments == args and json.loads(args) == {"city": "Paris"}
    assert kinds.index("response.output_item.added") < kinds.index(
        "response.function_call_arguments.delta") < kinds.index("response.output_item.done")  # fmt: skip
    final = events[-1].response
    assert final.output[0].type == "function_call" and final.output[0].name == "get_weather"


def test_local_text_stream_and_json_schema(gateway_factory):
    gw = gateway_factory(LOCAL)
    c = client(gw)
    resp = c.responses.create(model="smollm2", input="Say hello.", max_output_tokens=12,
                              temperature=0)  # fmt: skip
    assert resp.output_text.strip() and resp.status in ("completed", "incomplete")
    assert resp.usage.input_tokens > 5 and 0 < resp.usage.output_tokens <= 12
    events = list(c.responses.create(model="smollm2", input="Count to three.",
                                     max_output_tokens=12, stream=True))  # fmt: skip
    assert check_stream(events).strip()
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer", "minimum": 0,
                                                       "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}  # fmt: skip
    out = c.responses.create(
        model="smollm2", input="Give a person as JSON.", max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "person", "schema": schema,
                         "strict": True}},
    )  # fmt: skip
    jsonschema.validate(json.loads(out.output_text), schema)


def test_previous_response_id_survives_a_kill_and_restart(gateway_factory, tmp_path):
    data = tmp_path / "books"
    toml = f'[server]\ndata_dir = "{data}"\n' + LOCAL
    gw = gateway_factory(toml)
    first = client(gw).responses.create(model="smollm2", input="My name is Ada.",
                                        max_output_tokens=8)  # fmt: skip
    gw.kill9()  # not even a clean stop: the stored response is on disk already
    gw2 = gateway_factory(toml)
    c = client(gw2)
    again = c.responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == first.output_text
    second = c.responses.create(model="smollm2", input="What is my name?",
                                previous_response_id=first.id, max_output_tokens=8)  # fmt: skip
    assert second.previous_response_id == first.id
    items = c.responses.input_items.list(second.id)
    assert [i.content[0].text for i in items.data] == ["What is my name?"]
    # The second call's prompt held the first exchange: more input tokens than the question.
    assert second.usage.input_tokens > first.usage.input_tokens + 5


def test_stored_responses_are_per_key_and_deletable(gateway_factory, fake_openai):
    keys = ", ".join(f'"{k}"' for k in KEYS)
    gw = gateway_factory(f"[server]\napi_keys = [{keys}]\n" + openai_provider_toml(fake_openai))
    mine, theirs = client(gw, KEYS[0]), client(gw, KEYS[1])
    resp = mine.responses.create(model="gpt-4o-mini", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"}])  # fmt: skip
    assert resp.output_text == "Echo: second"
    assert mine.responses.retrieve(resp.id).output_text == "Echo: second"
    listed = mine.responses.input_items.list(resp.id, order="asc")
    assert [i.role for i in listed.data] == ["user", "assistant", "user"]
    assert mine.responses.input_items.list(resp.id, limit=1).data[0].content[0].text == "second"
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model="gpt-4o-mini", input="x", previous_response_id=resp.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(resp.id)
    mine.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        mine.responses.retrieve(resp.id)
    unstored = mine.responses.create(model="gpt-4o-mini", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        mine.responses.retrieve(unstored.id)


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type"),
    ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
    ({"background": True}, "background"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": 5}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"previous_response_id": "resp_nope"}, "previous_response_id"),
    ({"frobnicate": 1}, "frobnicate"),
])  # fmt: skip
def test_refused_with_the_param_named(cloud, body, param):
    gw, fake = cloud
    sent = {"model": "gpt-4o-mini", "input": "hi", **body}
    r = requests.post(gw.url + "/v1/responses", json=sent, timeout=10)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    assert not [x for x in fake.requests if x["path"].endswith("/chat/completions")]


def test_garbage_bodies_get_4xx(cloud):
    gw, _ = cloud
    for raw in (b"[]", b'"x"', b"{", b'{"model": "gpt-4o-mini", "input": [null]}',
                b'{"model": "gpt-4o-mini", "input": [{"type": "message", "role": "user"}]}'):  # fmt: skip
        r = requests.post(gw.url + "/v1/responses", data=raw, timeout=10,
                          headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 400, (raw, r.text)
        assert r.json()["error"]["message"]
    r = requests.get(gw.url + "/v1/responses/resp_missing/input_items?limit=500", timeout=10)
    assert r.status_code == 404


def test_sdk_stream_helper_and_stored_stream(cloud):
    gw, _ = cloud
    c = client(gw)
    with c.responses.stream(model="gpt-4o-mini", input="helper words") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == final.output_text == "Echo: helper words"
    assert c.responses.retrieve(final.id).output_text == "Echo: helper words"  # streamed, stored


def test_sdk_parse_into_a_model_on_smollm2(gateway_factory):
    pydantic = require_module("pydantic", "pydantic comes with the openai SDK")

    class City(pydantic.BaseModel):
        name: str
        population: int

    gw = gateway_factory(LOCAL)
    parsed = client(gw).responses.parse(model="smollm2", input="A city as JSON.",
                                        text_format=City, max_output_tokens=200)  # fmt: skip
    city = parsed.output_parsed
    assert isinstance(city, City) and isinstance(city.population, int)
