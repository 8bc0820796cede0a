"""The LAN exposure rule at every moment, and which paths need a key, through the gateway process.

The gateways here listen on 0.0.0.0 (always with a key) and are reached on 127.0.0.1: a loopback
client of a 0.0.0.0 listener is still talking to a LAN-exposed gateway.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from hoosh_edge.books.db import Database
from hoosh_edge.books.keys import KeyStore
from hoosh_edge.errors import LastKey
from tests.conftest import ROOT, GatewayProcess
from tests.test_cli import cli_env

KEY = "exposure-test-client-key-0123456789"
ADMIN = "exposure-test-admin-key-0123456789"


def loopback(gw: GatewayProcess) -> str:
    return gw.url.replace("://0.0.0.0:", "://127.0.0.1:")


def hoosh(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoosh_edge", *args, "--config", str(config)],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_the_last_key_of_a_lan_gateway_cannot_be_revoked_and_the_gateway_fails_closed(
    gateway_factory, tmp_path
):
    data = tmp_path / "data"
    lan = tmp_path / "lan.toml"
    lan.write_text(f'[server]\nhost = "0.0.0.0"\ndata_dir = "{data}"\n')
    created = hoosh(lan, "keys", "create", "laptop")
    assert created.returncode == 0, created.stderr
    secret = next(w for w in created.stdout.split() if w.startswith("hk-"))
    gw = gateway_factory(lan.read_text())
    url = loopback(gw)
    auth = {"Authorization": f"Bearer {secret}"}
    assert requests.get(url + "/v1/models", headers=auth, timeout=5).status_code == 200

    # The CLI, reading the same config, refuses.
    out = hoosh(lan, "keys", "revoke", "laptop")
    assert out.returncode == 1
    assert "last API key" in out.stderr and "0.0.0.0" in out.stderr, out.stderr
    assert requests.get(url + "/v1/models", headers=auth, timeout=5).status_code == 200

    # A CLI run with a config that says loopback (the gateway may have been started with
    # --host) revokes it: the running gateway then serves no one, rather than everyone.
    local = tmp_path / "local.toml"
    local.write_text(f'[server]\ndata_dir = "{data}"\n')
    assert hoosh(local, "keys", "revoke", "laptop").returncode == 0
    for headers in ({}, auth):
        for path in ("/v1/models", "/admin/keys", "/metrics", "/"):
            r = requests.get(url + path, headers=headers, timeout=5)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"]["code"] == "no_api_keys"
    assert requests.get(url + "/health", timeout=5).status_code == 200
    assert "no API key is left and this gateway listens on 0.0.0.0" in gw.log

    # A new key brings it back, keyed.
    created = hoosh(lan, "keys", "create", "phone")
    secret = next(w for w in created.stdout.split() if w.startswith("hk-"))
    assert requests.get(url + "/v1/models", timeout=5).status_code == 401
    ok = requests.get(url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=5)
    assert ok.status_code == 200
    assert "an API key exists again" in gw.log
    assert "Traceback" not in gw.log


def test_a_lan_gateway_keeps_metrics_health_and_the_page_behind_a_key(gateway_factory):
    gw = gateway_factory(f'[server]\napi_keys = ["{KEY}"]\n', args=["--host", "0.0.0.0"])
    url = loopback(gw)
    for path in ("/metrics", "/v1/health", "/", "/status/status.js"):
        r = requests.get(url + path, timeout=5)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "missing_api_key"
        r = requests.get(url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
        assert r.status_code == 200, (path, r.text)
    assert requests.get(url + "/health", timeout=5).status_code == 200


def test_public_paths_can_open_single_endpoints(gateway_factory):
    cfg = f'[server]\napi_keys = ["{KEY}"]\npublic_paths = ["/metrics"]\n'
    gw = gateway_factory(cfg, args=["--host", "0.0.0.0"])
    url = loopback(gw)
    assert requests.get(url + "/metrics", timeout=5).status_code == 200
    assert requests.get(url + "/v1/health", timeout=5).status_code == 401
    assert requests.get(url + "/", timeout=5).status_code == 401


def test_a_loopback_gateway_keeps_its_monitoring_paths_open(gateway_factory):
    gw = gateway_factory(f'[server]\napi_keys = ["{KEY}"]\n')
    for path in ("/metrics", "/v1/health", "/"):
        assert requests.get(gw.url + path, timeout=5).status_code == 200, path
    assert requests.get(gw.url + "/v1/models", timeout=5).status_code == 401


def test_revoke_keep_one_refuses_only_the_last_active_key(tmp_path):
    db = Database.open(tmp_path)
    try:
        store = KeyStore(db)
        store.create("a")
        store.create("b")
        assert store.revoke("a", keep_one="last key")
        with pytest.raises(LastKey) as e:
            store.revoke("b", keep_one="last key")
        assert e.value.status == 409 and e.value.code == "last_key"
        assert store.has_active_keys()
        assert not store.revoke("a", keep_one="last key")  # already revoked: no such active key
        assert store.revoke("b")  # without the rule (a loopback gateway) it may go
    finally:
        db.close()


def test_a_reload_that_would_drop_every_key_of_a_lan_gateway_is_refused(gateway_factory):
    gw = gateway_factory(f'[server]\napi_keys = ["{KEY}"]\n', args=["--host", "0.0.0.0"])
    url = loopback(gw)
    gw.config_path.write_text("[server]\n")
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "config reload refused" not in gw.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "config reload refused" in gw.log and "without API keys" in gw.log
    assert requests.get(url + "/v1/models", timeout=5).status_code == 401
    ok = requests.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert ok.status_code == 200
