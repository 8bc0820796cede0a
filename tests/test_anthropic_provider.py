"""The Anthropic provider against a real HTTP fake of the Messages API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import anthropic
import pytest

from hoosh_edge.backends.providers.anthropic import AnthropicProvider
from hoosh_edge.backends.providers.base import CallContext
from hoosh_edge.config import ProviderConfig, parse_config
from hoosh_edge.errors import InvalidRequest, UpstreamError, UpstreamStatus, UpstreamTimeout
from tests.fake_anthropic import API_KEY, FakeAnthropic, Reply, error, message, reply

MODEL = "claude-test-1"
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as f:
        yield f


def make(fake: FakeAnthropic, **kw: Any) -> AnthropicProvider:
    """A provider pointed at the fake, with fast retry backoff."""
    opts: dict[str, Any] = dict(
        name="anthropic", type="anthropic", base_url=fake.url, api_key=API_KEY,
        models=("claude-*", "claude-test-1"), timeout_s=5.0, max_retries=2, retry_max_s=10.0,
        api_version="2023-06-01",
    )  # fmt: skip
    opts.update(kw)
    provider = AnthropicProvider(ProviderConfig(**opts))
    provider.http.backoff_base_s = 0.01
    return provider


@pytest.fixture
def provider(fake: FakeAnthropic) -> Iterator[AnthropicProvider]:
    p = make(fake)
    yield p
    p.close()


def chat(*messages: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"messages": list(messages), **kw}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def sent(provider: AnthropicProvider, fake: FakeAnthropic, req: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic body the provider sent for ``req``."""
    provider.complete(MODEL, req, CallContext())
    return fake.requests[-1].body


def collect(provider: AnthropicProvider, req: dict[str, Any], ctx: CallContext | None = None,
            into: list[dict] | None = None) -> list[dict]:  # fmt: skip
    """Stream into a list (``into`` keeps what came even when the stream raises)."""
    chunks = [] if into is None else into
    for chunk in provider.stream(MODEL, req, ctx or CallContext()):
        chunks.append(chunk)
    return chunks


def joined(chunks: list[dict]) -> tuple[str, dict[int, dict[str, str]], str | None]:
    """Content text, tool calls by index (id, name, arguments) and finish reason of a stream."""
    text, calls, finish = "", {}, None
    for c in chunks:
        for choice in c["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                call = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] += tc.get("id") or ""
                call["name"] += (tc.get("function") or {}).get("name") or ""
                call["arguments"] += (tc.get("function") or {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return text, calls, finish


# -- OpenAI -> Anthropic ---------------------------------------------------------------------


def test_plain_request_headers_and_answer(provider, fake):
    fake.script(reply("Hi there", usage={"input_tokens": 9, "output_tokens": 3}))
    out = provider.complete(MODEL, chat(user("Hello")), CallContext())
    rec = fake.requests[0]
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == API_KEY
    assert rec.headers["anthropic-version"] == "2023-06-01"
    assert rec.headers["content-type"] == "application/json"
    assert "authorization" not in rec.headers
    assert rec.body == {"model": MODEL, "messages": [user("Hello")], "max_tokens": 4096,
                        "stream": False}  # fmt: skip
    assert out["object"] == "chat.completion"
    assert out["id"].startswith("chatcmpl-msg_")
    assert out["model"] == MODEL and isinstance(out["created"], int)
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hi there"}
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def test_single_system_message_becomes_top_level_system(provider, fake):
    body = sent(provider, fake, chat({"role": "system", "content": "Be brief."}, user("Hi")))
    assert body["system"] == "Be brief."
    assert body["messages"] == [user("Hi")]


def test_several_system_messages_in_order_including_parts_and_developer(provider, fake):
    body = sent(provider, fake, chat(
        {"role": "system", "content": [{"type": "text", "text": "One."},
                                       {"type": "text", "text": "Two."}]},
        user("Hi"),
        {"role": "developer", "content": "Three."},
    ))  # fmt: skip
    assert body["system"] == [{"type": "text", "text": t} for t in ("One.", "Two.", "Three.")]
    assert body["messages"] == [user("Hi")]


def test_consecutive_same_role_messages_are_merged(provider, fake):
    body = sent(provider, fake, chat(
        user("a"), user([{"type": "text", "text": "b"}]),
        {"role": "assistant", "content": "c"}, {"role": "assistant", "content": "d"},
        user("e"),
    ))  # fmt: skip
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"},
                                          {"type": "text", "text": "d"}]},
        {"role": "user", "content": "e"},
    ]  # fmt: skip


def test_assistant_refusal_parts_and_empty_turns(provider, fake):
    body = sent(provider, fake, chat(
        user("a"),
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
        {"role": "assistant", "content": ""},
        user([{"type": "text", "text": "b"}, {"type": "text", "text": ""}]),
    ))  # fmt: skip
    assert body["messages"] == [
        user("a"), {"role": "assistant", "content": "I can't."}, user("b")
    ]  # fmt: skip


def test_images_as_base64_and_url_sources(provider, fake):
    body = sent(provider, fake, chat(user([
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ])))  # fmt: skip
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize("url", ["data:image/bmp;base64,Qk0=", "data:image/png,rawbytes",
                                 "ftp://example.com/a.png"])  # fmt: skip
def test_unusable_images_are_refused_before_any_call(provider, fake, url):
    req = chat(user([{"type": "image_url", "image_url": {"url": url}}]))
    with pytest.raises(InvalidRequest):
        provider.complete(MODEL, req, CallContext())
    assert fake.requests == []


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}  # fmt: skip


def test_tools_tool_calls_and_tool_results(provider, fake):
    body = sent(provider, fake, chat(
        user("Weather in Paris and Rome?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "25C"}]},
        user("Thanks; which is warmer?"),
        tools=[WEATHER_TOOL, {"type": "function", "function": {"name": "now"}}],
    ))  # fmt: skip
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather for a city",
         "input_schema": WEATHER_TOOL["function"]["parameters"]},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]  # fmt: skip
    assert "tool_choice" not in body
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
    ]}  # fmt: skip
    # Tool results and the next user text share one user turn, results first.
    assert body["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "25C"},
        {"type": "text", "text": "Thanks; which is warmer?"},
    ]}  # fmt: skip
    assert len(body["messages"]) == 3


@pytest.mark.parametrize("choice, parallel, expected", [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None,
     {"type": "tool", "name": "get_weather"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
])  # fmt: skip
def test_tool_choice_mapping(provider, fake, choice, parallel, expected):
    extra = {"tool_choice": choice} if choice is not None else {}
    if parallel is not None:
        extra["parallel_tool_calls"] = parallel
    body = sent(provider, fake, chat(user("hi"), tools=[WEATHER_TOOL], **extra))
    assert body["tool_choice"] == expected


@pytest.mark.parametrize("args", ["{not json", "[1, 2]"])
def test_tool_call_arguments_must_be_a_json_object(provider, fake, args):
    req = chat(
        user("hi"),
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": args}}
            ],
        },
    )
    with pytest.raises(InvalidRequest, match="arguments"):
        provider.complete(MODEL, req, CallContext())
    assert fake.requests == []


def test_sampling_stop_user_and_ignored_parameters(provider, fake):
    body = sent(provider, fake, chat(
        user("hi"), temperature=1.7, top_p=0.9, stop=["END", "###"], user="device-7", seed=42,
        n=1, frequency_penalty=0.5, presence_penalty=0.1,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
    ))  # fmt: skip
    assert body["temperature"] == 1.0  # OpenAI's 0-2 clamped into Anthropic's 0-1
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END", "###"]
    assert body["metadata"] == {"user_id": "device-7"}
    for gone in ("seed", "n", "frequency_penalty", "presence_penalty", "response_format",
                 "stop", "user"):  # fmt: skip
        assert gone not in body
    assert sent(provider, fake, chat(user("hi"), stop="\n", temperature=0.3))["stop_sequences"] == [
        "\n"
    ]
    assert fake.bodies[-1]["temperature"] == 0.3


def test_max_tokens_default_given_and_clamped(fake):
    with closing(make(fake)) as p:
        assert sent(p, fake, chat(user("hi")))["max_tokens"] == 4096
        assert sent(p, fake, chat(user("hi"), max_tokens=100))["max_tokens"] == 100
        assert sent(p, fake, chat(user("hi"), max_completion_tokens=77))["max_tokens"] == 77
    with closing(make(fake, max_tokens_limit=50)) as p:
        assert sent(p, fake, chat(user("hi")))["max_tokens"] == 50
        assert sent(p, fake, chat(user("hi"), max_tokens=9000))["max_tokens"] == 50
        assert sent(p, fake, chat(user("hi"), max_tokens=20))["max_tokens"] == 20


@pytest.mark.parametrize("env, configured, expected", [
    ({}, None, "2023-06-01"),
    ({"ANTHROPIC_API_VERSION": "2023-01-01"}, None, "2023-01-01"),
    ({"ANTHROPIC_API_VERSION": "2023-01-01"}, "2023-06-01", "2023-06-01"),
])  # fmt: skip
def test_api_version_header_from_config_or_environment(fake, env, configured, expected):
    table: dict[str, Any] = {"type": "anthropic", "base_url": fake.url, "api_key": API_KEY}
    if configured:
        table["api_version"] = configured
    cfg = parse_config({"providers": [table]}, env=env).providers[0]
    with closing(AnthropicProvider(cfg)) as p:
        p.complete(MODEL, chat(user("hi")), CallContext())
    assert fake.requests[-1].headers["anthropic-version"] == expected


def test_anthropic_key_from_environment_alone(fake):
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_API_VERSION": "2023-01-01"}
    cfg = parse_config({}, env=env).providers[0]
    cfg = ProviderConfig(**{**cfg.__dict__, "base_url": fake.url})
    with closing(AnthropicProvider(cfg)) as p:
        assert p.serves("claude-sonnet-4-5") and not p.serves("gpt-4o")
        assert p.model_ids() == []  # only globs configured
        p.complete(MODEL, chat(user("hi")), CallContext())
    assert fake.requests[-1].headers["anthropic-version"] == "2023-01-01"


# -- Anthropic -> OpenAI ---------------------------------------------------------------------


def test_tool_use_answer_becomes_tool_calls(provider, fake):
    fake.script(reply(None, tool_uses=[("get_weather", {"city": "Paris"}),
                                       ("get_weather", {"city": "Rome"})]))  # fmt: skip
    out = provider.complete(MODEL, chat(user("weather?"), tools=[WEATHER_TOOL]), CallContext())
    msg = out["choices"][0]["message"]
    assert msg["content"] is None
    assert [json.loads(c["function"]["arguments"]) for c in msg["tool_calls"]] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]
    assert all(c["type"] == "function" and c["function"]["name"] == "get_weather"
               and c["id"].startswith("toolu_") for c in msg["tool_calls"])  # fmt: skip
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_text_and_tool_use_together(provider, fake):
    fake.script(reply("Let me check.", tool_uses=[("get_weather", {"city": "Oslo"})]))
    msg = provider.complete(MODEL, chat(user("weather?")), CallContext())["choices"][0]["message"]
    assert msg["content"] == "Let me check."
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}


@pytest.mark.parametrize("stop_reason, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("refusal", "content_filter"),
])  # fmt: skip
def test_finish_reason_mapping_streamed_and_not(provider, fake, stop_reason, finish):
    fake.script(reply("x", stop_reason=stop_reason), reply("x", stop_reason=stop_reason))
    out = provider.complete(MODEL, chat(user("hi")), CallContext())
    assert out["choices"][0]["finish_reason"] == finish
    assert joined(collect(provider, chat(user("hi"))))[2] == finish


def test_usage_counts_cache_tokens_as_prompt_tokens(provider, fake):
    usage = {"input_tokens": 5, "cache_creation_input_tokens": 100,
             "cache_read_input_tokens": 1000, "output_tokens": 20}  # fmt: skip
    fake.script(reply("x", usage=usage), reply("x", usage=usage))
    expected = {"prompt_tokens": 1105, "completion_tokens": 20, "total_tokens": 1125,
                "prompt_tokens_details": {"cached_tokens": 1000}}  # fmt: skip
    assert provider.complete(MODEL, chat(user("hi")), CallContext())["usage"] == expected
    assert collect(provider, chat(user("hi")))[-1]["usage"] == expected


# -- streaming -------------------------------------------------------------------------------


def test_stream_text_chunks_in_openai_shape(provider, fake):
    fake.script(reply("The quick brown fox.", usage={"input_tokens": 11, "output_tokens": 6}))
    chunks = collect(provider, chat(user("hi"), max_tokens=64))
    body = fake.requests[0].body
    assert body["stream"] is True and body["max_tokens"] == 64
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-msg_")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text, calls, finish = joined(chunks)
    assert text == "The quick brown fox." and calls == {} and finish == "stop"
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) > 2
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 6,
                                   "total_tokens": 17}  # fmt: skip


def test_stream_tool_calls_assembled_from_fragments(provider, fake):
    args = {"city": "São Paulo", "days": 3, "units": {"temp": "C"}}
    fake.script(reply("Checking.", tool_uses=[("get_weather", args), ("now", {})]))
    chunks = collect(provider, chat(user("weather?"), tools=[WEATHER_TOOL]))
    text, calls, finish = joined(chunks)
    assert text == "Checking." and finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("toolu_")
    assert json.loads(calls[0]["arguments"]) == args
    assert calls[1]["name"] == "now" and json.loads(calls[1]["arguments"]) == {}
    fragments = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    assert len(fragments) > 4  # really streamed in pieces, not one blob
    header = fragments[0]["choices"][0]["delta"]["tool_calls"][0]
    assert header["type"] == "function" and header["index"] == 0


def test_stream_tool_without_arguments_still_gives_valid_json(provider, fake):
    events = [e for e in reply(None, tool_uses=[("now", {})]).stream_events(MODEL)
              if '"input_json_delta"' not in e[1]]  # fmt: skip
    fake.script(Reply(events=events))
    _, calls, _ = joined(collect(provider, chat(user("time?"))))
    assert json.loads(calls[0]["arguments"]) == {}


def test_stream_skips_thinking_blocks_pings_and_unknown_events(provider, fake):
    events = reply("Answer.").stream_events(MODEL)
    thinking = [
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "Hmm."}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "signature_delta", "signature": "abc"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("future_event", {"type": "future_event", "detail": 1}),
        ("ping", {"type": "ping"}),
    ]  # fmt: skip
    renumbered = [(n, d.replace('"index": 0', '"index": 1')) for n, d in events[2:]]
    fake.script(Reply(events=events[:2] + [(n, json.dumps(d)) for n, d in thinking] + renumbered))
    seen: list[str] = []
    chunks = collect(provider, chat(user("hi")), CallContext(on_malformed_chunk=seen.append))
    assert joined(chunks)[:3:2] == ("Answer.", "stop") and seen == []


# -- retries and failures --------------------------------------------------------------------


def test_429_with_retry_after_is_retried_then_succeeds(provider, fake):
    fake.script(error(429, "rate_limit_error", "Number of requests exceeded", retry_after="0"),
                reply("after the wait"))  # fmt: skip
    out = provider.complete(MODEL, chat(user("hi")), CallContext())
    assert out["choices"][0]["message"]["content"] == "after the wait"
    assert len(fake.requests) == 2


def test_429_whose_retry_after_exceeds_the_retry_budget_is_not_waited_for(provider, fake):
    fake.script(error(429, "rate_limit_error", "Number of requests exceeded", retry_after="60"))
    with pytest.raises(UpstreamStatus) as info:
        provider.complete(MODEL, chat(user("hi")), CallContext())
    assert len(fake.requests) == 1
    assert info.value.status == 429 and info.value.retry_after == 60
    assert "Number of requests exceeded" in info.value.message


@pytest.mark.parametrize("status, etype", [(500, "api_error"), (529, "overloaded_error")])
def test_server_errors_are_retried_then_succeed_streamed_and_not(provider, fake, status, etype):
    fake.script(error(status, etype, "try later"), reply("ok"),
                error(status, etype, "try later"), reply("streamed ok"))  # fmt: skip
    assert provider.complete(MODEL, chat(user("hi")), CallContext())["choices"][0]["message"][
        "content"] == "ok"  # fmt: skip
    assert joined(collect(provider, chat(user("hi"))))[0] == "streamed ok"
    assert len(fake.requests) == 4


def test_retries_give_up_after_max_retries(provider, fake):
    fake.script(*[error(529, "overloaded_error", "Overloaded")] * 5)
    with pytest.raises(UpstreamStatus, match="Overloaded") as info:
        provider.complete(MODEL, chat(user("hi")), CallContext())
    assert len(fake.requests) == 3  # first try + max_retries=2
    assert info.value.status == 502 and info.value.fallback_ok


def test_client_errors_are_not_retried(provider, fake):
    fake.script(error(400, "invalid_request_error", "messages: roles must alternate"),
                reply("never sent"))  # fmt: skip
    with pytest.raises(UpstreamStatus, match="roles must alternate") as info:
        provider.complete(MODEL, chat(user("hi")), CallContext())
    assert len(fake.requests) == 1
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    assert not info.value.fallback_ok


def test_unknown_api_version_is_refused_by_upstream_once(fake):
    with closing(make(fake, api_version="1999-01-01")) as p:
        with pytest.raises(UpstreamStatus, match="anthropic-version"):
            p.complete(MODEL, chat(user("hi")), CallContext())
    assert len(fake.requests) == 1


def test_hang_past_the_timeout_is_an_upstream_timeout_not_retried(fake):
    fake.script(Reply(delay_s=30))
    with closing(make(fake, timeout_s=0.3)) as p:
        with pytest.raises(UpstreamTimeout):
            p.complete(MODEL, chat(user("hi")), CallContext())
    assert len(fake.requests) == 1


def test_stream_stalling_mid_way_times_out_after_partial_chunks(fake):
    fake.script(Reply(message=message("a long answer"), stop_after=5, then="stall"))
    got: list[dict] = []
    with closing(make(fake, timeout_s=0.3)) as p, pytest.raises(UpstreamTimeout):
        collect(p, chat(user("hi")), into=got)
    assert got and joined(got)[0] == "a long a"


def test_stream_cut_mid_way_raises_after_partial_chunks(provider, fake):
    fake.script(Reply(message=message("a long answer"), stop_after=5, then="close"))
    got: list[dict] = []
    with pytest.raises(UpstreamError, match="broke off"):
        collect(provider, chat(user("hi")), into=got)
    assert joined(got)[0] == "a long a"
    assert not any(c["choices"] == [] for c in got)  # no usage chunk: the answer is not whole


def test_stream_ending_cleanly_without_message_stop_is_an_error(provider, fake):
    fake.script(Reply(message=message("a long answer"), stop_after=6, then="end"))
    got: list[dict] = []
    with pytest.raises(UpstreamError, match="stream ended early"):
        collect(provider, chat(user("hi")), into=got)
    assert joined(got)[0] == "a long answe"


def test_malformed_event_is_skipped_and_counted(provider, fake):
    fake.script(reply("fine answer").with_event(4, "content_block_delta", '{"type": "content_'))
    seen: list[str] = []
    ctx = CallContext(request_id="r1", on_malformed_chunk=seen.append)
    text, _, finish = joined(collect(provider, chat(user("hi")), ctx))
    assert text == "fine answer" and finish == "stop"
    assert seen == ["anthropic"]


def test_error_event_mid_stream_raises_with_its_message(provider, fake):
    bad = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded now"}}
    fake.script(reply("partial then boom").with_event(5, "error", bad))
    got: list[dict] = []
    with pytest.raises(UpstreamError, match="overloaded_error: Overloaded now"):
        collect(provider, chat(user("hi")), into=got)
    assert joined(got)[0] == "partial "


def test_error_event_echoing_the_key_is_redacted(provider, fake):
    bad = {"type": "error", "error": {"type": "api_error", "message": f"bad key {API_KEY}"}}
    fake.script(reply("x").with_event(2, "error", bad))
    with pytest.raises(UpstreamError) as info:
        collect(provider, chat(user("hi")))
    assert API_KEY not in str(info.value) and "[REDACTED]" in str(info.value)


def test_401_echoing_the_key_never_leaks_it(provider, fake):
    fake.script(error(401, "authentication_error", "invalid x-api-key: {api_key}"))
    with pytest.raises(UpstreamStatus) as info:
        provider.complete(MODEL, chat(user("hi")), CallContext())
    err = info.value
    assert fake.requests[0].headers["x-api-key"] == API_KEY  # the fake really saw and echoed it
    assert API_KEY not in err.message and API_KEY not in json.dumps(err.to_dict())
    assert API_KEY[8:] not in str(err)
    assert err.status == 502 and err.code == "upstream_auth_failed"
    assert len(fake.requests) == 1


def test_wrong_key_is_refused_by_the_fake_and_not_retried(fake):
    with closing(make(fake, api_key="sk-ant-wrong-key-000000000")) as p:
        with pytest.raises(UpstreamStatus, match="invalid x-api-key") as info:
            collect(p, chat(user("hi")))
    assert info.value.upstream_status == 401 and len(fake.requests) == 1
    assert "sk-ant-wrong-key" not in str(info.value)


# -- the fake itself speaks the real wire format ---------------------------------------------


def test_official_sdk_reads_the_fake(fake):
    fake.script(reply(None, tool_uses=[("get_weather", {"city": "Oslo"})]), reply("streamed"))
    client = anthropic.Anthropic(api_key=API_KEY, base_url=fake.root, max_retries=0)
    msg = client.messages.create(model=MODEL, max_tokens=10, messages=[user("hi")])
    assert msg.stop_reason == "tool_use" and msg.content[0].input == {"city": "Oslo"}
    with client.messages.stream(model=MODEL, max_tokens=10, messages=[user("hi")]) as s:
        assert "".join(s.text_stream) == "streamed"
        assert s.get_final_message().usage.output_tokens == 7
    client.close()


def test_a_glob_provider_lists_the_models_anthropic_has(fake):
    """`claude-*` lists Anthropic's own model list (x-api-key and anthropic-version sent)."""
    fake.model_list = ["claude-3-5-haiku-latest", "claude-sonnet-4-5", "other-model"]
    provider = make(fake, models=("claude-*", "claude-test-1"))
    try:
        listed = dict(provider.listing())  # the first listing waits for the answer
        assert listed == {"claude-test-1": "config", "claude-3-5-haiku-latest": "provider",
                          "claude-sonnet-4-5": "provider"}  # fmt: skip
        asked = [r for r in fake.requests if r.method == "GET"]
        assert asked[0].path == "/v1/models?limit=1000"  # one page: the API pages 20 by default
        assert asked[0].headers["x-api-key"] == API_KEY
        assert asked[0].headers["anthropic-version"] == "2023-06-01"
    finally:
        provider.close()
