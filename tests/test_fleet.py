"""Two gateway processes on one PostgreSQL: one budget, one set of keys, and a kill -9.

Real gateways (``python hoosh_edge.py``), a real PostgreSQL server (``tests/pg_server.py``) and
the harshest legal upstream (``FakeOpenAI(billing=True)``, which bills every call it starts).
"""

from __future__ import annotations

import json
import math
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.conftest import GatewayProcess, openai_provider_toml, require, require_module
from tests.fake_openai import FakeOpenAI
from tests.synth_gguf import make_tiny_gguf
from tests.test_storage import (
    CLOUD_RULE,
    health,
    local,
    local_toml,
    paid,
    requests_by_provider,
)

IN_USD_PER_MTOK, OUT_USD_PER_MTOK = 10, 100
PRICED = f"""
[pricing."gpt-4o-mini"]
input_usd_per_mtok = {IN_USD_PER_MTOK}
output_usd_per_mtok = {OUT_USD_PER_MTOK}
max_output_tokens = 300
"""
ADMIN_KEY = "hoosh-fleet-admin-key-0123456789"


def cost_micro(bill: dict[str, int]) -> int:
    return math.ceil(bill["prompt_tokens"] * IN_USD_PER_MTOK +
                     bill["completion_tokens"] * OUT_USD_PER_MTOK)  # fmt: skip


def fleet_config(fake: FakeOpenAI, url: str, *, extra: str = "", lease_s: int = 30) -> str:
    provider = openai_provider_toml(fake).replace("timeout_s = 2\n", "timeout_s = 30\n")
    return (
        f"[server]\nmax_connections_per_client = 200\n{extra}\n"
        f'[database]\nurl = "{url}"\nlease_s = {lease_s}\n' + provider + PRICED
    )


def rows(url: str, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(sql, params)
        names = [c.name for c in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def chat(gw: GatewayProcess, text: str, headers: dict[str, str] | None = None,
         **extra: Any) -> requests.Response:  # fmt: skip
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}],
            "max_tokens": 100, **extra}  # fmt: skip
    return requests.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


@pytest.fixture
def billing_openai():
    with FakeOpenAI(billing=True) as fake:
        yield fake


def test_eighty_concurrent_calls_on_two_gateways_never_cross_one_block_rule(
    billing_openai, gateway_factory, pg_url
):
    fake = billing_openai
    # One call: ~60 prompt tokens and 100 completion tokens, about $0.0106; room for ~30 of 80.
    limit_micro = 320_000
    rule = f"""
[[budgets]]
name = "shared"
scope = "cloud"
metric = "usd"
limit = "{limit_micro / 1_000_000}"
period = "total"
action = "block"
"""
    cfg = fleet_config(fake, pg_url) + rule
    gws = [gateway_factory(cfg), gateway_factory(cfg)]
    n = 80
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        try:
            r = chat(gws[i % 2], f"call {i:02d}: tell me about the weather in Paris please.")
            results[i] = (i % 2, r.status_code, r.text)
        except requests.RequestException as e:
            results[i] = (i % 2, 0, str(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    served = [r for r in results if r[1] == 200]
    refused = [r for r in results if r[1] != 200]
    for _, status, text in refused:
        assert status == 429, text
        assert json.loads(text)["error"]["code"] == "budget_exceeded", text
    billed = sum(cost_micro(b) for b in fake.billed)
    # The one promise: both boxes together never let the upstream bill past the rule.
    assert billed <= limit_micro, (billed, limit_micro)
    # Not a trivial pass: most of the room was used, and both boxes served and refused.
    assert billed >= limit_micro * 0.8, (billed, limit_micro)
    assert {box for box, *_ in served} == {0, 1}
    assert refused
    # The shared books hold exactly the upstream's bill, and no reservation is left open.
    ledger = rows(pg_url, "SELECT cost_micro_usd FROM ledger WHERE kind = 'call'")
    assert len(ledger) == len(fake.billed) == len(served)
    assert sum(r["cost_micro_usd"] for r in ledger) == billed
    assert rows(pg_url, "SELECT id FROM reservations") == []
    # Each box's view of the rule is the shared one.
    for gw in gws:
        doc = requests.get(gw.url + "/admin/budgets/shared", timeout=10).json()
        assert Decimal(doc["used"]) * 1_000_000 == billed and Decimal(doc["reserved"]) == 0
    print(f"\n80 concurrent on 2 gateways: {len(served)} served, {len(refused)} refused, "
          f"billed ${billed / 1e6:.6f} of ${limit_micro / 1e6:.2f}")  # fmt: skip


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_key_made_on_one_gateway_works_on_the_other_and_its_revocation_too(
    fake_openai, gateway_factory, pg_url
):
    cfg = fleet_config(fake_openai, pg_url, extra=f'admin_key = "{ADMIN_KEY}"')
    a, b = gateway_factory(cfg), gateway_factory(cfg)
    r = requests.post(a.url + "/admin/keys", json={"name": "phone"}, headers=bearer(ADMIN_KEY),
                      timeout=10)  # fmt: skip
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    # At once on the other box: no cache to wait out.
    assert chat(b, "hi", headers=bearer(key)).status_code == 200
    assert chat(a, "hi", headers=bearer(key)).status_code == 200
    listed = requests.get(b.url + "/admin/keys", headers=bearer(ADMIN_KEY), timeout=10).json()
    assert [k["name"] for k in listed["data"]] == ["phone"]
    r = requests.delete(b.url + "/admin/keys/phone", headers=bearer(ADMIN_KEY), timeout=10)
    assert r.status_code == 200, r.text
    refused = chat(a, "hi", headers=bearer(key))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


def test_kill_9_of_one_gateway_loses_no_answered_call_and_its_holds_are_booked_by_the_other(
    fake_openai, gateway_factory, pg_url
):
    # A rule, so every paid call holds a reservation while it runs.
    rule = '[[budgets]]\nname = "roomy"\nscope = "cloud"\nmetric = "usd"\nlimit = "100"\n'
    rule += 'period = "total"\naction = "block"\n'
    cfg = fleet_config(fake_openai, pg_url, lease_s=5) + rule
    a, b = gateway_factory(cfg), gateway_factory(cfg)
    answered: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                r = chat(a, "kill me softly")
            except requests.RequestException:
                return
            if r.status_code == 200:
                answered.append(r.headers["X-Request-Id"])

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    fake_openai.script("hang", 30)  # one call stays in flight on a: its hold is open at the kill
    threading.Thread(target=lambda: chat_quietly(a), daemon=True).start()
    time.sleep(0.8)
    a.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(answered) > 10
    booked = {r["request_id"] for r in rows(pg_url, "SELECT request_id FROM ledger")}
    assert set(answered) <= booked  # every answer a client got was booked before it was sent
    # The dead box's open holds are booked at their reservation by the live box, after the lease.
    deadline = time.monotonic() + 20
    while rows(pg_url, "SELECT id FROM reservations") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert rows(pg_url, "SELECT id FROM reservations") == []
    orphaned = rows(pg_url, "SELECT cost_micro_usd FROM ledger WHERE kind = 'orphaned'")
    assert orphaned and all(r["cost_micro_usd"] > 0 for r in orphaned)
    assert "of a box whose lease ran out" in b.log
    assert chat(b, "still here").status_code == 200


def chat_quietly(gw: GatewayProcess) -> None:
    try:
        chat(gw, "hang on")
    except requests.RequestException:
        pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def own_pg():
    """A PostgreSQL server of this test's own, to stop and start again."""
    require_module("psycopg", "psycopg is not installed (pip install 'psycopg[binary]')")
    from tests.pg_server import PgServer, pg_tools

    require(pg_tools(), "initdb / pg_ctl are not installed (apt-get install postgresql)")
    server = PgServer().start()
    yield server
    server.stop()


def test_the_database_away_refuses_paid_calls_serves_local_ones_and_recovers(
    own_pg, tiny, fake_openai, gateway_factory
):
    url = own_pg.new_database()
    cfg = fleet_config(fake_openai, url) + local_toml(tiny) + CLOUD_RULE
    gw = gateway_factory(cfg)
    assert paid(gw).status_code == 200
    assert local(gw, "warm").status_code == 200
    upstream_before = len(fake_openai.chat_requests)

    own_pg.pause()
    r = paid(gw)
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "storage_unavailable" and err["type"] == "server_error"
    assert f"127.0.0.1:{own_pg.port}" in err["message"] and "PostgreSQL" in err["message"]
    s = paid(gw, stream=True)
    assert s.status_code == 503 and s.json()["error"]["code"] == "storage_unavailable"
    assert len(fake_openai.chat_requests) == upstream_before  # nothing went upstream unbooked
    served = [local(gw, f"while away {i}") for i in range(3)]
    assert [x.status_code for x in served] == [200, 200, 200], [x.text for x in served]
    doc = health(gw)
    assert doc["status"] == "degraded", doc
    assert doc["storage"]["books"]["state"] == "unavailable"
    assert doc["storage"]["pending_usage"] == 3
    metrics = requests.get(gw.url + "/metrics", timeout=10)
    assert metrics.status_code == 200 and "hoosh_storage_writable 0" in metrics.text
    budgets = requests.get(gw.url + "/admin/budgets", timeout=10)
    assert budgets.status_code == 503 and budgets.json()["error"]["code"] == "storage_unavailable"
    page = requests.get(gw.url + "/admin/status.json", timeout=10)
    assert page.status_code == 200 and "cannot be used" in page.json()["budgets"]["error"]

    own_pg.resume()  # no restart of the gateway
    r = paid(gw)
    assert r.status_code == 200, r.text
    doc = health(gw)
    assert doc["status"] == "ok" and doc["storage"]["pending_usage"] == 0, doc
    # Every call served while the database was away reached the books once it came back.
    assert requests_by_provider(gw) == {"fake": 2, "local": 4}
    assert "Traceback" not in gw.log, gw.log


def test_a_shared_cache_answers_on_one_box_what_the_other_stored(
    fake_openai, gateway_factory, pg_url
):
    cfg = fleet_config(fake_openai, pg_url) + "\n[cache]\nshared = true\n"
    a, b = gateway_factory(cfg), gateway_factory(cfg)
    first = chat(a, "the same question", temperature=0)
    assert first.status_code == 200 and first.headers["X-Hoosh-Cache"] == "MISS"
    upstream = len(fake_openai.chat_requests)
    again = chat(b, "the same question", temperature=0)
    assert again.status_code == 200 and again.headers["X-Hoosh-Cache"] == "HIT", again.headers
    assert len(fake_openai.chat_requests) == upstream  # answered from the shared cache
    content = again.json()["choices"][0]["message"]["content"]
    assert content == first.json()["choices"][0]["message"]["content"]
    stored = rows(pg_url, "SELECT kind, entries FROM response_cache, response_cache_totals")
    assert stored == [{"kind": "chat", "entries": 1}]
    # Without shared, each box keeps its own: the other box misses.
    local_cfg = fleet_config(fake_openai, pg_url)
    c, d = gateway_factory(local_cfg), gateway_factory(local_cfg)
    assert chat(c, "another question", temperature=0).headers["X-Hoosh-Cache"] == "MISS"
    assert chat(d, "another question", temperature=0).headers["X-Hoosh-Cache"] == "MISS"


def test_a_shared_cache_without_a_database_stops_start_up(fake_openai, gateway_factory):
    with pytest.raises(RuntimeError) as caught:
        gateway_factory(openai_provider_toml(fake_openai) + "\n[cache]\nshared = true\n")
    assert "needs a [database] table" in str(caught.value)


def test_the_cli_on_one_box_makes_a_key_every_box_takes_and_lists_the_shared_budget(
    fake_openai, gateway_factory, pg_url
):
    from tests.test_budget_bounds import hoosh

    rule = '[[budgets]]\nname = "fleet"\nscope = "cloud"\nmetric = "usd"\nlimit = "5"\n'
    rule += 'period = "day"\naction = "block"\n'
    cfg = fleet_config(fake_openai, pg_url, extra=f'admin_key = "{ADMIN_KEY}"') + rule
    a, b = gateway_factory(cfg), gateway_factory(cfg)
    made = hoosh("keys", "create", "laptop", config=a.config_path)
    assert made.returncode == 0, made.stderr
    key = next(w for w in made.stdout.split() if w.startswith("hk-"))
    for gw in (a, b):
        assert chat(gw, "from the laptop", headers=bearer(key)).status_code == 200
    listed = hoosh("budget", "list", config=b.config_path)
    assert listed.returncode == 0 and "fleet" in listed.stdout, listed.stdout + listed.stderr
    gone = hoosh("keys", "revoke", "laptop", config=b.config_path)
    assert gone.returncode == 0, gone.stderr
    assert chat(a, "from the laptop", headers=bearer(key)).status_code == 401


def test_a_box_that_cannot_reach_the_database_at_start_says_so_in_one_line(
    fake_openai, gateway_factory
):
    from tests.pg_server import free_port

    port = free_port()  # nothing listens there
    cfg = fleet_config(fake_openai, f"postgresql://hoosh@127.0.0.1:{port}/books")
    with pytest.raises(RuntimeError) as caught:
        gateway_factory(cfg.replace("[database]\n", "[database]\nconnect_timeout_s = 1\n"))
    said = str(caught.value)
    assert f"PostgreSQL 127.0.0.1:{port}/books" in said and "cannot be used" in said
    assert "Traceback" not in said


def test_a_reload_says_where_the_books_live_changes_only_at_the_next_start(
    fake_openai, gateway_factory, pg_url
):
    gw = gateway_factory(fleet_config(fake_openai, pg_url))
    same = requests.post(gw.url + "/admin/reload", timeout=10).json()
    assert same["reloaded"] and same["restart_needed_for"] == []
    gw.config_path.write_text(gw.config_path.read_text() + "\n[cache]\nshared = true\n")
    moved = requests.post(gw.url + "/admin/reload", timeout=10).json()
    assert moved["reloaded"] and moved["restart_needed_for"] == ["database"]
    assert chat(gw, "still served").status_code == 200


def test_without_the_driver_a_database_table_stops_start_up_in_one_sentence(
    fake_openai, gateway_factory, tmp_path
):
    shim = tmp_path / "no-driver" / "psycopg"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named psycopg')\n")
    cfg = fleet_config(fake_openai, "postgresql://hoosh@127.0.0.1:5432/books")
    with pytest.raises(RuntimeError) as caught:
        gateway_factory(cfg, env={"PYTHONPATH": str(shim.parent)})
    said = str(caught.value)
    assert "[database] needs the PostgreSQL driver" in said and "psycopg[binary]" in said
    assert "Traceback" not in said


def test_the_cli_with_the_database_away_says_so_in_one_line(fake_openai, tmp_path):
    from tests.pg_server import free_port
    from tests.test_budget_bounds import hoosh

    port = free_port()
    cfg = tmp_path / "hoosh-edge.toml"
    cfg.write_text(fleet_config(fake_openai, f"postgresql://hoosh@127.0.0.1:{port}/books"))
    listed = hoosh("keys", "list", config=cfg)
    assert listed.returncode != 0
    assert f"127.0.0.1:{port}/books" in listed.stderr and "Traceback" not in listed.stderr
