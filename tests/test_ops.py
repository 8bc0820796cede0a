"""Running it on the box: reload, metrics, device-aware routing, deadlines, shutdown."""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import openai_provider_toml
from tests.fake_openai import FakeOpenAI
from tests.synth_gguf import make_tiny_gguf


def chat(gw, model="gpt-4o-mini", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return requests.post(gw.url + "/v1/chat/completions", json=body, timeout=20)


def rr_config(fakes: list[FakeOpenAI]) -> str:
    text = "".join(openai_provider_toml(f, name=f"p{i}") for i, f in enumerate(fakes))
    targets = ", ".join(f'"p{i}:gpt-4o-mini"' for i in range(len(fakes)))
    return text + f'\n[routing]\nstrategy = "round_robin"\naliases = {{ chat = [{targets}] }}\n'


def test_round_robin_is_fair_before_and_after_a_reload(gateway_factory):
    with FakeOpenAI() as a, FakeOpenAI() as b, FakeOpenAI() as c:
        gw = gateway_factory(rr_config([a, b]))
        seen = collections.Counter(
            chat(gw, model="chat").headers["X-Hoosh-Provider"] for _ in range(6)
        )
        assert seen == {"p0": 3, "p1": 3}
        gw.config_path.write_text(rr_config([a, b, c]))  # the target list grows
        r = requests.post(gw.url + "/admin/reload", timeout=10).json()
        assert r["reloaded"] is True and r["providers"] == ["p0", "p1", "p2"]
        seen = collections.Counter(
            chat(gw, model="chat").headers["X-Hoosh-Provider"] for _ in range(9)
        )
        assert seen == {"p0": 3, "p1": 3, "p2": 3}
        gw.config_path.write_text(rr_config([c]))  # and shrinks, by SIGHUP this time
        gw.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        seen = collections.Counter(
            chat(gw, model="chat").headers["X-Hoosh-Provider"] for _ in range(3)
        )
        assert seen == {"p0": 3}  # the one provider left is now named p0, served by fake c
        assert len(c.chat_requests) == 3 + 3


def test_bad_new_config_keeps_the_old_one(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    gw.config_path.write_text("[server]\nport = 'eighty'\n")
    r = requests.post(gw.url + "/admin/reload", timeout=10).json()
    assert r["reloaded"] is False and "server.port" in r["error"]
    assert chat(gw).status_code == 200  # still serving on the old config


def test_metrics_cover_requests_tokens_spend_cache_models_and_device(
    fake_openai, gateway_factory, tmp_path
):
    tiny = make_tiny_gguf(tmp_path / "tiny.gguf")
    gw = gateway_factory(openai_provider_toml(fake_openai) + f"""
[pricing."gpt-4o-mini"]
input_usd_per_mtok = 1
output_usd_per_mtok = 2
[local.llm.models]
tiny = "{tiny}"
[[budgets]]
name = "daily"
scope = "cloud"
metric = "usd"
limit = 1
period = "day"
action = "block"
""")  # fmt: skip
    chat(gw, temperature=0)
    chat(gw, temperature=0)  # a cache hit
    chat(gw, model="tiny", max_tokens=3)
    text = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'hoosh_requests_total{route="/v1/chat/completions",status="200"} 3' in text
    assert 'hoosh_tokens_out_total{provider="local"} 3' in text
    assert 'hoosh_spend_usd_total{provider="fake"}' in text
    assert 'hoosh_cache_total{result="hit"} 1' in text
    assert 'hoosh_model_loaded{kind="llm",model="tiny"} 1' in text
    assert 'hoosh_budget_remaining{metric="usd",rule="daily",unit="USD"}' in text
    assert "hoosh_device_memory_available_bytes" in text
    assert "hoosh_request_duration_seconds_bucket" in text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", n_ctx_train=8192)


def test_device_aware_routing_prefers_the_cloud_when_local_is_queued(
    tiny, fake_openai, gateway_factory
):
    gw = gateway_factory(openai_provider_toml(fake_openai) + f"""
[local.llm]
n_ctx = 8192
[local.llm.models]
tiny = "{tiny}"
[routing]
aliases = {{ chat = ["local:tiny", "fake:gpt-4o-mini"] }}
prefer_cloud_when = {{ queue_depth = 1 }}
""")  # fmt: skip
    assert chat(gw, model="chat", max_tokens=2).headers["X-Hoosh-Provider"] == "local"
    body = {"model": "tiny", "stream": True, "max_tokens": 6000,
            "messages": [{"role": "user", "content": "go"}]}  # fmt: skip
    long = requests.post(gw.url + "/v1/chat/completions", json=body, stream=True, timeout=30)
    lines = long.iter_lines()
    next(x for x in lines if x.startswith(b"data:"))
    # The local model is busy: with queue_depth = 1 the cloud goes first instead of queueing.
    assert chat(gw, model="chat", max_tokens=2).headers["X-Hoosh-Provider"] == "fake"
    long.close()


def test_request_deadline_gives_504(fake_openai, gateway_factory):
    gw = gateway_factory("[server]\nrequest_timeout_s = 1\n" + openai_provider_toml(fake_openai))
    fake_openai.script("slow", 1.8)
    r = chat(gw)
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"


def test_sigterm_lets_a_running_request_finish(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("slow", 1.0)
    import threading

    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", chat(gw)))
    t.start()
    time.sleep(0.3)
    gw.proc.send_signal(signal.SIGTERM)
    t.join(10)
    assert box["r"].status_code == 200  # drained, not dropped
    assert gw.proc.wait(10) == 0


def test_circuit_opens_after_three_failures_and_the_probe_closes_it(gateway_factory):
    with FakeOpenAI() as bad, FakeOpenAI() as good:
        cfg = (openai_provider_toml(bad, name="first", extra="max_retries = 0")
               + openai_provider_toml(good, name="second")
               + "\n[routing]\nbreaker_cooldown_s = 2\n")  # fmt: skip
        gw = gateway_factory(cfg)
        for _ in range(3):
            bad.script("status", 503)
            assert chat(gw).headers["X-Hoosh-Provider"] == "second"
        health = requests.get(gw.url + "/v1/health", timeout=5).json()
        first = next(p for p in health["providers"] if p["name"] == "first")
        assert first["state"] == "down" and first["consecutive_failures"] == 3
        tried = len(bad.chat_requests)
        assert chat(gw).headers["X-Hoosh-Provider"] == "second"
        assert len(bad.chat_requests) == tried  # an open circuit is not tried while others serve
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the background probe finds it answering again
            health = requests.get(gw.url + "/v1/health", timeout=5).json()
            if next(p for p in health["providers"] if p["name"] == "first")["state"] == "ok":
                break
            time.sleep(0.2)
        assert any(r["path"].endswith("/models") for r in bad.requests)
        assert chat(gw).headers["X-Hoosh-Provider"] == "first"


def test_access_log_is_one_json_line_per_request_without_prompts(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    secret_prompt = "my bank pin is 4711"
    r = chat(gw, messages=[{"role": "user", "content": secret_prompt}])
    assert r.status_code == 200
    time.sleep(0.2)
    import json

    lines = [json.loads(x) for x in gw.log.splitlines() if x.startswith("{")]
    mine = [x for x in lines if x["request_id"] == r.headers["X-Request-Id"]]
    assert len(mine) == 1
    line = mine[0]
    assert line["status"] == 200 and line["provider"] == "fake" and line["model"] == "gpt-4o-mini"
    assert line["prompt_tokens"] > 0 and "duration_ms" in line and line["cache"] == "BYPASS"
    assert secret_prompt not in gw.log and "Echo" not in gw.log  # neither prompt nor answer


def test_config_from_the_environment_variable(fake_openai, tmp_path):
    from tests.conftest import GatewayProcess

    proc = GatewayProcess(openai_provider_toml(fake_openai), tmp_path,
                          env={"HOOSH_EDGE_CONFIG": str(tmp_path / "hoosh-edge.toml")})  # fmt: skip
    import subprocess
    import sys

    from tests.conftest import ROOT

    p = subprocess.Popen([sys.executable, str(ROOT / "hoosh_edge.py"), "--port", "0"], cwd=tmp_path,
                         env=proc.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        banner = [p.stdout.readline() for _ in range(3)]  # listening, the provider, the config
        assert "listening on" in banner[0]
        assert "fake (openai," in banner[1]  # the provider came from the file the variable names
        assert banner[2].strip() == f"config: {tmp_path / 'hoosh-edge.toml'}"
    finally:
        p.terminate()
        p.wait(15)


def test_access_lines_of_failed_calls_name_the_target_tried_last(fake_openai, gateway_factory):
    """A 502 or 504 says whose it was: provider and model are on the access line."""
    import json

    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("status", 500)
    fake_openai.script("status", 500)
    fake_openai.script("status", 500)
    fake_openai.script("status", 500)
    r502 = chat(gw)
    fake_openai.script("hang", 4)
    r504 = chat(gw)
    fake_openai.script("status", 502)
    fake_openai.script("status", 502)
    fake_openai.script("status", 502)
    fake_openai.script("status", 502)
    stream = requests.post(gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert (r502.status_code, r504.status_code, stream.status_code) == (502, 504, 502)
    time.sleep(0.2)
    lines = {x["request_id"]: x for x in map(json.loads, filter(
        lambda s: s.startswith("{"), gw.log.splitlines()))}  # fmt: skip
    for r in (r502, r504, stream):
        line = lines[r.headers["X-Request-Id"]]
        assert (line["status"], line["provider"], line["model"]) == (
            r.status_code, "fake", "gpt-4o-mini")  # fmt: skip
