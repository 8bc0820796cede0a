"""Budgets through the gateway: exact books under concurrent load, kill -9, live rule changes."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from tests.conftest import GatewayProcess, openai_provider_toml
from tests.synth_gguf import make_tiny_gguf

# Expensive on purpose, so a handful of requests reach a one-cent limit.
PRICED = """
[pricing."gpt-4o-mini"]
input_usd_per_mtok = 10
output_usd_per_mtok = 100
"""

ONE_CENT_BLOCK = """
[[budgets]]
name = "cent"
scope = "cloud"
metric = "usd"
limit = 0.01
period = "day"
action = "block"
"""


def chat(gw, model="gpt-4o-mini", stream=False, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
            "stream": stream, **extra}  # fmt: skip
    return requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30, stream=stream)


def ledger_rows(gw) -> list[sqlite3.Row]:
    conn = sqlite3.connect(gw.tmp / "data" / "hoosh-edge.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM ledger ORDER BY id").fetchall()
    finally:
        conn.close()


def test_fifty_concurrent_paid_requests_never_overspend(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai) + PRICED + ONE_CENT_BLOCK)
    results: list[requests.Response] = []
    lock = threading.Lock()

    def one():
        r = chat(gw)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code != 200]
    assert ok and refused, (len(ok), len(refused))
    for r in refused:
        assert r.status_code == 429
        err = r.json()["error"]
        assert err["code"] == "budget_exceeded" and "cent" in err["message"]
        assert r.headers["Retry-After"].isdigit()
    spent = sum(row["cost_micro_usd"] for row in ledger_rows(gw))
    assert 0 < spent <= 10_000  # micro-dollars: never over one cent
    assert len(ledger_rows(gw)) == len(ok)
    # Each admitted answer says what it cost, and the books agree to the micro-dollar.
    costs = [Decimal(r.headers["X-Hoosh-Cost-USD"]) for r in ok]
    assert sum(costs) * 1_000_000 == spent
    assert all(r.json()["usage"]["cost_usd"] > 0 for r in ok)
    usage = requests.get(gw.url + "/v1/usage?period=day&group_by=provider", timeout=5).json()
    assert Decimal(usage["total_cost_usd"]) * 1_000_000 == spent
    print(
        f"50 concurrent: {len(ok)} admitted, {len(refused)} refused, spent {spent} of 10000 micro-USD"
    )


def test_kill_9_under_load_keeps_every_committed_entry(fake_openai, tmp_path):
    cfg = openai_provider_toml(fake_openai) + PRICED
    gw = GatewayProcess(cfg, tmp_path).start()
    done: list[str] = []
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                r = chat(gw)
            except requests.RequestException:
                return
            if r.status_code == 200:
                done.append(r.headers["X-Request-Id"])

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    gw.kill9()  # in the middle of the load
    stop.set()
    for t in threads:
        t.join(10)
    assert len(done) > 10
    gw2 = GatewayProcess(cfg, tmp_path).start()  # same data dir
    try:
        recorded = {row["request_id"] for row in ledger_rows(gw2)}
        assert set(done) <= recorded  # every answer a client got was booked before it was sent
        conn = sqlite3.connect(tmp_path / "data" / "hoosh-edge.db")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        assert chat(gw2).status_code == 200  # and it serves on
    finally:
        gw2.stop()


def test_stream_cut_midway_is_billed_by_estimate(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai) + PRICED)
    fake_openai.script("cut", 3)
    r = chat(gw, stream=True, max_tokens=50,
             messages=[{"role": "user", "content": "one two three four five six"}])  # fmt: skip
    list(r.iter_lines())
    time.sleep(0.3)
    rows = ledger_rows(gw)
    assert len(rows) == 1
    assert rows[0]["completion_tokens"] > 0 and rows[0]["cost_micro_usd"] > 0


def test_streamed_usage_is_billed_from_the_final_chunk(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai) + PRICED)
    r = chat(gw, stream=True, stream_options={"include_usage": True})
    docs = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith(b"data: {")]
    usage = docs[-1]["usage"]
    time.sleep(0.2)
    row = ledger_rows(gw)[0]
    assert row["prompt_tokens"] == usage["prompt_tokens"]
    assert row["completion_tokens"] == usage["completion_tokens"]
    assert usage["cost_usd"] == pytest.approx(row["cost_micro_usd"] / 1e6)


def test_admin_api_changes_rules_live(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai) + PRICED)
    assert chat(gw).status_code == 200
    r = requests.post(gw.url + "/admin/budgets", timeout=5, json={
        "name": "nothing", "scope": "provider:fake", "metric": "requests", "limit": 2,
        "period": "hour", "action": "block"})  # fmt: skip
    assert r.status_code == 201, r.text
    assert chat(gw).status_code == 200  # the request made before the rule counts too
    refused = chat(gw)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    r = requests.patch(gw.url + "/admin/budgets/nothing", json={"limit": 10}, timeout=5)
    assert r.status_code == 200 and r.json()["limit"] == 10
    ok = chat(gw)
    assert ok.status_code == 200
    assert ok.headers["X-Hoosh-Budget-Remaining"].startswith("7 ")
    listed = requests.get(gw.url + "/admin/budgets", timeout=5).json()["data"]
    assert [b["name"] for b in listed] == ["nothing"] and listed[0]["used"] == "3"
    assert requests.delete(gw.url + "/admin/budgets/nothing", timeout=5).status_code == 200
    bad = requests.post(gw.url + "/admin/budgets", json={"name": "x", "scope": "moon"}, timeout=5)
    assert bad.status_code == 400


def test_unpriced_cloud_model_is_refused_under_a_usd_rule(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai, models='["mystery-*"]') + ONE_CENT_BLOCK)
    r = chat(gw, model="mystery-1")
    assert r.status_code == 429
    assert "price" in r.json()["error"]["message"].lower()
    assert fake_openai.chat_requests == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_local_only_rule_keeps_local_serving_and_stops_the_cloud(
    tiny, fake_openai, gateway_factory
):
    cfg = (
        openai_provider_toml(fake_openai)
        + PRICED
        + f"""
[local.llm.models]
tiny = "{tiny}"
[routing]
aliases = {{ chat = ["local:tiny", "fake:gpt-4o-mini"] }}
[[budgets]]
name = "no-cloud"
scope = "cloud"
metric = "usd"
limit = 0
period = "day"
action = "local_only"
"""
    )
    gw = gateway_factory(cfg)
    r = chat(gw, model="chat")
    assert r.status_code == 200 and r.headers["X-Hoosh-Provider"] == "local"
    r = chat(gw, model="gpt-4o-mini")
    assert r.status_code == 429 and "no-cloud" in r.json()["error"]["message"]
    assert fake_openai.chat_requests == []
    rows = ledger_rows(gw)
    assert len(rows) == 1 and rows[0]["is_local"] == 1 and rows[0]["cost_micro_usd"] == 0


def test_the_quick_start_promise(tiny, fake_openai, gateway_factory):
    """Serve locally; use the cloud when local can't; never spend more than the daily limit."""
    cfg = (
        openai_provider_toml(fake_openai)
        + PRICED
        + ONE_CENT_BLOCK
        + f"""
[local.llm]
max_queue = 0
[local.llm.models]
tiny = "{tiny}"
[routing]
aliases = {{ chat = ["local:tiny", "fake:gpt-4o-mini"] }}
"""
    )
    gw = gateway_factory(cfg)
    assert chat(gw, model="chat").headers["X-Hoosh-Provider"] == "local"
    results = []
    lock = threading.Lock()

    def one():
        r = chat(gw, model="chat", max_tokens=20)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    providers = [r.headers.get("X-Hoosh-Provider") for r in results if r.status_code == 200]
    assert (
        "local" in providers and "fake" in providers
    )  # local first, the cloud when local was busy
    assert all(r.status_code in (200, 429) for r in results)
    cloud_spend = sum(row["cost_micro_usd"] for row in ledger_rows(gw) if not row["is_local"])
    assert cloud_spend <= 10_000


def test_reservation_uses_the_clamped_max_tokens(fake_openai, gateway_factory):
    # 100000 output tokens at $100/M would reserve $10 and be refused by a one-cent rule; clamped
    # to the provider's limit of 5 the worst case fits, so the request is admitted.
    gw = gateway_factory(openai_provider_toml(fake_openai, extra="max_tokens_limit = 5")
                         + PRICED + ONE_CENT_BLOCK)  # fmt: skip
    r = chat(gw, max_tokens=100000)
    assert r.status_code == 200, r.text
    assert fake_openai.chat_requests[-1]["json"]["max_tokens"] == 5
