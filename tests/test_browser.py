"""Browsers on the LAN, through the gateway process: Host (DNS rebinding), Origin and CORS."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import requests

from tests.conftest import openai_provider_toml

EVIL = "http://evil.example"
APP = "http://app.example:3000"
KEY = "browser-test-client-key-0123456789"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
RULE = {"name": "daily", "scope": "all", "metric": "usd", "limit": "1.00", "period": "day",
        "action": "block"}  # fmt: skip


def port(url: str) -> int:
    return urlsplit(url).port or 80


def assert_error(resp: requests.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    return err


def test_a_foreign_page_cannot_send_simple_posts(gateway_factory, fake_openai):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    u = gw.url
    before = requests.get(u + "/admin/budgets", timeout=5).json()["data"]
    # What a <form> or a no-cors fetch sends: text/plain, no preflight, the page's Origin.
    simple = {"Origin": EVIL, "Content-Type": "text/plain"}
    for path, body in (("/admin/budgets", RULE), ("/admin/keys", {"name": "lockout"}),
                       ("/v1/chat/completions", CHAT)):  # fmt: skip
        r = requests.post(u + path, data=json.dumps(body), headers=simple, timeout=5)
        err = assert_error(r, 403, "cross_origin_refused")
        assert EVIL in err["message"]
        assert "Access-Control-Allow-Origin" not in r.headers
    # A JSON body does not help, nor does an opaque origin (sandboxed iframe, file://).
    r = requests.post(u + "/v1/chat/completions", json=CHAT, headers={"Origin": "null"}, timeout=5)
    assert_error(r, 403, "cross_origin_refused")
    assert requests.get(u + "/admin/budgets", timeout=5).json()["data"] == before
    assert requests.get(u + "/admin/keys", timeout=5).json()["data"] == []
    assert fake_openai.chat_requests == []  # nothing was spent
    # The gateway's own origin (the status page) may post.
    r = requests.post(u + "/admin/budgets", json=RULE, headers={"Origin": u}, timeout=5)
    assert r.status_code == 201, r.text
    assert "Traceback" not in gw.log


def test_a_dns_rebinding_host_is_refused(gateway_factory):
    gw = gateway_factory('[server]\nallowed_hosts = ["box.lan", "*.home.arpa"]\n')
    u, p = gw.url, port(gw.url)
    r = requests.get(u + "/admin/keys", headers={"Host": f"rebind.evil.example:{p}"}, timeout=5)
    err = assert_error(r, 421, "host_not_allowed")
    assert "rebind.evil.example" in err["message"] and "server.allowed_hosts" in err["message"]
    assert "data" not in r.json()
    r = requests.get(u + "/v1/models", headers={"Host": "rebind.evil.example"}, timeout=5)
    assert_error(r, 421, "host_not_allowed")
    for host in (f"127.0.0.1:{p}", f"localhost:{p}", "[::1]", f"box.lan:{p}", "pi.home.arpa",
                 "192.0.2.7:8088", "BOX.LAN."):  # fmt: skip
        r = requests.get(u + "/admin/keys", headers={"Host": host}, timeout=5)
        assert r.status_code == 200, (host, r.text)


def test_a_listed_origin_gets_cors_answers_but_never_on_admin(gateway_factory, fake_openai):
    cfg = f'[server]\napi_keys = ["{KEY}"]\ncors_origins = ["{APP}"]\n'
    gw = gateway_factory(cfg + openai_provider_toml(fake_openai))
    u = gw.url
    pre = requests.options(u + "/v1/chat/completions", timeout=5, headers={
        "Origin": APP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})  # fmt: skip
    assert pre.status_code == 204, pre.text
    assert pre.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os"} <= allowed
    assert "Origin" in pre.headers["Vary"]
    r = requests.post(u + "/v1/chat/completions", json=CHAT, timeout=5,
                      headers={"Origin": APP, "Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["Access-Control-Allow-Origin"] == APP
    assert "X-Hoosh-Provider" in r.headers["Access-Control-Expose-Headers"]
    # An error to a listed origin is readable by its page too.
    r = requests.post(u + "/v1/chat/completions", json=CHAT, headers={"Origin": APP}, timeout=5)
    assert_error(r, 401, "missing_api_key")
    assert r.headers["Access-Control-Allow-Origin"] == APP
    # The admin API and the status page never answer cross-origin, listed or not.
    for method, path in (("OPTIONS", "/admin/keys"), ("GET", "/admin/keys"), ("GET", "/"),
                         ("GET", "/admin/status.json")):  # fmt: skip
        r = requests.request(method, u + path, timeout=5, headers={
            "Origin": APP, "Access-Control-Request-Method": "GET",
            "Authorization": f"Bearer {KEY}"})  # fmt: skip
        assert_error(r, 403, "cross_origin_refused")
        assert "Access-Control-Allow-Origin" not in r.headers
    # An origin that is not listed gets no preflight.
    r = requests.options(u + "/v1/chat/completions", timeout=5,
                         headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert_error(r, 403, "cross_origin_refused")
    assert len(fake_openai.chat_requests) == 1
    assert "Traceback" not in gw.log
