"""The operator's status page: its JSON against the gateway's state, and the page in a real browser."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests

from hoosh_edge.app import create_app
from hoosh_edge.backends.engines.pool import ModelPool, ModelSlot
from hoosh_edge.books.db import Database
from hoosh_edge.books.ledger import SpendLedger, Usage
from hoosh_edge.config import load_config
from hoosh_edge.gateway import Gateway, build_gateway
from tests.conftest import GatewayProcess, openai_provider_toml

MiB = 1024 * 1024
NOON = datetime(2025, 3, 10, 12, 0, tzinfo=timezone.utc)


RULES = [
    {"name": "cloud-daily", "scope": "cloud", "metric": "usd", "limit": "0.05", "period": "day",
     "action": "block"},
    {"name": "laptop-requests", "scope": "key:laptop", "metric": "requests", "limit": 2,
     "period": "day", "action": "block"},
    {"name": "mini-usd", "scope": "model:gpt-4o-*", "metric": "usd", "limit": "0.01",
     "period": "month", "action": "warn"},
    {"name": "tokens-month", "scope": "all", "metric": "tokens", "limit": 1000, "period": "month",
     "action": "local_only"},
    {"name": "cloudy-total", "scope": "provider:cloudy", "metric": "requests", "limit": 10,
     "period": "total", "action": "block"},
]  # fmt: skip


def book(ledger: SpendLedger, usage: Usage, **target: Any) -> None:
    """Reserve and commit one call, as the gateway does."""
    ledger.commit(ledger.reserve(usage, **target), usage)


# ---- the JSON ----------------------------------------------------------------------------------


@pytest.fixture
def gateway(tmp_path: Path):
    cfg = tmp_path / "hoosh-edge.toml"
    cfg.write_text(f"""
[server]
data_dir = "{tmp_path / "data"}"
models_dir = "{tmp_path / "models"}"

[[providers]]
name = "cloudy"
type = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-test-cloudy"
models = ["gpt-*"]

[[providers]]
name = "nokey"
type = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "$STATUS_TEST_UNSET_SECRET"
models = ["other-*"]
""")
    pool = ModelPool(mem_available=lambda: None)
    pool.register(ModelSlot(key="smol", kind="llm", loader=object, estimate_bytes=300 * MiB))
    pool.register(ModelSlot(key="stt:tiny", kind="stt", loader=object, estimate_bytes=75 * MiB))
    pool.slot("smol").ensure_loaded()
    gw = build_gateway(load_config(cfg, env={}), pool=pool, start=False)
    db = gw.db
    gw.ledger = SpendLedger(db, clock=lambda: NOON)
    for r in RULES:
        gw.ledger.create_rule(r)
    real_cache = gw.cache
    yield gw
    gw.cache = real_cache  # a test may swap in a broken one; close the real one
    gw.close()


@pytest.fixture
def client(gateway: Gateway):
    return create_app(gateway=gateway).test_client()


def test_status_json_reports_models_providers_and_device(gateway, client):
    gateway.router.health["cloudy"].failed("upstream timed out after 2s")
    with gateway.pool.slot("smol").use():  # busy while the page looks
        data = client.get("/admin/status.json").get_json()
    assert data["version"] == __import__("hoosh_edge").__version__
    assert 0 <= data["uptime_s"] < 60
    models = {m["id"]: m for m in data["models"]}
    assert models["smol"] == {"id": "smol", "kind": "llm", "loaded": True, "busy": True,
                              "threads": 0, "queue_depth": 0, "estimate_bytes": 300 * MiB,
                              "idle_s": models["smol"]["idle_s"]}  # fmt: skip
    assert models["stt:tiny"]["loaded"] is False and models["stt:tiny"]["busy"] is False
    providers = {p["name"]: p for p in data["providers"]}
    assert providers["cloudy"]["state"] == "degraded"
    assert providers["cloudy"]["last_error"] == "upstream timed out after 2s"
    assert providers["nokey"]["state"] == "disabled"
    assert "STATUS_TEST_UNSET_SECRET" in providers["nokey"]["disabled_reason"]
    # The same providers as /v1/health reports.
    assert data["providers"] == client.get("/v1/health").get_json()["providers"]
    dev = data["device"]
    if Path("/proc/meminfo").exists():
        assert 0 < dev["mem_available_bytes"] <= dev["mem_total_bytes"]
    assert len(dev["load_avg"]) == 3
    assert data["cache"]["entries"] == 0 and data["cache"]["hit_rate"] == 0.0


def answer(text: str) -> dict[str, Any]:
    """A finished chat.completion, as the gateway stores it."""
    return {"object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}  # fmt: skip


def test_cache_section_is_the_real_caches_state(gateway, client):
    cache = gateway.cache
    assert cache.put_chat("k1", answer("Paris."), provider="cloudy", model="gpt-4o-mini")
    assert cache.put_chat("k2", answer("A longer answer " * 20), provider="cloudy", model="gpt-4o")
    assert cache.get_chat("k1")["choices"][0]["message"]["content"] == "Paris."  # a hit
    assert cache.get_chat("k1") is not None  # another hit
    assert cache.get_chat("never-stored") is None  # a miss
    data = client.get("/admin/status.json").get_json()["cache"]
    with gateway.db.read() as r:  # the rows themselves, not the cache's running totals
        rows, size = r.execute("SELECT COUNT(*), SUM(size) FROM response_cache").fetchone()
    assert (rows, data["entries"], data["bytes"]) == (2, 2, size)
    assert (data["hits"], data["misses"], data["hit_rate"], data["stores"]) == (2, 1, 0.6667, 2)
    assert data["by_kind"] == {"chat": {"entries": 2, "bytes": size}}
    assert data == cache.stats()  # nothing made up on the way to the page
    cache.clear("gpt-4o")  # the page follows the cache, not a copy taken once
    after = client.get("/admin/status.json").get_json()["cache"]
    assert after["entries"] == 1 and after["bytes"] < size


def test_budgets_and_spend_follow_the_ledger(gateway, client):
    ledger = gateway.ledger
    cloud = {"provider": "cloudy", "model": "gpt-4o-mini", "is_local": False}
    book(ledger, Usage(100, 50, cost_micro_usd=12_300), key="laptop", **cloud)
    book(ledger, Usage(200, 100, cost_micro_usd=2_000), key="phone", **cloud)
    book(ledger, Usage(40, 10), key="laptop", provider="local", model="smol", is_local=True)
    # An open reservation is not committed use: it is shown apart, and what is left counts it.
    ledger.reserve(Usage(1, 1, cost_micro_usd=10_000), key="phone", **cloud)

    data = client.get("/admin/status.json").get_json()
    budgets = {b["name"]: b for b in data["budgets"]}
    assert [b["name"] for b in data["budgets"]] == sorted(r["name"] for r in RULES)
    assert budgets["cloud-daily"] | {} == {
        "name": "cloud-daily", "scope": "cloud", "metric": "usd", "unit": "USD", "period": "day",
        "action": "block", "limit": "0.05", "used": "0.0143", "reserved": "0.01",
        "remaining": "0.0257",
        "percent": 28.6, "resets_at": "2025-03-11T00:00:00+00:00",
    }  # fmt: skip
    assert (budgets["laptop-requests"]["used"], budgets["laptop-requests"]["percent"]) == (
        "2",
        100.0,
    )
    assert budgets["laptop-requests"]["remaining"] == "0"
    assert budgets["mini-usd"]["used"] == "0.0143"
    assert budgets["mini-usd"]["percent"] == 143.0  # over a warn rule: shown, not capped
    assert budgets["mini-usd"]["resets_at"] == "2025-04-01T00:00:00+00:00"
    assert budgets["tokens-month"]["used"] == str(150 + 300 + 50)
    assert budgets["cloudy-total"]["used"] == "2" and budgets["cloudy-total"]["resets_at"] is None
    # The page agrees with the ledger's own judgement: the full rule blocks the laptop.
    assert not ledger.check(
        key="laptop", is_local=False, **{k: cloud[k] for k in ("provider", "model")}
    ).allowed
    assert data["spend"] == {"today_usd": "0.0143", "today_requests": 3,
                             "month_usd": "0.0143", "month_requests": 3}  # fmt: skip


def test_a_broken_part_is_an_error_and_the_rest_still_shows(gateway, client):
    class BrokenCache:
        def stats(self) -> dict[str, Any]:
            raise RuntimeError("database is locked")

    gateway.cache = BrokenCache()
    resp = client.get("/admin/status.json")
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    data = resp.get_json()
    assert data["cache"] == {"error": "RuntimeError: database is locked"}
    assert {b["name"] for b in data["budgets"]} == {r["name"] for r in RULES}
    assert {m["id"] for m in data["models"]} == {"smol", "stt:tiny"}
    assert [p["name"] for p in data["providers"]] == ["cloudy", "nokey"]


def test_request_totals_count_api_routes_only(gateway, client):
    for _ in range(3):
        assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models/no-such-model").status_code == 404
    client.get("/admin/status.json")
    client.get("/")
    totals = client.get("/admin/status.json").get_json()["requests"]
    assert totals == {"total": 4, "by_class": {"2xx": 3, "4xx": 1, "5xx": 0}}


def test_page_and_assets_are_served(client):
    page = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert "/status/status.js" in text and "/status/status.css" in text
    assert "http://" not in text and "https://" not in text  # nothing from outside the box
    assert client.get("/status/status.js").mimetype == "text/javascript"
    assert client.get("/status/status.css").mimetype == "text/css"
    assert client.get("/status/status.html").status_code == 404
    assert client.get("/status/..%2Fapi%2Fstatus.py").status_code == 404


# ---- the page in a real browser ----------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.usefixtures("chromium_path")  # skips here, fails in CI without it


def start_gateway(config_text: str, tmp: Path) -> GatewayProcess:
    """The real gateway (``python hoosh_edge.py``) serving the page."""
    return GatewayProcess(config_text, tmp).start()


def chromium(tmp: Path, url: str, *extra: str) -> str:
    """Run headless Chromium on ``url`` and return its stdout."""
    assert url.startswith("http://127.0.0.1:")
    profile = tempfile.mkdtemp(dir=tmp, prefix="chromium-profile-")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
           *extra, url]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class PageFields(HTMLParser):
    """Texts of the page's elements by id, per table row / budget by data-k, and hidden ids."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
            "track", "wbr"}  # fmt: skip
    ROWS = ("data-model", "data-provider", "data-budget", "data-error")

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self.hidden: set[str] = set()
        self.body: dict[str, str | None] = {}
        self._stack: list[tuple[str, str | None, tuple[str, str] | None, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if "hidden" in a and a.get("id"):
            self.hidden.add(a["id"])
        if tag in self.VOID:
            return
        row = next(((r[5:], a[r]) for r in self.ROWS if a.get(r) is not None), None)
        if row is None and self._stack:
            row = self._stack[-1][2]
        if row is not None:
            self.rows.setdefault(row, {})
        self._stack.append((tag, a.get("id"), row, a.get("data-k")))
        if row is not None and a.get("data-k"):
            self.rows[row][a["data-k"] + ".class"] = a.get("class") or ""
        if a.get("id"):
            self.by_id[a["id"]] = ""

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident, row, key in self._stack:
            if ident:
                self.by_id[ident] += data
            if row is not None and key:
                self.rows[row][key] = self.rows[row].get(key, "") + data


def usd_text(amount: str) -> str:
    """Dollars as the page shows them: 4 decimals below $1, cents above, no trailing zeros past 2."""
    n = float(amount)
    text = f"{n:.{2 if n >= 1 else 4}f}"
    while len(text.partition(".")[2]) > 2 and text.endswith("0"):
        text = text[:-1]
    return "$" + text


def bytes_text(n: int) -> str:
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    if n >= MiB:
        return f"{round(n / MiB)} MiB"
    return f"{round(n / 1024)} KiB" if n >= 1024 else f"{n} B"


def browser_toml(fake, gguf: Path, tmp: Path, extra: str = "") -> str:
    return (
        openai_provider_toml(fake, name="cloudy", models='["gpt-*"]')
        + f"""
[[providers]]
name = "deadend"
type = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-test-deadend"
models = ["dead-*"]
max_retries = 0
connect_timeout_s = 1

[[providers]]
name = "nokey"
type = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "$STATUS_TEST_UNSET_SECRET"
models = ["other-*"]

[[budgets]]
name = "cloud-daily"
scope = "cloud"
metric = "usd"
limit = "0.05"
period = "day"
action = "block"

[[budgets]]
name = "laptop-requests"
scope = "key:laptop"
metric = "requests"
limit = 4
period = "day"
action = "block"

[[budgets]]
name = "tiny-tokens"
scope = "model:tiny"
metric = "tokens"
limit = 10
period = "day"
action = "warn"

[pricing."dead-1"]
input_usd_per_mtok = 1
output_usd_per_mtok = 1

[local.llm]
n_threads = 1
n_ctx = 512
[local.llm.models]
tiny = "{gguf}"

[server]
data_dir = "{tmp / "data"}"
models_dir = "{tmp / "models"}"
{extra}
"""
    )


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    from tests.synth_gguf import make_tiny_gguf

    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@needs_chromium
def test_page_in_chromium_shows_what_the_json_says(tmp_path, fake_openai, tiny_gguf):
    gw = start_gateway(browser_toml(fake_openai, tiny_gguf, tmp_path), tmp_path)
    try:
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        assert requests.post(gw.url + "/v1/chat/completions", json={"model": "tiny", **chat},
                             timeout=60).status_code == 200  # fmt: skip
        repeatable = {"model": "gpt-4o-mini", "temperature": 0, **chat}
        for _ in range(2):  # a miss that is stored, then a hit: the cache panel has something
            assert requests.post(gw.url + "/v1/chat/completions", json=repeatable,
                                 timeout=30).ok  # fmt: skip
        failed = requests.post(gw.url + "/v1/chat/completions", json={"model": "dead-1", **chat},
                               timeout=30)  # fmt: skip
        assert failed.status_code >= 500
        # Committed spend from a second writer of the same database: the page reads it live.
        db = Database.open(tmp_path / "data")
        try:
            ledger = SpendLedger(db)
            book(ledger, Usage(120, 30, cost_micro_usd=12_345), key="laptop", provider="cloudy",
                 model="gpt-4o-mini", is_local=False)  # fmt: skip
            # A call still in flight (this process holds it): shown as held, apart from use.
            ledger.reserve(Usage(10, 10, cost_micro_usd=5_000), key="phone", provider="cloudy",
                           model="gpt-4o-mini", is_local=False)  # fmt: skip
        finally:
            db.close()

        html = chromium(tmp_path, gw.url + "/", "--dump-dom")
        data = requests.get(gw.url + "/admin/status.json", timeout=10).json()
        shot = tmp_path / "status.png"
        chromium(tmp_path, gw.url + "/", f"--screenshot={shot}", "--window-size=1100,1400")
        phone = tmp_path / "status-phone.png"
        # The phone view in the dark colour scheme.
        chromium(tmp_path, gw.url + "/", f"--screenshot={phone}", "--window-size=390,1600",
                 "--blink-settings=preferredColorScheme=0")  # fmt: skip
    finally:
        gw.stop()
    assert shot.stat().st_size > 10_000 and phone.stat().st_size > 10_000
    print(f"screenshots: {shot} {phone}")

    page = PageFields(html)
    assert page.body.get("data-loaded") == "1", html[:3000]
    assert "keyform" in page.hidden and "main" not in page.hidden
    assert page.by_id["version"] == data["version"]

    providers = {p["name"]: p for p in data["providers"]}
    assert providers["cloudy"]["state"] == "ok"
    assert providers["deadend"]["state"] in ("degraded", "down")
    assert providers["nokey"]["state"] == "disabled"
    shown = {name: row for (kind, name), row in page.rows.items() if kind == "provider"}
    assert {n: r["state"] for n, r in shown.items()} == {
        n: p["state"] for n, p in providers.items()
    }
    errors = {name: row["text"] for (kind, name), row in page.rows.items() if kind == "error"}
    assert errors == {"deadend": providers["deadend"]["last_error"],
                      "nokey": providers["nokey"]["disabled_reason"]}  # fmt: skip

    models = {m["id"]: m for m in data["models"]}
    assert models["tiny"]["loaded"] is True
    shown = {name: row for (kind, name), row in page.rows.items() if kind == "model"}
    assert set(shown) == set(models)
    assert shown["tiny"]["state"] == "loaded"
    assert shown["tiny"]["memory"] == bytes_text(models["tiny"]["estimate_bytes"])

    budgets = {b["name"]: b for b in data["budgets"]}
    assert set(budgets) == {"cloud-daily", "laptop-requests", "tiny-tokens"}
    shown = {name: row for (kind, name), row in page.rows.items() if kind == "budget"}
    assert set(shown) == set(budgets)
    assert budgets["laptop-requests"]["used"] == "1"
    assert shown["laptop-requests"]["percent"] == "25 %"
    assert (shown["laptop-requests"]["used"], shown["laptop-requests"]["limit"]) == (
        "1",
        "4 requests",
    )
    cloud = budgets["cloud-daily"]
    assert shown["cloud-daily"]["used"] == usd_text(cloud["used"])
    assert cloud["reserved"] == "0.005"
    assert shown["cloud-daily"]["reserved"] == usd_text(cloud["reserved"]) == "$0.005"
    assert "reserved" not in shown["laptop-requests"]  # nothing held, nothing said
    assert shown["cloud-daily"]["limit"] == "$0.05"
    assert shown["cloud-daily"]["percent.class"].split() == ["pct"]
    assert budgets["tiny-tokens"]["percent"] > 100  # the local chat used more than 10 tokens
    assert shown["tiny-tokens"]["percent.class"].split() == ["pct", "over"]
    assert shown["tiny-tokens"]["percent"] == f"{round(budgets['tiny-tokens']['percent'])} %"
    assert usd_text("0.012345") == "$0.0123" and usd_text("12.5") == "$12.50"
    assert page.by_id["spend-today"] == usd_text(data["spend"]["today_usd"])
    assert page.by_id["spend-month"] == usd_text(data["spend"]["month_usd"])
    assert page.by_id["spend-today"].startswith("$0.0")
    assert int(page.by_id["req-total"]) >= 3 and int(page.by_id["req-5xx"]) >= 1
    dev = data["device"]
    assert page.by_id["mem-total"] == bytes_text(dev["mem_total_bytes"])
    # Free memory moves between the page's fetch and the test's: same unit, close value.
    number, unit = page.by_id["mem-free"].split()
    expected_number, expected_unit = bytes_text(dev["mem_available_bytes"]).split()
    assert unit == expected_unit and abs(float(number) - float(expected_number)) <= 0.05 * float(
        expected_number
    )
    cache = data["cache"]
    assert (cache["entries"], cache["hits"], cache["misses"]) == (1, 1, 1)
    assert page.by_id["cache-hit-rate"] == "50 %"
    assert page.by_id["cache-entries"] == "1"
    assert page.by_id["cache-bytes"] == bytes_text(cache["bytes"]) and cache["bytes"] > 0


@needs_chromium
def test_page_asks_for_the_admin_key_when_refused(tmp_path, fake_openai, tiny_gguf):
    key = "admin-test-key-4242"
    cfg = browser_toml(fake_openai, tiny_gguf, tmp_path, extra=f'admin_key = "{key}"')
    gw = start_gateway(cfg, tmp_path)
    try:
        assert requests.get(gw.url + "/admin/status.json", timeout=10).status_code in (401, 403)
        auth = {"Authorization": f"Bearer {key}"}
        assert requests.get(gw.url + "/admin/status.json", headers=auth, timeout=10).ok
        html = chromium(tmp_path, gw.url + "/", "--dump-dom")
    finally:
        gw.stop()
    page = PageFields(html)
    assert "keyform" not in page.hidden and "main" in page.hidden
    assert page.by_id["keymsg"] == "This page needs the admin key."
    assert "data-loaded" not in page.body
