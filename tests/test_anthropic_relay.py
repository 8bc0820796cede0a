"""Anthropic's SDK through /v1/messages to an Anthropic upstream: both translations in one call.

The door turns the request into OpenAI's shape and the provider turns it back; the fake Anthropic
upstream records what arrived. What the OpenAI shape can hold must arrive as the client sent it,
and the upstream's answer, stop string included, must reach the client as the upstream gave it.
"""

from __future__ import annotations

import json

import anthropic
import requests

from tests.fake_anthropic import FakeAnthropic, Reply, message, message_events
from tests.test_anthropic_e2e import anthropic_toml
from tests.test_anthropic_format import expected_upstream

MODEL = "claude-3-5-haiku-latest"
TOOL = {"name": "get_weather", "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
REQUEST = {
    "model": MODEL,
    "max_tokens": 200,
    "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Weather where this photo was taken?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Looks like Oslo.", "signature": "c2ln"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
             "input": {"city": "Oslo", "units": {"temp": "C"}, "days": [1, 2]}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01",
             "content": [{"type": "text", "text": "4 °C"}, {"type": "text", "text": "rain"}]},
            {"type": "text", "text": "And tomorrow? Answer, then say END."}]},
    ],
    "tools": [TOOL],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "stop_sequences": ["END", "###"],
    "temperature": 0.4,
    "top_p": 0.9,
    "top_k": 40,
    "metadata": {"user_id": "user-7"},
}  # fmt: skip


def stopped_by_sequence() -> Reply:
    """An answer the upstream ended at the stop string "END", streamed or not."""
    msg = {**message("Rain again."), "stop_reason": "stop_sequence", "stop_sequence": "END"}
    events = []
    for name, data in message_events(msg):
        doc = json.loads(data)
        if name == "message_delta":
            doc["delta"]["stop_sequence"] = "END"
        events.append((name, json.dumps(doc)))
    return Reply(message=msg, events=events)


def test_request_reaches_anthropic_as_sent_and_the_stop_string_comes_back(gateway_factory):
    with FakeAnthropic() as fake:
        gw = gateway_factory(anthropic_toml(fake))
        client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
        # This SDK's create() takes no sampling keywords: they travel in the body as sent.
        sampling = ("temperature", "top_p", "top_k")
        kwargs = {k: v for k, v in REQUEST.items() if k not in sampling}
        extra = {k: REQUEST[k] for k in sampling}
        fake.script(stopped_by_sequence(), stopped_by_sequence())

        msg = client.messages.create(**kwargs, extra_body=extra)
        assert msg.content[0].text == "Rain again."
        assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "END")
        sent = fake.requests[-1].body
        assert sent.pop("stream") is False
        assert sent == expected_upstream(REQUEST)
        # Spelled out, what the OpenAI shape in between costs: block boundaries, thinking, top_k.
        assert sent["system"] == "Be brief.\nUse tools." and "top_k" not in sent
        assert [b["type"] for b in sent["messages"][1]["content"]] == ["text", "tool_use"]
        assert sent["messages"][1]["content"][1]["input"] == {
            "city": "Oslo", "units": {"temp": "C"}, "days": [1, 2]}  # fmt: skip
        assert sent["messages"][2]["content"][0]["content"] == "4 °C\nrain"
        assert sent["tool_choice"] == REQUEST["tool_choice"] and sent["temperature"] == 0.4

        with client.messages.stream(**kwargs, extra_body=extra) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == "Rain again."
        assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")
        sent = fake.requests[-1].body
        assert sent.pop("stream") is True
        assert sent == expected_upstream(REQUEST)
    assert gw.log_problems() == []


def test_a_malformed_upstream_answer_is_a_clean_error_not_a_traceback(gateway_factory):
    with FakeAnthropic() as fake:
        gw = gateway_factory(anthropic_toml(fake))
        url = f"{gw.url}/v1/chat/completions"
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        broken = {**message("x"), "content": [{"type": "text", "text": 5}]}
        # Before the first chunk, the gateway can still answer with a status: 502.
        for reply_, stream in [
            (Reply(message=broken), False),  # a text block whose text is a number
            (Reply(events=[("message_start", '{"type": "message_start", "message": "x"}')]), True),
        ]:
            fake.script(reply_)
            r = requests.post(url, json={**chat, "stream": stream}, timeout=10)
            assert r.status_code == 502, r.text
            err = r.json()["error"]
            assert "malformed" in err["message"] and err["type"] == "upstream_error", err
        # Once the stream has started, the same fault ends it with an error event.
        head = message_events(message("Hello there."))[:4]
        for name, bad in [
            ("content_block_start", {"type": "content_block_start", "index": [0],
                                     "content_block": {"type": "tool_use", "id": "t", "name": "n"}}),
            ("message_delta", {"type": "message_delta", "delta": "end", "usage": [1]}),
        ]:  # fmt: skip
            fake.script(Reply(events=[*head, (name, json.dumps(bad))]))
            r = requests.post(url, json={**chat, "stream": True}, timeout=10, stream=True)
            assert r.status_code == 200
            data = [ln[6:] for ln in r.iter_lines(decode_unicode=True) if ln.startswith("data: ")]
            assert (
                json.loads(data[-1])["error"]["message"] == f"claude sent a malformed {name} event"
            )
        assert requests.get(f"{gw.url}/health", timeout=5).ok
    assert gw.log_problems() == []
