"""Hostile upstreams: retries, timeouts, cut streams, garbage, fallback, secrets."""

from __future__ import annotations

import json
import socket
import threading
import time

import requests

from tests.conftest import openai_provider_toml
from tests.fake_openai import FakeOpenAI

MSG = [{"role": "user", "content": "hi there"}]


def chat(gw, stream=False, **extra):
    body = {"model": "gpt-4o-mini", "messages": MSG, "stream": stream, **extra}
    return requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30, stream=stream)


def sse_docs(r):
    out = []
    for line in r.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def test_429_with_retry_after_is_retried(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("status", 429, headers={"Retry-After": "1"})
    t0 = time.monotonic()
    r = chat(gw)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Echo: hi there"
    assert len(fake_openai.chat_requests) == 2
    assert time.monotonic() - t0 >= 0.9  # Retry-After was honoured


def test_500_then_success(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("status", 500)
    r = chat(gw, stream=True)
    assert r.status_code == 200
    assert "".join(
        d["choices"][0]["delta"].get("content") or "" for d in sse_docs(r) if d["choices"]
    )
    assert len(fake_openai.chat_requests) == 2


def test_upstream_4xx_passes_through_and_is_not_retried(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script(
        "status", 400, message="This model's maximum context length is 128000 tokens"
    )
    r = chat(gw)
    assert r.status_code == 400
    assert "maximum context length" in r.json()["error"]["message"]
    assert len(fake_openai.chat_requests) == 1


def test_hang_past_timeout_is_504_and_health_stays_quick(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("hang", 4)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", chat(gw)))
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    assert requests.get(gw.url + "/health", timeout=5).ok
    health_s = time.monotonic() - t0
    t.join(20)
    r = result["r"]
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert health_s < 1.0  # the hub was not blocked by the waiting request


def test_stream_cut_in_the_middle_ends_with_an_error_event(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("cut", 3)
    r = chat(gw, stream=True)
    assert r.status_code == 200
    docs = sse_docs(r)
    assert any(d.get("choices") and d["choices"][0]["delta"].get("content") for d in docs)
    assert "error" in docs[-1] and docs[-1]["error"]["type"] == "upstream_error"


def test_malformed_chunk_is_skipped_and_counted(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("malformed", 2)
    r = chat(gw, stream=True)
    docs = sse_docs(r)
    text = "".join(d["choices"][0]["delta"].get("content") or "" for d in docs if d.get("choices"))
    assert text == "Echo: hi there"
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'hoosh_upstream_malformed_chunks_total{provider="fake"} 1' in metrics
    assert "malformed stream chunk" in gw.log and "request " in gw.log


def test_html_answer_to_a_stream_request_is_a_clear_upstream_error(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("html")
    r = chat(gw, stream=True)
    assert r.status_code == 502
    err = r.json()["error"]
    assert "text/html" in err["message"] and err["type"] == "upstream_error"


def test_key_echoed_by_upstream_never_reaches_client_or_log(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("echo_key", 401)
    r = chat(gw)
    assert r.status_code == 502
    assert fake_openai.api_key not in r.text and "Bearer sk-" not in r.text
    assert "REDACTED" in r.text
    time.sleep(0.2)
    assert fake_openai.api_key not in gw.log


def test_fallback_to_next_provider_on_5xx(gateway_factory):
    with FakeOpenAI() as bad, FakeOpenAI() as good:
        cfg = openai_provider_toml(bad, name="first", extra="max_retries = 0") + openai_provider_toml(
            good, name="second")  # fmt: skip
        gw = gateway_factory(cfg)
        bad.script("status", 503)
        r = chat(gw)
        assert r.status_code == 200 and r.headers["X-Hoosh-Provider"] == "second"
        bad.script("status", 503)
        r = chat(gw, stream=True)
        assert r.headers["X-Hoosh-Provider"] == "second" and sse_docs(r)
        health = requests.get(gw.url + "/v1/health", timeout=5).json()
        first = next(p for p in health["providers"] if p["name"] == "first")
        assert first["consecutive_failures"] == 2 and "503" in first["last_error"]


def test_no_fallback_on_a_client_error(gateway_factory):
    with FakeOpenAI() as a, FakeOpenAI() as b:
        gw = gateway_factory(
            openai_provider_toml(a, name="first") + openai_provider_toml(b, name="second")
        )
        a.script("status", 422, message="bad tool schema")
        r = chat(gw)
        assert r.status_code == 422 and "bad tool schema" in r.json()["error"]["message"]
        assert len(b.chat_requests) == 0


def test_upstream_down_falls_back_and_reports_502_when_alone(fake_openai, gateway_factory):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead_port = s.getsockname()[1]
    s.close()  # nothing listens there now
    dead = f"""
[[providers]]
name = "dead"
type = "openai"
base_url = "http://127.0.0.1:{dead_port}/v1"
models = ["gpt-*"]
max_retries = 1
"""
    gw = gateway_factory(dead + openai_provider_toml(fake_openai))
    r = chat(gw)
    assert r.status_code == 200 and r.headers["X-Hoosh-Provider"] == "fake"
    gw2 = gateway_factory(dead)
    r = chat(gw2)
    assert r.status_code == 502 and "cannot connect" in r.json()["error"]["message"]


def test_keepalive_comments_while_upstream_is_slow(fake_openai, gateway_factory):
    gw = gateway_factory("[server]\nsse_keepalive_s = 0.3\n" + openai_provider_toml(fake_openai))
    fake_openai.script("slow", 1.5)
    r = chat(gw, stream=True)
    lines = [line for line in r.iter_lines() if line]
    assert lines.count(b": keep-alive") >= 2
    assert lines[-1] == b"data: [DONE]"


def test_missing_env_secret_disables_the_provider(fake_openai, gateway_factory):
    cfg = f"""
[[providers]]
name = "needs-key"
type = "openai"
base_url = "{fake_openai.url}"
api_key = "$HOOSH_TEST_UNSET_KEY"
models = ["gpt-*"]
"""
    gw = gateway_factory(cfg)
    time.sleep(0.2)
    assert "HOOSH_TEST_UNSET_KEY" in gw.log and "needs-key" in gw.log
    health = requests.get(gw.url + "/v1/health", timeout=5).json()
    assert health["providers"][0]["state"] == "disabled"
    r = chat(gw)
    assert r.status_code == 503 and r.json()["error"]["code"] == "provider_disabled"
    assert fake_openai.chat_requests == []


def test_max_tokens_limit_clamps(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai, extra="max_tokens_limit = 3"))
    chat(gw, max_tokens=100)
    assert fake_openai.chat_requests[-1]["json"]["max_tokens"] == 3
    chat(gw)
    assert fake_openai.chat_requests[-1]["json"]["max_tokens"] == 3


def test_timeout_falls_back_to_the_next_provider(gateway_factory):
    with FakeOpenAI() as slow, FakeOpenAI() as quick:
        gw = gateway_factory(
            openai_provider_toml(slow, name="slow") + openai_provider_toml(quick, name="quick")
        )
        slow.script("hang", 4)
        r = chat(gw)
        assert r.status_code == 200 and r.headers["X-Hoosh-Provider"] == "quick"
        assert len(slow.chat_requests) == 1  # a read timeout is not retried (it may be billed)


def test_chunks_in_shapes_the_api_never_sends_are_skipped_on_both_doors(
    fake_openai, gateway_factory
):
    """Valid JSON in a wrong shape (choices not a list of objects, a delta that is a string, ...):
    skipped and counted like malformed JSON, on the OpenAI and the Anthropic door alike."""
    from tests.fake_openai import WRONG_SHAPES

    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("wrong_shape", 2)
    docs = sse_docs(chat(gw, stream=True))
    text = "".join(d["choices"][0]["delta"].get("content") or "" for d in docs if d.get("choices"))
    assert text == "Echo: hi there"
    fake_openai.script("wrong_shape", 1)
    r = requests.post(gw.url + "/v1/messages", timeout=10, stream=True, json={
        "model": "gpt-4o-mini", "max_tokens": 50, "stream": True,
        "messages": [{"role": "user", "content": "hi there"}]})  # fmt: skip
    events = [json.loads(line[5:]) for line in r.iter_lines(decode_unicode=True)
              if line.startswith("data:")]  # fmt: skip
    said = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert said == "Echo: hi there" and events[-1]["type"] == "message_stop"
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    count = 2 * len(WRONG_SHAPES)
    assert f'hoosh_upstream_malformed_chunks_total{{provider="fake"}} {count}.0' in metrics


def test_a_completion_in_a_wrong_shape_is_a_502_not_a_500(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("wrong_shape")
    r = chat(gw)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and "choices[0] is not an object" in err["message"]
    assert chat(gw).status_code == 200  # and the next call is served
