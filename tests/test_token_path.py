"""The per-token path of a stream: wake-ups from the producer thread, and tokens made while a
frame was written going out in one frame, without holding back the first one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import gevent
import gevent.monkey
import pytest
import requests

from hoosh_edge import threads
from hoosh_edge.formats import openai as chatfmt
from hoosh_edge.threads import ThreadStream, pump
from tests.synth_gguf import make_tiny_gguf

os_sleep = gevent.monkey.get_original("time", "sleep")


def text(t: str, role: bool = False) -> dict:
    delta = {"role": "assistant", "content": t} if role else {"content": t}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def counting_notify(monkeypatch) -> list[int]:
    calls = [0]
    real = ThreadStream._notify

    def notify(self) -> None:
        calls[0] += 1
        real(self)

    monkeypatch.setattr(ThreadStream, "_notify", notify)
    return calls


def test_the_first_item_comes_at_once_and_a_later_one_within_the_linger():
    def gen():
        yield ("first", time.monotonic())
        os_sleep(0.3)  # the reader is asleep meanwhile: only its linger brings it back
        yield ("late", time.monotonic())

    got = []
    for name, made in ThreadStream(gen, linger_s=0.05):
        got.append((name, time.monotonic() - made))
    assert [n for n, _ in got] == ["first", "late"]
    assert got[0][1] < 0.04  # not held for the linger
    assert got[1][1] < 0.05 + 0.1  # at most the linger, plus a loaded machine's slack


def test_items_made_quickly_wake_the_reader_a_few_times_not_once_each(monkeypatch):
    calls = counting_notify(monkeypatch)

    def gen():
        for i in range(200):
            os_sleep(0.0005)
            yield i

    assert list(ThreadStream(gen, max_buffer=1000, linger_s=0.02)) == list(range(200))
    assert calls[0] <= 10  # the first item and the end, not 200


def test_without_a_linger_every_item_may_wake_the_reader(monkeypatch):
    calls = counting_notify(monkeypatch)

    def gen():
        for i in range(20):
            os_sleep(0.01)  # slower than the reader: it waits for each one
            yield i

    assert list(ThreadStream(gen, linger_s=0)) == list(range(20))
    assert calls[0] >= 15


def test_a_full_buffer_wakes_the_reader_before_the_linger(monkeypatch):
    def gen():
        yield 0
        os_sleep(0.05)
        yield from range(1, 9)  # half of the buffer at once
        os_sleep(2)
        yield 9

    stream = ThreadStream(gen, max_buffer=16, linger_s=10)
    assert next(stream) == 0
    started = time.monotonic()
    assert [next(stream) for _ in range(8)] == list(range(1, 9))
    assert time.monotonic() - started < 1.5  # woken by the buffer, not the 10 s linger
    stream.close()
    stream.join(5)


def test_an_error_after_the_first_item_reaches_the_reader_at_once():
    def gen():
        yield 1
        os_sleep(0.05)
        raise RuntimeError("boom")

    stream = ThreadStream(gen, linger_s=30)
    assert next(stream) == 1
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="boom"):
        next(stream)
    assert time.monotonic() - started < 5


def test_pump_take_returns_what_is_queued_while_it_fits():
    source = pump(iter([text("a"), text("b"), {"choices": [], "usage": {}}, text("c")]))
    gevent.sleep(0.01)  # the pump's greenlet fills its queue
    first = next(source)
    assert source.take(chatfmt.text_chunk) == [text("b")]
    assert next(source) == {"choices": [], "usage": {}}
    assert source.take(chatfmt.text_chunk) == [text("c")]
    assert source.take(chatfmt.text_chunk) == []  # the end stays for next()
    assert first == text("a")
    with pytest.raises(StopIteration):
        next(source)


def test_only_bare_text_chunks_merge():
    assert chatfmt.text_chunk(text("x"))
    assert not chatfmt.text_chunk(text("x", role=True))
    assert chatfmt.text_chunk(text("x", role=True), head=True)
    finish = text("")
    finish["choices"][0]["finish_reason"] = "stop"
    logprobs = text("x")
    logprobs["choices"][0]["logprobs"] = {"content": []}
    stamped = {**text("x"), "id": "chatcmpl-1"}  # a provider's chunk: passed on as it came
    tool = {"choices": [{"index": 0, "delta": {"tool_calls": []}, "finish_reason": None}]}
    second = {"choices": [{"index": 1, "delta": {"content": "x"}, "finish_reason": None}]}
    for other in (finish, logprobs, stamped, tool, second, {"choices": []}, "x", None):
        assert not chatfmt.text_chunk(other, head=True)
    merged = chatfmt.merge_text(text("He", role=True), [text("ll"), text("o")])
    assert merged == text("Hello", role=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", n_ctx_train=4096)


def test_a_fast_local_stream_sends_the_answer_s_text_with_one_role_whatever_its_frames(
    tiny, gateway_factory
):
    gw = gateway_factory(f"""
[local.llm]
n_threads = 1
n_ctx = 4096
[local.llm.models]
tiny = "{tiny}"
""")  # fmt: skip
    body = {"model": "tiny", "max_tokens": 400, "temperature": 0, "seed": 7,
            "messages": [{"role": "user", "content": "count"}]}  # fmt: skip
    headers = {"Cache-Control": "no-cache, no-store"}
    whole = requests.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert whole.status_code == 200
    answer = whole.json()["choices"][0]["message"]["content"]
    r = requests.post(gw.url + "/v1/chat/completions", headers=headers, stream=True, timeout=60,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}})  # fmt: skip
    chunks = [json.loads(line[6:]) for line in r.iter_lines()
              if line.startswith(b"data: ") and line != b"data: [DONE]"]  # fmt: skip
    frames = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    tokens = chunks[-1]["usage"]["completion_tokens"]
    assert "".join(c["choices"][0]["delta"]["content"] for c in frames) == answer
    assert tokens == whole.json()["usage"]["completion_tokens"] > 50
    assert len(frames) <= tokens  # tokens queued while a frame was written share the next one
    assert frames[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in frames[1:])
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-2]["choices"][0]["finish_reason"] in ("length", "stop")


def test_at_a_small_model_s_pace_the_default_linger_groups_tokens_and_holds_none_long(
    monkeypatch,
):
    """Tokens every 14 ms (SmolLM2 on 2 cores): the reader is woken for few of them, the first
    is not held, and no token waits much past the linger (20 frames a second: smooth to read)."""
    assert 0 < threads.LINGER_S <= 0.05
    calls = counting_notify(monkeypatch)

    def gen():
        for i in range(60):
            os_sleep(0.014)
            yield i, time.monotonic()

    waits = [(i, time.monotonic() - made) for i, made in ThreadStream(gen, max_buffer=16)]
    assert [i for i, _ in waits] == list(range(60))
    assert waits[0][1] < 0.04
    assert calls[0] <= 30  # not one wake a token
    late = sorted(w for _, w in waits)[-3]  # the third longest: a loaded machine may stall one
    assert late < threads.LINGER_S + 0.05
