"""formats.ollama without a server: keep_alive, options, messages and tool calls, answer objects;
the [ollama] config table; the pool's keep-alive."""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hoosh_edge.backends.engines.pool import ModelPool, ModelSlot
from hoosh_edge.config import ConfigError, parse_config
from hoosh_edge.errors import InvalidRequest
from hoosh_edge.formats import ollama as fmt


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), (0, 0.0), ("0", 0.0), (300, 300.0), ("300", 300.0), ("5m", 300.0),
    ("1h30m", 5400.0), ("1.5s", 1.5), ("250ms", 0.25), (-1, math.inf), ("-1", math.inf),
    ("-5m", math.inf), (2.5, 2.5),
])  # fmt: skip
def test_keep_alive_durations(value, seconds):
    assert fmt.keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "", "m5", True, [], {}, "nan", "5x"])
def test_keep_alive_garbage_is_a_400(value):
    with pytest.raises(InvalidRequest) as e:
        fmt.keep_alive_seconds(value)
    assert e.value.param == "keep_alive"


def test_options_map_to_openai_fields_and_the_rest_is_listed():
    ask = fmt.chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}],
                            "options": {"temperature": 0.2, "top_p": 0.5, "seed": 9,
                                        "num_predict": 12, "stop": ["END"], "top_k": 3,
                                        "num_ctx": 4096, "repeat_penalty": 1.2,
                                        "presence_penalty": 0.1}})  # fmt: skip
    req = ask.req
    assert req is not None
    assert (req["temperature"], req["top_p"], req["seed"], req["max_tokens"], req["stop"],
            req["presence_penalty"]) == (0.2, 0.5, 9, 12, ["END"], 0.1)  # fmt: skip
    assert sorted(ask.ignored) == ["num_ctx", "repeat_penalty", "top_k"]
    for unlimited in (-1, -2):
        ask = fmt.chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                "options": {"num_predict": unlimited}})  # fmt: skip
        assert "max_tokens" not in ask.req  # type: ignore[operator]


def test_defaults_stream_and_load_only():
    ask = fmt.chat_request({"model": " m ", "messages": []})
    assert ask.req is None and ask.stream is True and ask.model == "m"
    ask = fmt.generate_request({"model": "m", "stream": False, "keep_alive": 0})
    assert ask.req is None and ask.stream is False and ask.keep_alive_s == 0


def test_tool_calls_become_strings_and_results_find_their_call():
    ask = fmt.chat_request({"model": "m", "messages": [
        {"role": "user", "content": "weather in two cities"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
            {"function": {"name": "time", "arguments": {"tz": "UTC"}}}]},
        {"role": "tool", "tool_name": "time", "content": "12:00"},
        {"role": "tool", "content": "rain"},
    ], "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}]})  # fmt: skip
    msgs = ask.req["messages"]  # type: ignore[index]
    calls = msgs[1]["tool_calls"]
    assert msgs[1]["content"] is None
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Oslo"},
                                                                       {"tz": "UTC"}]  # fmt: skip
    assert msgs[2]["tool_call_id"] == calls[1]["id"]  # by name
    assert msgs[3]["tool_call_id"] == calls[0]["id"]  # the oldest left
    assert ask.req["tools"][0]["function"]["name"] == "weather"  # type: ignore[index]


def test_reply_turns_chunks_into_ollama_objects():
    reply = fmt.Reply("gpt:latest", "chat")
    assert reply.feed({"choices": [{"delta": {"role": "assistant", "content": "Hi"}}]}) == "Hi"
    reply.feed({"choices": [{"delta": {"tool_calls": [
        {"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a":'}}]}}]})  # fmt: skip
    reply.feed({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {
        "arguments": " 1}"}}]}, "finish_reason": "tool_calls"}]})  # fmt: skip
    line = reply.calls_line()
    assert line["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"a": 1}}}]
    t = fmt.Timing(started=10.0, first=10.5, last=11.0, load_s=0.2)
    done = reply.final({"prompt_tokens": 7, "completion_tokens": 3}, t, 11.25, whole=True)
    assert done["done"] is True and done["done_reason"] == "stop"
    assert done["message"]["content"] == "Hi" and done["message"]["tool_calls"]
    assert (done["total_duration"], done["load_duration"], done["prompt_eval_duration"],
            done["eval_duration"]) == (1_250_000_000, 200_000_000, 300_000_000, 500_000_000)  # fmt: skip
    assert (done["prompt_eval_count"], done["eval_count"]) == (7, 3)
    assert list(done)[-1] == "eval_duration" and done["created_at"].endswith("Z")
    gen = fmt.Reply("m", "generate")
    gen.feed({"choices": [{"delta": {"content": "x"}, "finish_reason": "length"}]})
    out = gen.final(None, fmt.Timing(started=0.0), 0.0, whole=True)
    assert out["response"] == "x" and out["done_reason"] == "length" and "message" not in out


def test_unparsable_tool_arguments_become_an_empty_object():
    reply = fmt.Reply("m", "chat")
    reply.feed({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {
        "name": "f", "arguments": "not json"}}]}}]})  # fmt: skip
    assert reply.tool_calls() == [{"function": {"name": "f", "arguments": {}}}]


def test_ollama_config_table():
    assert parse_config({}).ollama.port is None
    assert parse_config({"ollama": {"port": 11434}}).ollama.port == 11434
    for bad, word in (({"port": 0}, "between"), ({"port": "x"}, "must be int"),
                      ({"prot": 1}, "unknown key"), ({"port": 8088}, "server.port")):  # fmt: skip
        with pytest.raises(ConfigError, match=word):
            parse_config({"ollama": bad})


def test_pool_keep_alive_overrides_and_unload_after_use():
    pool = ModelPool(mem_available=lambda: None)
    slot = pool.register(ModelSlot(key="m", kind="llm", loader=lambda: object(),
                                   estimate_bytes=1, keep_alive_s=300))  # fmt: skip
    pool.keep("m", 10)  # not loaded: nothing to keep
    assert slot.expires_at is None
    with slot.use():
        pass
    pool.keep("m", math.inf)
    assert pool.expires_in("m") == math.inf
    assert pool.unload_idle(now=time.monotonic() + 10_000) == []
    pool.keep("m", 5)
    assert 4 < pool.expires_in("m") <= 5  # type: ignore[operator]
    assert pool.unload_idle(now=time.monotonic() + 6) == ["m"] and slot.expires_at is None
    with slot.use():
        pool.keep("m", 0)  # busy: unloaded as soon as this use ends
        assert slot.loaded
    assert not slot.loaded
    started = time.monotonic()
    with slot.use():
        pass
    assert pool.loaded_since("m", started) == slot.load_s
    assert pool.loaded_since("m", time.monotonic()) == 0.0


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)  # fmt: skip
_FIELDS = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["m", "", 5]) | _JSON,
    "messages": st.lists(st.fixed_dictionaries({}, optional={
        "role": st.sampled_from(["user", "assistant", "tool", "system", "robot"]) | _JSON,
        "content": st.text(max_size=8) | _JSON,
        "tool_calls": st.lists(st.fixed_dictionaries({}, optional={
            "function": st.fixed_dictionaries({}, optional={"name": st.text(max_size=4) | _JSON,
                                                            "arguments": _JSON})}), max_size=2) | _JSON,
        "tool_name": _JSON, "images": _JSON}), max_size=3) | _JSON,
    "options": st.dictionaries(st.sampled_from(["temperature", "num_predict", "stop", "seed",
                                                "top_k"]), _JSON) | _JSON,
    "format": st.sampled_from(["json", ""]) | _JSON, "keep_alive": st.text(max_size=6) | _JSON,
    "stream": _JSON, "tools": _JSON, "think": _JSON, "prompt": _JSON, "system": _JSON,
    "raw": _JSON,
})  # fmt: skip


@given(_FIELDS)
def test_any_body_is_a_request_or_a_400(body):
    for parse in (fmt.chat_request, fmt.generate_request):
        try:
            ask = parse(body)
        except InvalidRequest:
            continue
        assert ask.req is None or ask.req["messages"]
