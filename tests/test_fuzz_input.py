"""Generated hostile requests against every body-taking endpoint: never a 500, always a clean error.

One gateway (with an admin key, a budget rule and the response cache) in front of a fake OpenAI
and a fake Anthropic upstream serves the whole module. Every answer must be below 500 and, when it
is an error, in the route's own error shape; ``/health`` must answer after each request, and the
gateway's log must hold no traceback (checked per example, and by the fixture at the end).

The default example budget keeps this file fast; ``--hypothesis-profile=long`` runs many more.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzzing
from tests.conftest import GatewayProcess, openai_provider_toml
from tests.fake_anthropic import API_KEY, FakeAnthropic
from tests.fake_openai import FakeOpenAI

ADMIN_KEY = "fuzz-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[GatewayProcess]:
    with FakeOpenAI() as openai_fake, FakeAnthropic() as anthropic_fake:
        cfg = (
            f"""
[server]
admin_key = "{ADMIN_KEY}"

[[budgets]]
name = "roomy"
scope = "cloud"
metric = "usd"
limit = 1000
period = "day"
action = "block"
"""
            + openai_provider_toml(openai_fake, models='["gpt-*", "tts-1", "whisper-1"]')
            + f"""
[[providers]]
name = "claude"
type = "anthropic"
base_url = "{anthropic_fake.url}"
api_key = "{API_KEY}"
models = ["claude-*"]
timeout_s = 5
"""
        )
        with GatewayProcess(cfg, tmp_path_factory.mktemp("fuzz")) as proc:
            yield proc


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def check(gw: GatewayProcess, http: requests.Session, r: requests.Response, anthropic=False):
    """The answer is below 500, an error is in the route's shape, and the gateway still serves."""
    body = r.content  # a stream is read to its end
    time.sleep(0.002)  # let the log reader catch up with what the request wrote
    problems = gw.log_problems()
    new, gw.fuzz_seen = problems[getattr(gw, "fuzz_seen", 0) :], len(problems)
    assert r.status_code < 500, body[:500]
    if r.status_code >= 400:
        doc = json.loads(body)
        if anthropic:
            assert doc["type"] == "error" and set(doc["error"]) == {"type", "message"}
            assert isinstance(doc["error"]["type"], str) and doc["error"]["message"]
        else:
            assert set(doc) == {"error"}
            assert set(doc["error"]) == {"message", "type", "param", "code"}
            assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    assert http.get(gw.url + "/health", timeout=10).status_code == 200
    assert not new, new[0]  # reported for this example; the fixture still fails the module


def post_json(http: requests.Session, gw: GatewayProcess, path: str, data: bytes, **kw):
    return http.post(gw.url + path, data=data, headers={**JSON, **kw}, timeout=30)


def _body(mutated: tuple, raw_utf8: bool) -> bytes:
    doc, raws = mutated
    return fuzzing.encode(doc, raws, raw_utf8)


@given(fuzzing.broken(fuzzing.chat_request), st.booleans())
def test_chat_completions(gw, http, mutated, raw_utf8):
    check(gw, http, post_json(http, gw, "/v1/chat/completions", _body(mutated, raw_utf8)))


@given(fuzzing.broken(fuzzing.messages_request), st.booleans())
def test_messages(gw, http, mutated, raw_utf8):
    r = post_json(http, gw, "/v1/messages", _body(mutated, raw_utf8))
    check(gw, http, r, anthropic=True)


@given(fuzzing.broken(fuzzing.speech_request), st.booleans())
def test_speech(gw, http, mutated, raw_utf8):
    check(gw, http, post_json(http, gw, "/v1/audio/speech", _body(mutated, raw_utf8)))


@given(fuzzing.broken(fuzzing.budget_request), st.booleans())
def test_admin_budgets_create(gw, http, mutated, raw_utf8):
    r = post_json(http, gw, "/admin/budgets", _body(mutated, raw_utf8))
    check(gw, http, r)
    if r.status_code == 201:
        name = r.json()["name"]
        assert http.delete(gw.url + f"/admin/budgets/{name}", headers=AUTH).status_code == 200


_rule_change = fuzzing.budget_request.map(
    lambda rule: {k: v for k, v in rule.items() if k != "name"}
)


@given(fuzzing.broken(_rule_change), st.booleans())
def test_admin_budgets_change(gw, http, mutated, raw_utf8):
    data = _body(mutated, raw_utf8)
    r = http.patch(gw.url + "/admin/budgets/roomy", data=data, headers=JSON, timeout=30)
    check(gw, http, r)
    if r.status_code == 200:  # put the standing rule back
        roomy = {
            "scope": "cloud",
            "metric": "usd",
            "limit": 1000,
            "period": "day",
            "action": "block",
        }
        fixed = http.patch(gw.url + "/admin/budgets/roomy", data=json.dumps(roomy), headers=JSON)
        assert fixed.status_code == 200, fixed.text


@given(fuzzing.broken(fuzzing.key_request), st.booleans())
def test_admin_keys(gw, http, mutated, raw_utf8):
    r = post_json(http, gw, "/admin/keys", _body(mutated, raw_utf8))
    check(gw, http, r)
    if r.status_code == 201:
        name = r.json()["name"]
        assert http.delete(gw.url + f"/admin/keys/{name}", headers=AUTH).status_code == 200
        http.delete(gw.url + f"/admin/budgets/key-{name}", headers=AUTH)  # its own cap, if any


# ---- multipart ---------------------------------------------------------------------------------


def _wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, dtype=np.float32), 16000, format="WAV")
    return buf.getvalue()


WAV = _wav()
field_bytes = st.one_of(
    st.sampled_from([b"whisper-1", b"json", b"text", b"srt", b"0.2", b"en", b"nan", b"1e999",
                     b"\xed\xa0\x80", b"\xff\xfe", b"caf\xc3\xa9", b"\xf0\x9f\xa6\x99", b""]),
    st.binary(max_size=30),
    fuzzing.any_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
)  # fmt: skip
file_bytes = st.one_of(st.just(WAV), st.binary(max_size=2000), st.just(WAV[:60]),
                       st.just(b"RIFF" + bytes(100)), st.just(b"fLaC" + bytes(100)))  # fmt: skip


@st.composite
def multipart(draw: st.DrawFn) -> tuple[bytes, str]:
    """A multipart body: the usual fields with any bytes in them, and a file that may be audio."""
    boundary = "fuzz" + draw(st.text("abcdef0123456789", min_size=4, max_size=12))
    fields = {"model": b"whisper-1"}
    for name in ("response_format", "language", "prompt", "temperature", "model"):
        if draw(st.booleans()):
            fields[name] = draw(field_bytes)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value + b"\r\n")  # fmt: skip
    if draw(st.integers(0, 9)):  # usually a file part
        filename = draw(fuzzing.any_text).encode("utf-8", "surrogatepass").replace(b'"', b"")
        filename = filename.replace(b"\r", b"").replace(b"\n", b"")
        ctype = draw(st.sampled_from([b"audio/wav", b"text/plain", b"application/octet-stream",
                                      b"video/mp4", b"image/png", b"\xff\xfe"]))  # fmt: skip
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"".encode()
                     + filename + b'"\r\nContent-Type: ' + ctype + b"\r\n\r\n"
                     + draw(file_bytes) + b"\r\n")  # fmt: skip
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    if draw(st.integers(0, 9)) == 0:  # sometimes cut or corrupt the framing
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.binary(max_size=20))
    return body, f"multipart/form-data; boundary={boundary}"


@given(multipart(), st.sampled_from(["transcriptions", "translations"]))
def test_audio_uploads(gw, http, upload, path):
    body, ctype = upload
    r = http.post(gw.url + f"/v1/audio/{path}", data=body,
                  headers={**AUTH, "Content-Type": ctype}, timeout=30)  # fmt: skip
    check(gw, http, r)


# ---- headers and media types ---------------------------------------------------------------------

header_bytes = st.one_of(
    # requests refuses a value with CR or LF, or one that starts with white space.
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").lstrip()),
    st.sampled_from([b"Bearer \xed\xa0\x80", b"Bearer caf\xc3\xa9", b"no-cache, no-store",
                     b"max-age=\xff", b"application/json; charset=latin-1", b"text/plain",
                     b"application/json; charset=utf-8", b"APPLICATION/JSON", b""]),
)  # fmt: skip


@given(st.sampled_from(["Authorization", "X-Api-Key", "Cache-Control", "Content-Type",
                        "X-Request-Id"]), header_bytes,
       st.sampled_from(["/v1/chat/completions", "/v1/messages", "/admin/budgets"]))  # fmt: skip
def test_headers(gw, http, name, value, path):
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    headers = {**JSON, name: value}
    r = http.post(gw.url + path, data=json.dumps(body), headers=headers, timeout=30)
    check(gw, http, r, anthropic=path == "/v1/messages")


# ---- query strings and paths -------------------------------------------------------------------

url_text = st.one_of(
    st.sampled_from(["day", "hour", "total", "provider", "model", "key", "", "%ED%A0%80", "%FF",
                     "%00", "..%2F..%2F", "roomy", "gpt-4o-mini", "🦙"]),
    st.text(st.characters(codec="utf-8", exclude_characters="?#"), max_size=20),
)  # fmt: skip


@given(st.sampled_from(["GET /v1/usage?period={}&group_by={}", "GET /v1/models/{}{}",
                        "GET /admin/budgets/{}{}", "DELETE /admin/budgets/x{}{}",
                        "DELETE /admin/cache?model={}{}", "DELETE /admin/keys/x{}{}"]),
       url_text, url_text)  # fmt: skip
def test_query_strings_and_paths(gw, http, template, a, b):
    method, _, path = template.partition(" ")
    r = http.request(method, gw.url + path.format(a, b), headers=AUTH, timeout=30)
    check(gw, http, r)
