"""POST /v1/messages with the official anthropic SDK, served by an OpenAI-compatible upstream, the
on-device model, or Anthropic itself: text, streams, tools, usage, errors, auth, cache, budget."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anthropic
import pytest
import requests

from tests.conftest import openai_provider_toml
from tests.fake_anthropic import API_KEY as ANTHROPIC_KEY
from tests.fake_anthropic import FakeAnthropic, reply
from tests.fake_openai import FakeOpenAI
from tests.synth_gguf import make_tiny_gguf

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def sdk(gw, api_key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=api_key, max_retries=0)


def fake_prompt_tokens(messages: list[dict]) -> int:
    """What tests/fake_openai.py counts as prompt tokens for the messages it received."""
    return sum(len(json.dumps(m)) // 4 for m in messages)


def sse_events(resp: requests.Response) -> list[tuple[str, dict]]:
    """(event name, data) of every event of an SSE body."""
    out, name = [], None
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[6:])))
            name = None
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", n_ctx_train=8192)


def local_toml(path: Path, *, max_queue: int = 4) -> str:
    return f"""
[local.llm]
n_threads = 1
n_ctx = 8192
max_queue = {max_queue}
[local.llm.models]
tiny = "{path}"
"""


# ---- an OpenAI-compatible upstream --------------------------------------------------------------


def test_create_with_system_prompt_and_real_usage(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    raw = sdk(gw).messages.with_raw_response.create(
        model="gpt-4o-mini",
        max_tokens=50,
        system="Be brief.",
        stop_sequences=["END"],
        metadata={"user_id": "u-42"},
        # This SDK version has no sampling arguments; the API still takes them in the body.
        extra_body={"temperature": 0.5, "top_k": 40, "top_p": 0.9},
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    )
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Echo: hello there"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.model == "gpt-4o-mini"
    sent = fake_openai.chat_requests[-1]["json"]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.5 and sent["top_p"] == 0.9
    assert sent["stop"] == ["END"] and sent["user"] == "u-42"
    assert "top_k" not in sent and "metadata" not in sent and "system" not in sent
    # The upstream's own counts reach the client.
    assert msg.usage.input_tokens == fake_prompt_tokens(sent["messages"])
    assert msg.usage.output_tokens == 3  # "Echo: hello there" is three words to the fake
    assert raw.headers["X-Hoosh-Provider"] == "fake"
    assert raw.headers["X-Hoosh-Model"] == "gpt-4o-mini"
    assert raw.headers["X-Request-Id"] == raw.headers["request-id"] == msg.id[4:]
    assert raw.request_id == raw.headers["X-Request-Id"]


def test_max_tokens_reached_and_system_blocks(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    msg = sdk(gw).messages.create(
        model="gpt-4o-mini",
        max_tokens=2,
        system=[{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}],
        messages=[{"role": "user", "content": "one two three four"}],
    )
    assert msg.stop_reason == "max_tokens"
    assert msg.content[0].text == "Echo: one" and msg.usage.output_tokens == 2
    sent = fake_openai.chat_requests[-1]["json"]
    assert sent["messages"][0] == {"role": "system", "content": "Rule one.\nRule two."}


def test_stream_text_and_final_message(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    with sdk(gw).messages.stream(
        model="gpt-4o-mini",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "stream me please"}],
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 4 and "".join(pieces) == "Echo: stream me please"
    assert final.content[0].text == "Echo: stream me please"
    assert final.stop_reason == "end_turn"
    sent = fake_openai.chat_requests[-1]["json"]
    assert final.usage.input_tokens == fake_prompt_tokens(sent["messages"])
    assert final.usage.output_tokens == 4


def test_stream_events_in_anthropic_order(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    r = requests.post(
        gw.url + "/v1/messages",
        stream=True,
        timeout=20,
        json={
            "model": "gpt-4o-mini",
            "max_tokens": 2,
            "stream": True,
            "messages": [{"role": "user", "content": "a b c"}],
        },
    )
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["X-Hoosh-Provider"] == "fake"
    events = sse_events(r)
    names = [n for n, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["model"]
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    delta = events[6][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 2


def test_tool_use_round_trip(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    client = sdk(gw)
    question = {"role": "user", "content": "Weather in Paris?"}
    fake_openai.script("tool_call")
    first = client.messages.create(
        model="gpt-4o-mini",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[question],
    )
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"} and use.id
    sent = fake_openai.chat_requests[-1]["json"]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "The weather in a city.",
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}

    # The client runs the tool and sends its result back, as Anthropic's docs show.
    second = client.messages.create(
        model="gpt-4o-mini",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "18 C, sunny"},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn" and second.content[0].text == "Echo: Thanks"
    sent = fake_openai.chat_requests[-1]["json"]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": use.id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "18 C, sunny"}
    assert sent[3] == {"role": "user", "content": "Thanks"}


def test_streamed_tool_use(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("tool_call")
    with sdk(gw).messages.stream(
        model="gpt-4o-mini",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert kinds.count("content_block_start") == 1 and "input_json" in kinds
    assert final.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in final.content] == [
        ("tool_use", "get_weather", {"city": "Paris"})
    ]
    assert fake_openai.chat_requests[-1]["json"]["tool_choice"] == "required"


def test_image_blocks_become_image_url_parts(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    sdk(gw).messages.create(
        model="gpt-4o-mini",
        max_tokens=20,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                    },
                    {"type": "text", "text": "What are these?"},
                ],
            }
        ],
    )
    parts = fake_openai.chat_requests[-1]["json"]["messages"][0]["content"]
    assert parts == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What are these?"},
    ]


# ---- errors in Anthropic's shape ----------------------------------------------------------------


def test_missing_max_tokens_is_400_invalid_request(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    with pytest.raises(anthropic.BadRequestError) as info:
        # messages.create() insists on max_tokens itself: post the body through the SDK's client.
        sdk(gw).post(
            "/v1/messages",
            cast_to=anthropic.types.Message,
            body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert info.value.status_code == 400
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    assert fake_openai.chat_requests == []
    # The same for a malformed body and a bad content block.
    json_type = {"Content-Type": "application/json"}
    r = requests.post(gw.url + "/v1/messages", data=b"{nope", headers=json_type, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = requests.post(
        gw.url + "/v1/messages",
        timeout=10,
        json={
            "model": "gpt-4o-mini",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
        },
    )
    assert r.status_code == 400 and "messages.0.content.0" in r.json()["error"]["message"]


def test_unknown_model_is_404_not_found(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    with pytest.raises(anthropic.NotFoundError) as info:
        sdk(gw).messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in info.value.body["error"]["message"]


def test_upstream_cut_mid_stream_is_an_error_event(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("cut", 3)  # two words, then the upstream drops the connection
    r = requests.post(
        gw.url + "/v1/messages",
        stream=True,
        timeout=20,
        json={
            "model": "gpt-4o-mini",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "one two three four five"}],
        },
    )
    assert r.status_code == 200
    events = sse_events(r)
    assert events[0][0] == "message_start"
    assert [n for n, _ in events].count("content_block_delta") == 2
    name, data = events[-1]
    assert name == "error" and data["type"] == "error"
    assert data["error"]["type"] == "api_error" and data["error"]["message"]
    assert "message_stop" not in [n for n, _ in events]
    # The SDK raises it as an API error.
    fake_openai.script("cut", 3)
    with pytest.raises(anthropic.APIStatusError):
        with sdk(gw).messages.stream(
            model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "a b c d"}]
        ) as s:
            s.get_final_message()


def test_api_keys_with_x_api_key(fake_openai, gateway_factory):
    key = "client-key-for-messages-0123456789"
    gw = gateway_factory(f'[server]\napi_keys = ["{key}"]\n' + openai_provider_toml(fake_openai))
    with pytest.raises(anthropic.AuthenticationError) as info:
        sdk(gw, api_key="wrong-key-0123456789").messages.create(
            model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 401
    assert info.value.body["error"]["type"] == "authentication_error"
    msg = sdk(gw, api_key=key).messages.create(
        model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.content[0].text == "Echo: hi"
    r = requests.post(
        gw.url + "/v1/messages",
        headers={"x-api-key": key},
        timeout=10,
        json={
            "model": "gpt-4o-mini",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "raw"}],
        },
    )
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "Echo: raw"
    assert len(fake_openai.chat_requests) == 2  # the refused request never went upstream


def test_budget_refusal_is_429_rate_limit(fake_openai, gateway_factory):
    gw = gateway_factory(
        openai_provider_toml(fake_openai)
        + """
[[budgets]]
name = "nothing"
scope = "cloud"
metric = "usd"
limit = 0
period = "day"
action = "block"
"""
    )
    with pytest.raises(anthropic.RateLimitError) as info:
        sdk(gw).messages.create(
            model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert "nothing" in info.value.body["error"]["message"]
    assert fake_openai.chat_requests == []


def test_deterministic_answers_come_from_the_cache(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    client = sdk(gw)
    kw = {
        "model": "gpt-4o-mini",
        "max_tokens": 20,
        "extra_body": {"temperature": 0},
        "messages": [{"role": "user", "content": "cache me"}],
    }
    first = client.messages.with_raw_response.create(**kw)
    second = client.messages.with_raw_response.create(**kw)
    assert first.headers["X-Hoosh-Cache"] == "MISS" and second.headers["X-Hoosh-Cache"] == "HIT"
    a, b = first.parse(), second.parse()
    assert a.content == b.content and a.usage == b.usage and a.id != b.id
    with client.messages.stream(**kw) as stream:  # a stream replays the stored answer too
        assert "".join(stream.text_stream) == "Echo: cache me"
        assert stream.get_final_message().usage.output_tokens == a.usage.output_tokens
    assert len(fake_openai.chat_requests) == 1


# ---- the on-device model ------------------------------------------------------------------------


def test_local_model_create_and_stream(tiny, gateway_factory):
    gw = gateway_factory(local_toml(tiny))
    client = sdk(gw)
    raw = client.messages.with_raw_response.create(
        model="tiny",
        max_tokens=8,
        system="You are tiny.",
        messages=[{"role": "user", "content": "hello"}],
    )
    msg = raw.parse()
    assert raw.headers["X-Hoosh-Provider"] == "local" and msg.model == "tiny"
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 8
    assert msg.usage.input_tokens > 0 and msg.content[0].type == "text"
    with client.messages.stream(
        model="tiny", max_tokens=12, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 12
    assert final.usage.input_tokens > 0


def test_local_stop_sequence_is_reported_as_such(tiny, gateway_factory):
    """A stop string the local engine matched is `stop_reason: stop_sequence`, naming it."""
    gw = gateway_factory(local_toml(tiny))
    client = sdk(gw)
    msgs = [{"role": "user", "content": "hello"}]
    full = client.messages.create(
        model="tiny", max_tokens=30, extra_body={"temperature": 0}, messages=msgs
    )
    text = full.content[0].text
    stop = next(text[i : i + 2] for i in range(4, len(text) - 1) if text[i : i + 2].strip())
    msg = client.messages.create(model="tiny", max_tokens=30, extra_body={"temperature": 0}, messages=msgs,
                                 stop_sequences=["\x00never", stop])  # fmt: skip
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == stop
    assert msg.content[0].text == text[: text.index(stop)]
    with client.messages.stream(model="tiny", max_tokens=30, extra_body={"temperature": 0}, messages=msgs,
                                stop_sequences=[stop]) as stream:  # fmt: skip
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    plain = client.messages.create(model="tiny", max_tokens=5, extra_body={"temperature": 0}, messages=msgs,
                                   stop_sequences=["\x00never"])  # fmt: skip
    assert plain.stop_reason == "max_tokens" and plain.stop_sequence is None


def test_busy_local_model_is_529_overloaded(tiny, gateway_factory):
    gw = gateway_factory(local_toml(tiny, max_queue=0))
    long = requests.post(
        gw.url + "/v1/messages",
        stream=True,
        timeout=60,
        json={
            "model": "tiny",
            "max_tokens": 6000,
            "stream": True,
            "temperature": 0,
            "messages": [{"role": "user", "content": "go"}],
        },
    )
    lines = long.iter_lines()  # kept referenced: a collected iterator closes the connection
    next(x for x in lines if x.startswith(b"event: content_block_delta"))
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk(gw).messages.create(
            model="tiny", max_tokens=5, messages=[{"role": "user", "content": "me too"}]
        )
    assert info.value.status_code == 529 and isinstance(info.value, anthropic.OverloadedError)
    assert info.value.body["error"]["type"] == "overloaded_error"
    assert info.value.response.headers["Retry-After"].isdigit()
    long.close()  # the client goes away: the model stops and is free for the next request
    t0 = time.monotonic()
    while True:
        r = requests.post(
            gw.url + "/v1/messages",
            timeout=30,
            json={"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]},
        )
        if r.status_code != 529 or time.monotonic() - t0 > 5:
            break
        time.sleep(0.02)
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 3
    line = next(json.loads(x) for x in gw.log.splitlines() if '"status":499' in x)
    assert line["completion_tokens"] < 6000  # booked what was generated, not the whole request


# ---- Anthropic itself behind the gateway --------------------------------------------------------


def test_anthropic_upstream_keeps_system_tools_and_usage(gateway_factory):
    with FakeAnthropic() as fake:
        gw = gateway_factory(f"""
[[providers]]
name = "claude"
type = "anthropic"
base_url = "{fake.url}"
api_key = "{ANTHROPIC_KEY}"
models = ["claude-*"]
timeout_s = 5
""")
        fake.script(
            reply("Sunny.", usage={"input_tokens": 31, "output_tokens": 2}),
            reply(None, tool_uses=[("get_weather", {"city": "Oslo"})]),
        )
        client = sdk(gw)
        msg = client.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=30,
            system="Be brief.",
            stop_sequences=["##"],
            messages=[{"role": "user", "content": "Weather?"}],
        )
        assert msg.content[0].text == "Sunny." and msg.stop_reason == "end_turn"
        assert (msg.usage.input_tokens, msg.usage.output_tokens) == (31, 2)
        sent = fake.requests[-1].body
        assert sent["system"] == "Be brief." and sent["max_tokens"] == 30
        assert sent["stop_sequences"] == ["##"]
        with client.messages.stream(
            model="claude-3-5-haiku-latest",
            max_tokens=30,
            tools=[WEATHER_TOOL],
            messages=[{"role": "user", "content": "Oslo?"}],
        ) as s:
            final = s.get_final_message()
        assert final.stop_reason == "tool_use"
        assert [(b.name, b.input) for b in final.content] == [("get_weather", {"city": "Oslo"})]
        assert fake.requests[-1].body["tools"][0]["input_schema"] == WEATHER_TOOL["input_schema"]


# ---- count_tokens and the error shape on every Anthropic path ------------------------------------


def test_count_tokens_is_exact_on_a_local_model(tiny, gateway_factory):
    """The SDK's messages.count_tokens: the local tokenizer after the chat template."""
    gw = gateway_factory(local_toml(tiny))
    client = sdk(gw)
    msgs = [{"role": "user", "content": "Wie spät ist es? 今何時ですか 🙂"}]
    counted = client.messages.count_tokens(model="tiny", system="Be brief.", messages=msgs)
    made = client.messages.create(model="tiny", max_tokens=2, system="Be brief.", messages=msgs)
    assert counted.input_tokens == made.usage.input_tokens > 0
    raw = client.messages.with_raw_response.count_tokens(model="tiny", messages=msgs)
    assert raw.headers["X-Hoosh-Token-Count"] == "exact"


def test_count_tokens_of_a_cloud_model_is_the_budget_bound(gateway_factory):
    """A cloud model gets the gateway's upper bound, never below what the upstream counts."""
    with FakeOpenAI(billing=True) as fake:
        gw = gateway_factory(openai_provider_toml(fake))
        client = sdk(gw)
        msgs = [{"role": "user", "content": "数え方 " * 20}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "again ✓"}]  # fmt: skip
        raw = client.messages.with_raw_response.count_tokens(model="gpt-4o-mini", messages=msgs,
                                                             system="System text.")  # fmt: skip
        bound = raw.parse().input_tokens
        assert raw.headers["X-Hoosh-Token-Count"] == "upper_bound"
        assert fake.chat_requests == []  # counting calls nobody
        made = client.messages.create(model="gpt-4o-mini", max_tokens=5, messages=msgs,
                                      system="System text.")  # fmt: skip
        assert 0 < made.usage.input_tokens <= bound


def test_every_error_on_an_anthropic_path_has_anthropic_shape(fake_openai, gateway_factory):
    key = "client-key-for-messages-0123456789"
    gw = gateway_factory(f'[server]\napi_keys = ["{key}"]\n' + openai_provider_toml(fake_openai))
    with pytest.raises(anthropic.AuthenticationError) as info:
        sdk(gw, api_key="wrong-key-0123456789").messages.count_tokens(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.body["error"]["type"] == "authentication_error"
    for method, path, status, kind in [
        ("post", "/v1/messages/batches", 404, "not_found_error"),
        ("get", "/v1/messages", 405, "invalid_request_error"),
        ("post", "/v1/messages/count_tokens", 400, "invalid_request_error"),  # no model
    ]:
        r = getattr(requests, method)(gw.url + path, headers={"x-api-key": key}, json={},
                                      timeout=10)  # fmt: skip
        assert r.status_code == status, (path, r.text)
        doc = r.json()
        assert doc["type"] == "error" and doc["error"]["type"] == kind, (path, doc)
