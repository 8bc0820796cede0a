"""API keys end to end: who may call what, per-key limits, key budgets, secrets kept out of logs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.conftest import ROOT, GatewayProcess, openai_provider_toml
from tests.fake_openai import FakeOpenAI
from tests.test_backpressure import SSEUpstream

CLIENT_KEY = "client-key-0123456789abcdef-never-log-me"
ADMIN_KEY = "admin-key-fedcba9876543210-never-log-me"

# Expensive on purpose, so a key budget of a fraction of a cent runs out in a few requests.
PRICED = """
[pricing."gpt-4o-mini"]
input_usd_per_mtok = 10
output_usd_per_mtok = 100
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, SSEUpstream]]:
    """A fast upstream for gpt-* and, for slow-*, a stream of 60 events 50 ms apart (3 s)."""
    # The slow one frames its body with Transfer-Encoding: chunked, so the gateway relays each
    # event as it comes (see test_backpressure for close-delimited bodies).
    with FakeOpenAI() as fast, \
            SSEUpstream(total_bytes=60 * 250, delta_chars=50, delay_s=0.05) as slow:  # fmt: skip
        yield fast, slow


@pytest.fixture(scope="module")
def gw(fakes, tmp_path_factory) -> Iterator[GatewayProcess]:
    fast, slow = fakes
    cfg = (
        f"""
[server]
api_keys = ["{CLIENT_KEY}"]
admin_key = "{ADMIN_KEY}"
log_level = "debug"
"""
        + openai_provider_toml(fast)
        + slow.provider_toml("slowfake", '["slow-*"]')
        + PRICED
    )
    with GatewayProcess(cfg, tmp_path_factory.mktemp("auth")) as proc:
        yield proc


def chat(gw: GatewayProcess, headers: dict[str, str], model: str = "gpt-4o-mini",
         content: str = "hi", stream: bool = False, **extra: Any) -> requests.Response:  # fmt: skip
    body = {"model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": 5 if not stream else 200, "stream": stream, **extra}  # fmt: skip
    return requests.post(gw.url + "/v1/chat/completions", json=body, headers=headers,
                         timeout=30, stream=stream)  # fmt: skip


def create_key(gw: GatewayProcess, name: str, **fields: Any) -> str:
    r = requests.post(gw.url + "/admin/keys", json={"name": name, **fields},
                      headers=bearer(ADMIN_KEY), timeout=10)  # fmt: skip
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["name"] == name and doc["key"].startswith("hk-")
    return doc["key"]


def assert_error(r: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["code"] == code, err
    return err


CREATED: list[str] = []  # every secret the tests made, to look for in the log at the end


# -- who may call what -----------------------------------------------------------------------------


def test_no_key_is_401_with_the_openai_error_shape(gw):
    err = assert_error(chat(gw, {}), 401, "missing_api_key")
    assert err["type"] == "authentication_error"
    assert "Bearer" in err["message"]
    assert_error(requests.get(gw.url + "/v1/models", timeout=5), 401, "missing_api_key")


def test_a_wrong_key_is_401(gw):
    assert_error(chat(gw, bearer(CLIENT_KEY + "x")), 401, "invalid_api_key")
    assert_error(chat(gw, {"x-api-key": "hk-" + "A" * 43}), 401, "invalid_api_key")
    assert_error(chat(gw, {"Authorization": "Basic " + CLIENT_KEY}), 401, "missing_api_key")


def test_bearer_and_x_api_key_both_work(gw):
    r = chat(gw, bearer(CLIENT_KEY))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Echo: hi"
    r = chat(gw, {"x-api-key": CLIENT_KEY}, content="x-api-key")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Echo: x-api-key"
    r = chat(gw, {"Authorization": "bearer " + CLIENT_KEY})  # the scheme is case-insensitive
    assert r.status_code == 200, r.text


def test_the_openai_sdk_authenticates_with_api_key(gw):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    out = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "sdk"}], max_tokens=5
    )
    assert out.choices[0].message.content == "Echo: sdk"
    wrong = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    assert info.value.status_code == 401


def test_health_stays_open(gw):
    r = requests.get(gw.url + "/health", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert requests.get(gw.url + "/v1/health", timeout=5).status_code == 200


@pytest.mark.parametrize("path", ["/admin/keys", "/admin/budgets", "/admin/cache"])
def test_admin_paths_need_the_admin_key(gw, path):
    assert_error(requests.get(gw.url + path, timeout=5), 401, "missing_api_key")
    r = requests.get(gw.url + path, headers=bearer(CLIENT_KEY), timeout=5)
    err = assert_error(r, 403, "permission_denied")
    assert err["type"] == "permission_error"
    r = requests.get(gw.url + path, headers=bearer(ADMIN_KEY), timeout=5)
    assert r.status_code == 200, r.text


def test_the_admin_key_also_works_on_client_paths(gw):
    assert chat(gw, bearer(ADMIN_KEY)).status_code == 200


# -- stored keys made through the admin API -------------------------------------------------------


def test_a_created_key_works_at_once_and_stops_when_revoked(gw):
    key = create_key(gw, "phone")
    CREATED.append(key)
    r = chat(gw, bearer(key), content="phone")
    assert r.status_code == 200, r.text
    # A stored key is a client key: no admin paths.
    assert_error(requests.get(gw.url + "/admin/keys", headers=bearer(key), timeout=5),
                 403, "permission_denied")  # fmt: skip
    r = requests.delete(gw.url + "/admin/keys/phone", headers=bearer(ADMIN_KEY), timeout=5)
    assert r.status_code == 200 and r.json() == {"revoked": "phone"}
    assert_error(chat(gw, bearer(key)), 401, "invalid_api_key")
    r = requests.delete(gw.url + "/admin/keys/phone", headers=bearer(ADMIN_KEY), timeout=5)
    assert_error(r, 404, "not_found")
    listed = {k["name"]: k for k in admin_keys(gw)}
    assert listed["phone"]["revoked_at"] is not None


def admin_keys(gw: GatewayProcess) -> list[dict[str, Any]]:
    r = requests.get(gw.url + "/admin/keys", headers=bearer(ADMIN_KEY), timeout=5)
    assert r.status_code == 200
    return r.json()["data"]


def test_allowed_models_refuse_other_models_with_403(gw):
    key = create_key(gw, "minionly", allowed_models=["gpt-4o-mini"])
    CREATED.append(key)
    assert chat(gw, bearer(key), model="gpt-4o-mini").status_code == 200
    err = assert_error(chat(gw, bearer(key), model="gpt-4o"), 403, "model_not_allowed")
    assert "gpt-4o" in err["message"] and err["param"] == "model"
    # The static client key has no such restriction.
    assert chat(gw, bearer(CLIENT_KEY), model="gpt-4o").status_code == 200


def test_rpm_gives_429_with_retry_after(gw):
    key = create_key(gw, "rpm3", rpm=3)
    CREATED.append(key)
    for i in range(3):
        r = chat(gw, bearer(key), content=f"n{i}")
        assert r.status_code == 200, r.text
    r = chat(gw, bearer(key))
    err = assert_error(r, 429, "rate_limit_exceeded")
    assert "rpm3" in err["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # Other keys are counted apart.
    assert chat(gw, bearer(CLIENT_KEY)).status_code == 200


def first_chunk(r: requests.Response) -> Iterator[bytes]:
    """Read the stream up to its first SSE event; return the rest of its lines."""
    lines = r.iter_lines()
    for line in lines:
        if line.startswith(b"data: "):
            return lines
    raise AssertionError("stream ended before any event")


def open_raw_stream(gw: GatewayProcess, key: str) -> socket.socket:
    """Start a slow stream on a plain socket and read until its first event arrived."""
    body = json.dumps({"model": "slow-model", "stream": True,
                       "messages": [{"role": "user", "content": "go"}]}).encode()  # fmt: skip
    port = int(gw.url.rsplit(":", 1)[-1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\n"
                 + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                 + body)  # fmt: skip
    seen = b""
    while b"data: " not in seen:
        got = sock.recv(4096)
        assert got, seen
        seen += got
    assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
    return sock


def wait_admitted(gw: GatewayProcess, key: str, timeout: float = 10.0) -> requests.Response:
    """Retry a quick request until the key has a free slot again."""
    deadline = time.monotonic() + timeout
    while True:
        r = chat(gw, bearer(key), content="again")
        if r.status_code != 429 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def test_max_concurrent_refuses_a_second_stream_and_frees_the_slot_when_it_ends(gw):
    key = create_key(gw, "single", max_concurrent=1)
    CREATED.append(key)
    first = chat(gw, bearer(key), model="slow-model", stream=True)
    assert first.status_code == 200, first.text
    rest = first_chunk(first)
    second = chat(gw, bearer(key), model="slow-model", content="two", stream=True)
    err = assert_error(second, 429, "concurrency_limit_exceeded")
    assert "single" in err["message"] and second.headers.get("Retry-After")
    tail = [line for line in rest if line]  # read the first stream to its end
    assert tail[-1] == b"data: [DONE]"
    first.close()
    r = wait_admitted(gw, key, timeout=5)
    assert r.status_code == 200, r.text


def test_a_client_leaving_mid_stream_frees_its_slot(gw, fakes):
    slow = fakes[1]
    key = create_key(gw, "leaver", max_concurrent=1)
    CREATED.append(key)
    sock = open_raw_stream(gw, key)
    assert_error(chat(gw, bearer(key)), 429, "concurrency_limit_exceeded")
    started = time.monotonic()
    sock.close()  # gone mid-stream, as a killed client would be
    r = wait_admitted(gw, key, timeout=10)
    assert r.status_code == 200, r.text
    freed_s = time.monotonic() - started
    # The upstream stream lasts 3 s; the slot must come back when the client leaves, not then.
    assert freed_s < 2.5
    assert slow.streams[-1]["finished"] is False


def test_a_key_budget_becomes_a_key_rule_that_refuses_once_spent(gw):
    key = create_key(gw, "metered", budget_usd="0.002", budget_period="day")
    CREATED.append(key)
    r = requests.get(gw.url + "/admin/budgets", headers=bearer(ADMIN_KEY), timeout=5)
    rules = {b["name"]: b for b in r.json()["data"]}
    assert rules["key-metered"]["scope"] == "key:metered"
    assert rules["key-metered"]["metric"] == "usd"
    statuses = []
    refused = None
    for i in range(30):  # each answer costs ~0.0003 USD; 0.002 runs out well before 30
        r = chat(gw, bearer(key), content=f"spend {i}")
        statuses.append(r.status_code)
        if r.status_code != 200:
            refused = r
            break
    assert refused is not None, statuses
    assert statuses.count(200) >= 2, statuses
    err = assert_error(refused, 429, "budget_exceeded")
    assert "key-metered" in err["message"]
    r = requests.get(gw.url + "/admin/budgets/key-metered", headers=bearer(ADMIN_KEY), timeout=5)
    assert r.status_code == 200
    # The rule is the key's own: another key still spends.
    assert chat(gw, bearer(CLIENT_KEY), content="not metered").status_code == 200


def test_admin_keys_output_never_shows_a_secret(gw):
    key = create_key(gw, "listed")
    CREATED.append(key)
    r = requests.get(gw.url + "/admin/keys", headers=bearer(ADMIN_KEY), timeout=5)
    text = r.text
    for secret in [*CREATED, CLIENT_KEY, ADMIN_KEY]:
        assert secret not in text
        assert secret[10:30] not in text  # nor any long piece of one
    row = next(k for k in r.json()["data"] if k["name"] == "listed")
    assert row["prefix"].startswith("hk-") and row["prefix"] != key
    assert "key" not in row and "key_hash" not in row


def test_keys_never_reach_the_log(gw):
    chat(gw, bearer(CLIENT_KEY + "-wrong"))  # a refused key is not logged either
    time.sleep(0.3)  # let the access lines of the last requests arrive
    log = gw.log + "".join(gw.banner)
    assert '"key":"static-0"' in log or "static-0" in log  # the key's name is, by design
    assert CREATED, "run with the tests above"
    for secret in [*CREATED, CLIENT_KEY, ADMIN_KEY]:
        assert secret not in log
        assert secret[3:20] not in log


# -- LAN exposure at start-up -------------------------------------------------------------------


def run_gateway(tmp: Path, config_text: str, *args: str) -> subprocess.Popen:
    cfg = tmp / "hoosh-edge.toml"
    cfg.write_text(config_text)
    env = {k: v for k, v in __import__("os").environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, str(ROOT / "hoosh_edge.py"), "--config", str(cfg), "--port", "0", *args]
    return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_binding_all_interfaces_without_keys_is_refused(tmp_path):
    proc = run_gateway(tmp_path, "[server]\n", "--host", "0.0.0.0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert "listening on" not in out
    assert "refusing to listen on 0.0.0.0 without API keys" in err
    assert "api_keys" in err and "allow_unauthenticated" in err


def test_binding_all_interfaces_is_allowed_when_the_operator_says_so(tmp_path):
    proc = run_gateway(tmp_path, "[server]\nallow_unauthenticated = true\n", "--host", "0.0.0.0")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "listening on http://0.0.0.0:" in first, (first, proc.stderr and proc.stderr.read())
        port = int(first.strip().rsplit(":", 1)[-1])
        # Only ever talk to it over loopback.
        r = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert r.status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0
