"""Ollama's API in front of a cloud model (a fake OpenAI upstream): the official ``ollama`` client,
Home Assistant's and Open WebUI's exact request bodies, tools, budgets, the cache, keys, errors."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import time

import ollama
import pytest
import requests

from tests.conftest import openai_provider_toml

PRICED = """
[pricing."gpt-4o-mini"]
input_usd_per_mtok = 10
output_usd_per_mtok = 100
"""
KEY, ADMIN = "sk-client-key-0123456789", "sk-admin-key-0123456789"

# What Home Assistant's ollama integration sends (homeassistant/components/ollama/entity.py):
# the chat log as Ollama messages, HA's tools, stream on, keep_alive as "<n>s" (or -1), num_ctx.
HA_TOOLS = [{"type": "function", "function": {
    "name": "HassTurnOn", "description": "Turns on a device or entity",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"},
                                                    "area": {"type": "string"}}}}}]  # fmt: skip
HA_BODY = {
    "model": "gpt-4o-mini:latest",
    "messages": [
        {"role": "system", "content": "You are a voice assistant for Home Assistant."},
        {"role": "user", "content": "turn on the kitchen light"},
    ],
    "tools": HA_TOOLS,
    "stream": True,
    "keep_alive": "300s",
    "options": {"num_ctx": 8192},
}
# Open WebUI's /api/chat (backend/open_webui/routers/ollama.py and utils/payload.py): options
# lifted from the model's params, keep_alive and format at the top, think where set.
WEBUI_BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ],  # fmt: skip
    "stream": True,
    "options": {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "num_predict": 64,
        "seed": 7,
        "repeat_penalty": 1.1,
        "num_ctx": 2048,
        "stop": ["\n\n"],
    },  # fmt: skip
    "keep_alive": "5m",
    "think": False,
}


def lines(r: requests.Response) -> list[dict]:
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(x) for x in r.iter_lines() if x]


@pytest.fixture
def gw(fake_openai, gateway_factory):
    return gateway_factory(openai_provider_toml(fake_openai, models='["gpt-4o-mini"]') + PRICED)


def test_ollama_client_lists_shows_chats_and_generates(gw, fake_openai):
    client = ollama.Client(host=gw.url)
    names = [m.model for m in client.list().models]
    assert names == ["gpt-4o-mini:latest"]
    shown = client.show("gpt-4o-mini:latest")
    assert shown.capabilities == ["completion", "tools"]
    r = client.chat(model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}])
    assert r.message.content == "Echo: ping" and r.done and r.done_reason == "stop"
    assert r.prompt_eval_count > 0 and r.eval_count == 2
    assert r.total_duration >= r.eval_duration >= 0 and r.load_duration == 0
    parts = list(client.chat(model="gpt-4o-mini", stream=True,
                             messages=[{"role": "user", "content": "one two three"}]))  # fmt: skip
    assert "".join(p.message.content for p in parts) == "Echo: one two three"
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].eval_count == 4 and parts[-1].total_duration > 0
    g = client.generate(model="gpt-4o-mini", prompt="hey", system="be kind", options={"seed": 1})
    assert g.response == "Echo: hey" and g.done
    sent = fake_openai.chat_requests[-1]["json"]
    assert sent["messages"] == [{"role": "system", "content": "be kind"},
                                {"role": "user", "content": "hey"}] and sent["seed"] == 1  # fmt: skip
    assert requests.get(gw.url + "/api/version", timeout=5).json()["version"] == "0.12.0"
    # The status page counts Ollama's requests with the API's: tags, show, 2 chats, generate, version.
    totals = requests.get(gw.url + "/admin/status.json", timeout=5).json()["requests"]
    assert totals == {"total": 6, "by_class": {"2xx": 6, "4xx": 0, "5xx": 0}}


def test_home_assistant_tool_turn_round_trips_through_a_cloud_model(gw, fake_openai):
    fake_openai.script("tool_call")
    r = requests.post(gw.url + "/api/chat", json=HA_BODY, stream=True, timeout=20)
    assert r.status_code == 200 and r.headers["X-Hoosh-Provider"] == "fake"
    got = lines(r)
    calls = [c for x in got for c in (x["message"].get("tool_calls") or [])]
    # Ollama's arguments are a JSON object, not OpenAI's string.
    assert calls == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert got[-1]["done"] is True and got[-1]["done_reason"] == "stop"
    upstream = fake_openai.chat_requests[-1]["json"]
    assert upstream["tools"] == HA_TOOLS and upstream["model"] == "gpt-4o-mini"
    # HA's next turn: the assistant's call (object arguments) and the tool's result (no call id).
    follow = {**HA_BODY, "messages": HA_BODY["messages"] + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": json.dumps({"data": {"temp": 21}, "error": None})},
    ]}  # fmt: skip
    done = lines(requests.post(gw.url + "/api/chat", json=follow, stream=True, timeout=20))
    assert done[-1]["done"] is True
    sent = fake_openai.chat_requests[-1]["json"]["messages"]
    call = sent[2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert sent[3]["role"] == "tool" and sent[3]["tool_call_id"] == call["id"]


def test_ollama_client_tool_call_not_streamed(gw, fake_openai):
    fake_openai.script("tool_call")
    r = ollama.Client(host=gw.url).chat(model="gpt-4o-mini", tools=HA_TOOLS,
                                        messages=[{"role": "user", "content": "weather?"}])  # fmt: skip
    assert r.message.tool_calls[0].function.name == "get_weather"
    assert r.message.tool_calls[0].function.arguments == {"city": "Paris"}


def test_open_webui_body_maps_options_format_and_keep_alive(gw, fake_openai):
    got = lines(requests.post(gw.url + "/api/chat", json=WEBUI_BODY, stream=True, timeout=20))
    assert "".join(x["message"]["content"] for x in got) == "Echo: hello there"
    sent = fake_openai.chat_requests[-1]["json"]
    assert sent["temperature"] == 0.7 and sent["top_p"] == 0.9 and sent["seed"] == 7
    assert (
        sent["stop"] == ["\n\n"] and sent.get("max_tokens", sent.get("max_completion_tokens")) == 64
    )
    for ignored in ("top_k", "repeat_penalty", "num_ctx", "options", "keep_alive", "think"):
        assert ignored not in sent
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for fmt, want in (("json", {"type": "json_object"}),
                      (schema, {"type": "json_schema", "json_schema": {
                          "name": "response", "schema": schema, "strict": False}})):  # fmt: skip
        body = {**WEBUI_BODY, "stream": False, "format": fmt}
        assert requests.post(gw.url + "/api/chat", json=body, timeout=20).status_code == 200
        assert fake_openai.chat_requests[-1]["json"]["response_format"] == want


def test_budgets_and_the_cache_apply_to_api_chat(fake_openai, gateway_factory):
    block = '[[budgets]]\nname = "zero"\nscope = "cloud"\nmetric = "usd"\nlimit = 0\n' \
            'period = "day"\naction = "block"\n'  # fmt: skip
    gw = gateway_factory(openai_provider_toml(fake_openai) + PRICED + block)
    body = {"model": "gpt-4o-mini", "stream": False, "options": {"temperature": 0},
            "messages": [{"role": "user", "content": "spend"}]}  # fmt: skip
    r = requests.post(gw.url + "/api/chat", json=body, timeout=20)
    assert r.status_code == 429 and "zero" in r.json()["error"]
    assert fake_openai.chat_requests == []
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=gw.url).chat(**body)
    assert e.value.status_code == 429

    paid = gateway_factory(openai_provider_toml(fake_openai) + PRICED)
    first = requests.post(paid.url + "/api/chat", json=body, timeout=20)
    second = requests.post(paid.url + "/api/chat", json=body, timeout=20)
    assert first.headers["X-Hoosh-Cache"] == "MISS" and second.headers["X-Hoosh-Cache"] == "HIT"
    assert (
        float(first.headers["X-Hoosh-Cost-USD"]) > 0 and second.headers["X-Hoosh-Cost-USD"] == "0"
    )
    assert first.json()["message"] == second.json()["message"]
    assert len(fake_openai.chat_requests) == 1
    conn = sqlite3.connect(paid.tmp / "data" / "hoosh-edge.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 1
    finally:
        conn.close()
    access = [json.loads(x) for x in paid.log.splitlines() if '"path":"/api/chat"' in x]
    assert access[0]["provider"] == "fake" and access[0]["cost_usd"] > 0
    metrics = requests.get(paid.url + "/metrics", timeout=5).text
    assert 'hoosh_requests_total{route="/api/chat",status="200"} 2.0' in metrics


def test_aliases_and_provider_ids_are_listed_and_resolve(fake_openai, gateway_factory):
    cfg = openai_provider_toml(fake_openai, models='["gpt-4o-mini"]')
    gw = gateway_factory(cfg + '[routing]\naliases = { helper = ["fake:gpt-4o-mini"] }\n')
    client = ollama.Client(host=gw.url)
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {"helper:latest", "gpt-4o-mini:latest"}
    assert listed["helper:latest"].size == 0 and len(listed["helper:latest"].digest) == 64
    assert client.show("helper").capabilities == ["completion", "tools"]
    r = client.chat(model="helper:latest", messages=[{"role": "user", "content": "via alias"}])
    assert r.message.content == "Echo: via alias" and r.model == "helper:latest"
    assert fake_openai.chat_requests[-1]["json"]["model"] == "gpt-4o-mini"
    r = client.chat(model="fake:gpt-4o-mini", messages=[{"role": "user", "content": "direct"}])
    assert r.message.content == "Echo: direct"
    with pytest.raises(ollama.ResponseError) as e:
        client.show("local:nothing")
    assert e.value.status_code == 404


def test_keys_guard_the_api_and_pulls_need_the_admin_key(fake_openai, gateway_factory):
    cfg = f'[server]\napi_keys = ["{KEY}"]\nadmin_key = "{ADMIN}"\n'
    gw = gateway_factory(cfg + openai_provider_toml(fake_openai, models='["gpt-4o-mini"]'))
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=gw.url).list()
    assert e.value.status_code == 401
    client = ollama.Client(
        host=gw.url, headers={"Authorization": f"Bearer {KEY}"}
    )  # as HA sends it
    assert [m.model for m in client.list().models] == ["gpt-4o-mini:latest"]
    assert client.chat(model="gpt-4o-mini", messages=[{"role": "user", "content": "k"}]).done
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("smollm2")
    assert e.value.status_code == 403 and "admin" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("smollm2")
    assert e.value.status_code == 403


def test_errors_take_ollamas_shape(gw, fake_openai):
    client = ollama.Client(host=gw.url)
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        client.show("nope:latest")
    assert e.value.status_code == 404
    cases = [
        (
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "x", "images": ["aGk="]}],
            },
            400,
            "images",
        ),  # fmt: skip
        ({"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
        ({"model": "gpt-4o-mini", "messages": "hi"}, 400, "messages"),
        ({"model": "gpt-4o-mini", "messages": [], "keep_alive": "soon"}, 400, "keep_alive"),
        (
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "x"}],
                "options": {"num_predict": "many"},
            },
            400,
            "num_predict",
        ),  # fmt: skip
        ({"model": "gpt-4o-mini", "messages": [{"role": "tool", "content": "x"}]}, 400, "tool"),
        ({"model": "", "messages": []}, 400, "model"),
        ([1, 2], 400, "object"),
    ]
    for body, status, word in cases:
        r = requests.post(gw.url + "/api/chat", json=body, timeout=10)
        assert r.status_code == status and word in r.json()["error"], (body, r.text)
    r = requests.post(gw.url + "/api/generate", json={"model": "gpt-4o-mini", "prompt": "x",
                                                      "raw": True}, timeout=10)  # fmt: skip
    assert r.status_code == 400 and "raw" in r.json()["error"]
    r = requests.post(gw.url + "/api/chat", data=b"{not json", timeout=10)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = requests.get(gw.url + "/api/nothing", timeout=10)
    assert r.status_code == 404 and "Unknown path" in r.json()["error"]
    for path in ("/api/create", "/api/copy", "/api/push", "/api/blobs/sha256:00"):
        r = requests.post(gw.url + path, json={}, timeout=10)
        assert r.status_code == 501 and "not supported" in r.json()["error"]
    assert fake_openai.chat_requests == []


def test_an_upstream_cut_mid_stream_ends_with_one_error_line(gw, fake_openai):
    fake_openai.script("cut", 2)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a b c d e f"}]}
    got = lines(requests.post(gw.url + "/api/chat", json=body, stream=True, timeout=20))
    assert "error" in got[-1] and not any(x.get("done") for x in got)
    assert all("message" in x for x in got[:-1])
    fake_openai.script("cut", 2)  # not streamed: the failure is the answer's status
    r = requests.post(gw.url + "/api/chat", json={**body, "stream": False}, timeout=20)
    assert r.status_code == 502 and isinstance(r.json()["error"], str)


def test_curl_and_head_get_the_probe_text_a_browser_the_page(gw):
    out = subprocess.run(["curl", "-s", "-i", gw.url + "/"], capture_output=True, text=True,
                         timeout=10).stdout  # fmt: skip
    assert out.rstrip().endswith("Ollama is running") and "text/plain" in out
    head = requests.head(gw.url + "/", timeout=5)
    assert head.status_code == 200 and head.headers["Content-Type"].startswith("text/plain")
    page = requests.get(gw.url + "/", headers={"Accept": "text/html,*/*;q=0.8"}, timeout=5)
    assert page.headers["Content-Type"].startswith("text/html") and "<html" in page.text.lower()
    # curl -d posts JSON as a form, as Ollama's own docs do it.
    out = subprocess.run(["curl", "-s", gw.url + "/api/chat", "-d", json.dumps(
        {"model": "gpt-4o-mini", "stream": False,
         "messages": [{"role": "user", "content": "curl"}]})],
        capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    assert json.loads(out)["message"]["content"] == "Echo: curl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_optional_second_listener_serves_ollamas_api(fake_openai, gateway_factory):
    port = _free_port()
    gw = gateway_factory(f"[ollama]\nport = {port}\n" + openai_provider_toml(fake_openai))
    deadline = time.monotonic() + 5
    while not any(f"Ollama's API also on http://127.0.0.1:{port}" in x for x in gw.banner):
        assert time.monotonic() < deadline, gw.banner
        time.sleep(0.05)
    client = ollama.Client(host=f"http://127.0.0.1:{port}")
    r = client.chat(model="gpt-4o-mini", messages=[{"role": "user", "content": "second"}])
    assert r.message.content == "Echo: second"
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).text == "Ollama is running"


def test_home_assistant_as_it_runs_async_client_poll_and_tool_turn(fake_openai, gateway_factory):
    """HA's coordinator polls list() and ps() together every 30 s; its agent streams a chat."""
    cfg = f'[server]\napi_keys = ["{KEY}"]\n'
    gw = gateway_factory(cfg + openai_provider_toml(fake_openai, models='["gpt-4o-mini"]'))

    async def home_assistant() -> tuple[list[str], list, list[dict]]:
        client = ollama.AsyncClient(host=gw.url, headers={"Authorization": f"Bearer {KEY}"})
        installed, loaded = await asyncio.gather(client.list(), client.ps())
        fake_openai.script("tool_call")
        calls = []
        stream = await client.chat(model="gpt-4o-mini", messages=HA_BODY["messages"],
                                   tools=HA_TOOLS, stream=True, keep_alive="300s",
                                   options={"num_ctx": 8192}, think=None, format=None)  # fmt: skip
        async for part in stream:
            calls += [dict(c.function) for c in part.message.tool_calls or ()]
        return [m.model for m in installed.models], list(loaded.models), calls

    models, loaded, calls = asyncio.run(home_assistant())
    assert models == ["gpt-4o-mini:latest"]
    assert loaded == []  # no local model in memory
    assert calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert fake_openai.chat_requests[-1]["json"]["tools"] == HA_TOOLS
