"""Browsers on the LAN, through the gateway process: Host (DNS rebinding), Origin and CORS."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
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
    # Ollama's door reads JSON whatever the Content-Type (as Ollama does): the Origin still
    # decides, before the body is read, and the refusal is in Ollama's shape.
    ollama_chat = {"model": "gpt-4o-mini", "messages": CHAT["messages"], "stream": False}
    for path, body in (("/api/chat", ollama_chat), ("/api/generate", {"model": "gpt-4o-mini",
                       "prompt": "hi"}), ("/api/pull", {"model": "smollm2"})):  # fmt: skip
        r = requests.post(u + path, data=json.dumps(body), headers=simple, timeout=5)
        assert r.status_code == 403, r.text
        assert EVIL in r.json()["error"] and "Access-Control-Allow-Origin" not in r.headers
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


# ---- in a real browser -------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.usefixtures("chromium_path")  # skips here, fails in CI without it


def chromium_dom(tmp: Path, url: str, *extra: str) -> str:
    """Headless Chromium's DOM of ``url`` after its scripts ran."""
    profile = tempfile.mkdtemp(dir=tmp, prefix="chromium-profile-")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
           "--dump-dom", *extra, url]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Page(http.server.BaseHTTPRequestHandler):
    html = b""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.html)))
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, *args: object) -> None:
        pass


@needs_chromium
def test_a_page_on_another_origin_cannot_change_the_gateway(gateway_factory, tmp_path):
    gw = gateway_factory("[server]\n")
    # The attack: a page the user visits posts "simple" requests (no preflight) to the gateway.
    script = f"""
      const gw = {json.dumps(gw.url)};
      const opts = (body) => ({{method: "POST", mode: "no-cors",
                               headers: {{"Content-Type": "text/plain"}}, body}});
      Promise.allSettled([
        fetch(gw + "/admin/budgets", opts({json.dumps(json.dumps(RULE))})),
        fetch(gw + "/admin/keys", opts('{{"name": "lockout"}}')),
        fetch(gw + "/api/pull", opts('{{"model": "smollm2"}}')),
        fetch(gw + "/api/chat", opts('{{"model": "smollm2", "messages": []}}')),
      ]).then(() => {{ document.body.dataset.sent = "yes"; }});
    """
    handler = type("Page", (_Page,), {"html": f"<body><script>{script}</script></body>".encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dom = chromium_dom(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
        server.server_close()
    assert 'data-sent="yes"' in dom
    # The browser did send both (the access log has them), and both were refused.
    for path in ("/admin/budgets", "/admin/keys", "/api/pull", "/api/chat"):
        assert f'"method":"POST","path":"{path}","status":403' in gw.log, gw.log[-2000:]
    assert requests.get(gw.url + "/admin/budgets", timeout=5).json()["data"] == []
    assert requests.get(gw.url + "/admin/keys", timeout=5).json()["data"] == []


@needs_chromium
def test_a_rebinding_name_cannot_read_the_admin_api_in_a_browser(gateway_factory, tmp_path):
    gw = gateway_factory("[server]\n")
    # What DNS rebinding achieves: the attacker's name resolving to the gateway's address.
    rule = "--host-resolver-rules=MAP rebind.evil.example 127.0.0.1"
    dom = chromium_dom(tmp_path, f"http://rebind.evil.example:{port(gw.url)}/admin/keys", rule)
    assert "host_not_allowed" in dom and '"object"' not in dom, dom[:500]
    assert '"path":"/admin/keys","status":421' in gw.log
