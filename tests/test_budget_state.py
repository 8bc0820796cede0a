"""One read model for a rule's state: admin, status page, /metrics and the CLI agree on every figure.

With one committed call and one call still in flight (its reservation open), every reader shows
``used`` as committed use, ``reserved`` as the open hold, and ``remaining`` as what the gate
leaves: limit - used - reserved.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from decimal import Decimal
from typing import Any

import requests

from tests.conftest import GatewayProcess
from tests.test_cli import cli_env

ADMIN_KEY = "state-admin-key-0a9b8c7d6e5f4a3b"
RULES = """
[[budgets]]
name = "calls"
scope = "cloud"
metric = "requests"
limit = 10
period = "day"
action = "block"

[[budgets]]
name = "daily-usd"
scope = "cloud"
metric = "usd"
limit = "1.00"
period = "day"
action = "block"
"""


def config(fake: Any, data: str) -> str:
    """A gateway with one priced cloud model that waits long enough for a slow upstream."""
    return (
        f"""
[server]
data_dir = "{data}"
admin_key = "{ADMIN_KEY}"

[[providers]]
name = "fake"
type = "openai"
base_url = "{fake.url}"
api_key = "{fake.api_key}"
models = ["gpt-*"]
timeout_s = 30
connect_timeout_s = 1

[pricing."gpt-4o-mini"]
input_usd_per_mtok = 10
output_usd_per_mtok = 100
"""
        + RULES
    )


def chat(gw: GatewayProcess, content: str) -> requests.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}],
            "max_tokens": 20}  # fmt: skip
    return requests.post(gw.url + "/v1/chat/completions", json=body, timeout=60,
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip


def admin_budgets(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    r = requests.get(gw.url + "/admin/budgets", timeout=10,
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    assert r.status_code == 200, r.text
    return {b["name"]: b for b in r.json()["data"]}


def status_budgets(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    r = requests.get(gw.url + "/admin/status.json", timeout=10,
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    assert r.status_code == 200, r.text
    return {b["name"]: b for b in r.json()["budgets"]}


def metric_remaining(gw: GatewayProcess) -> dict[str, Decimal]:
    text = requests.get(gw.url + "/metrics", timeout=10,
                        headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text  # fmt: skip
    found = re.findall(r"^hoosh_budget_remaining\{([^}]*)\} (\S+)$", text, re.M)
    out = {}
    for labels, value in found:
        rule = re.search(r'rule="([^"]+)"', labels)
        assert rule is not None, labels
        out[rule.group(1)] = Decimal(value)
    return out


def cli_budgets(gw: GatewayProcess) -> dict[str, dict[str, str]]:
    """``hoosh-edge budget list`` against the gateway's own database, parsed by its header."""
    done = subprocess.run(
        [sys.executable, "-m", "hoosh_edge", "budget", "list", "--config", str(gw.config_path)],
        capture_output=True, text=True, timeout=60, env=cli_env(), cwd=gw.config_path.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines() if line.strip()]
    header = lines[0]
    return {row[0]: dict(zip(header, row, strict=True)) for row in lines[1:]}


def figures(row: dict[str, Any]) -> tuple[Decimal, Decimal, Decimal]:
    return Decimal(row["used"]), Decimal(row["reserved"]), Decimal(row["remaining"])


def test_every_reader_shows_the_same_used_reserved_and_remaining(
    fake_openai, gateway_factory, tmp_path
):
    gw = gateway_factory(config(fake_openai, str(tmp_path / "state")))
    first = chat(gw, "the committed call")
    assert first.status_code == 200, first.text
    first_cost = Decimal(str(first.json()["usage"]["cost_usd"]))
    assert first_cost > 0

    # The second call stays with the upstream while every reader looks.
    fake_openai.script("slow", 15.0)
    second: dict[str, requests.Response] = {}
    caller = threading.Thread(target=lambda: second.setdefault("r", chat(gw, "in flight")))
    caller.start()
    try:
        deadline = time.monotonic() + 10
        while admin_budgets(gw)["calls"]["reserved"] == "0":
            assert time.monotonic() < deadline, "the second call never reserved"
            time.sleep(0.05)

        admin = admin_budgets(gw)
        status = status_budgets(gw)
        gauge = metric_remaining(gw)
        cli = cli_budgets(gw)
        assert caller.is_alive(), "the slow call ended before every reader had looked"
    finally:
        caller.join(30)

    # The example: one committed call, one open reservation.
    assert figures(admin["calls"]) == (1, 1, 8)
    used, reserved, remaining = figures(admin["daily-usd"])
    assert used == first_cost  # committed use is what the first call was billed
    assert reserved > 0 and remaining == Decimal("1.00") - used - reserved
    for name in ("calls", "daily-usd"):
        assert figures(status[name]) == figures(admin[name]), name
        assert figures(cli[name]) == figures(admin[name]), name
        assert gauge[name] == figures(admin[name])[2], name
    assert status["calls"]["percent"] == 10.0  # committed use against the limit

    # Once it is settled the hold is gone and the call counts as used, everywhere alike.
    assert second["r"].status_code == 200, second["r"].text
    after = admin_budgets(gw)
    assert figures(after["calls"]) == (2, 0, 8)
    total = first_cost + Decimal(str(second["r"].json()["usage"]["cost_usd"]))
    assert figures(after["daily-usd"]) == (total, 0, Decimal("1.00") - total)
    assert {n: figures(b) for n, b in status_budgets(gw).items()} == {
        n: figures(b) for n, b in after.items()
    }
    assert metric_remaining(gw) == {n: figures(b)[2] for n, b in after.items()}
