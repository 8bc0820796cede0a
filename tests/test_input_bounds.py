"""Hostile input gets a clear 4xx naming the field, is never forwarded, and never crashes the gateway.

Deep nesting, lone surrogates, numbers JSON cannot hold, content parts of a type the endpoint does
not take, and JSON bodies sent as anything but ``application/json`` (a web page can post
``text/plain`` cross-site without a preflight).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import GatewayProcess, openai_provider_toml
from tests.fake_openai import FakeOpenAI

ADMIN = "bounds-admin-key-0123456789"
JSON = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        yield f


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory) -> Iterator[GatewayProcess]:
    cfg = f'[server]\nadmin_key = "{ADMIN}"\n' + openai_provider_toml(
        fake, models='["gpt-*", "tts-1", "whisper-1"]'
    )
    with GatewayProcess(cfg, tmp_path_factory.mktemp("bounds")) as proc:
        yield proc


def post(gw, path: str, data: bytes | str, headers: dict | None = None) -> requests.Response:
    return requests.post(gw.url + path, data=data, headers=headers or JSON, timeout=10)


def openai_error(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def anthropic_error(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["type"] == "error" and set(doc["error"]) == {"type", "message"}
    return doc["error"]


def chat(**extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": HI, **extra}


def anthropic(**extra) -> dict:
    return {"model": "gpt-4o-mini", "max_tokens": 5, "messages": HI, **extra}


JSON_ROUTES = [
    ("/v1/chat/completions", chat()),
    ("/v1/audio/speech", {"model": "tts-1", "input": "hello"}),
    ("/admin/budgets", {"name": "n", "scope": "all", "metric": "usd", "limit": 1,
                        "period": "day", "action": "warn"}),
    ("/admin/keys", {"name": "kitchen"}),
]  # fmt: skip


@pytest.mark.parametrize("path,_", JSON_ROUTES)
def test_json_nested_5000_deep_is_400_not_a_crash(gw, fake, path, _):
    before = len(fake.requests)
    err = openai_error(post(gw, path, "[" * 5000 + "]" * 5000), 400)
    assert "nested more than 64 levels" in err["message"] and err["code"] == "json_too_deep"
    deep = '{"model": "gpt-4o-mini", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    openai_error(post(gw, path, deep), 400)
    assert len(fake.requests) == before


def test_nesting_limit_is_64_levels(gw, fake):
    # The body object is level 1, so 63 nested arrays in a field make 64 levels: accepted.
    ok = json.dumps(chat())[:-1] + ', "metadata_x": ' + "[" * 63 + "]" * 63 + "}"
    r = post(gw, "/v1/chat/completions", ok)
    assert r.status_code == 200, r.text
    assert fake.chat_requests[-1]["json"]["metadata_x"] == json.loads("[" * 63 + "]" * 63)
    too_deep = json.dumps(chat())[:-1] + ', "metadata_x": ' + "[" * 64 + "]" * 64 + "}"
    openai_error(post(gw, "/v1/chat/completions", too_deep), 400)
    err = anthropic_error(post(gw, "/v1/messages", "[" * 5000 + "]" * 5000), 400)
    assert err["type"] == "invalid_request_error" and "64 levels" in err["message"]


def test_lone_surrogate_is_400_naming_the_field(gw, fake):
    before = len(fake.requests)
    # json.dumps writes the lone surrogate as the escape \ud800, as a hostile client would.
    bad = chat(messages=[{"role": "user", "content": "hi \ud800"}])
    err = openai_error(post(gw, "/v1/chat/completions", json.dumps(bad)), 400)
    assert err["param"] == "messages[0].content" and "surrogate" in err["message"]
    tools = chat(tools=[{"type": "function", "function": {"name": "f\udfff"}}])
    err = openai_error(post(gw, "/v1/chat/completions", json.dumps(tools)), 400)
    assert err["param"] == "tools[0].function.name"
    err = openai_error(post(gw, "/v1/chat/completions", json.dumps(chat(**{"\ud800": 1}))), 400)
    assert "key" in err["message"]
    err = openai_error(post(gw, "/v1/audio/speech", json.dumps({"model": "tts-1",
                                                                  "input": "\ud800"})), 400)  # fmt: skip
    assert err["param"] == "input"
    err = openai_error(post(gw, "/admin/keys", json.dumps({"name": "k\ud800"})), 400)
    assert err["param"] == "name"
    # On /v1/messages the field is named Anthropic's way, in Anthropic's error shape.
    body = anthropic(messages=[{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}])
    err = anthropic_error(post(gw, "/v1/messages", json.dumps(body)), 400)
    assert "messages.0.content.0.text" in err["message"]
    # The same surrogate as raw bytes is not UTF-8 at all.
    raw = json.dumps(bad, ensure_ascii=False).encode("utf-8", "surrogatepass")
    err = openai_error(post(gw, "/v1/chat/completions", raw), 400)
    assert "UTF-8" in err["message"]
    assert len(fake.requests) == before


def test_surrogate_pairs_and_emoji_are_fine(gw, fake):
    body = (
        '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud83e\\udd99 🌍"}]}'
    )
    r = post(gw, "/v1/chat/completions", body.encode())
    assert r.status_code == 200, r.text
    assert fake.chat_requests[-1]["json"]["messages"][0]["content"] == "🦙 🌍"


def test_multipart_field_that_is_not_utf8_is_400_naming_it(gw, fake):
    before = len(fake.requests)
    r = requests.post(gw.url + "/v1/audio/transcriptions", headers={"Authorization": JSON["Authorization"]},
                      files={"model": (None, b"whisper-1"), "prompt": (None, b"caf\xed\xa0\x80"),
                             "file": ("a.wav", b"RIFF" + bytes(64), "audio/wav")}, timeout=10)  # fmt: skip
    assert openai_error(r, 400)["param"] == "prompt"
    assert len(fake.requests) == before


def test_header_that_is_not_ascii_is_400_naming_it(gw):
    headers = {**JSON, "Cache-Control": b"no-cache\xff"}
    err = openai_error(post(gw, "/v1/chat/completions", json.dumps(chat()), headers), 400)
    assert err["param"] == "Cache-Control"
    err = openai_error(post(gw, "/v1/chat/completions", json.dumps(chat()),
                            {**JSON, "Authorization": b"Bearer \xe2\x82\xac"}), 400)  # fmt: skip
    assert err["param"] == "Authorization"


@pytest.mark.parametrize("raw", ["1e999", "-1e999", "NaN", "Infinity", "1" + "0" * 30, "9" * 5000])
def test_numbers_json_cannot_hold_are_400(gw, fake, raw):
    before = len(fake.requests)
    body = json.dumps(chat())[:-1] + f', "seed": {raw}}}'
    err = openai_error(post(gw, "/v1/chat/completions", body), 400)
    assert err["param"] in (None, "seed")
    assert len(fake.requests) == before


@pytest.mark.parametrize("part,param", [
    ({"type": "hologram"}, "messages[0].content[0].type"),
    ({"text": "no type"}, "messages[0].content[0].type"),
    ("just a string", "messages[0].content[0]"),
    ({"type": "image_url", "image_url": "https://x.invalid/a.png"}, "messages[0].content[0].image_url"),
    ({"type": "image_url", "image_url": {"url": 5}}, "messages[0].content[0].image_url.url"),
    ({"type": "input_audio", "input_audio": {"data": "AA==", "format": "ogg"}},
     "messages[0].content[0].input_audio.format"),
    ({"type": "file", "file": {}}, "messages[0].content[0].file"),
    ({"type": "refusal", "refusal": "no"}, "messages[0].content[0].type"),  # assistant only
])  # fmt: skip
def test_unknown_or_malformed_content_part_is_400_naming_it(gw, fake, part, param):
    before = len(fake.requests)
    body = chat(messages=[{"role": "user", "content": [part]}])
    err = openai_error(post(gw, "/v1/chat/completions", json.dumps(body)), 400)
    assert err["param"] == param, err
    assert len(fake.requests) == before


def test_parts_a_role_cannot_send_are_400(gw):
    image = {"type": "image_url", "image_url": {"url": "https://x.invalid/a.png"}}
    body = chat(messages=[{"role": "system", "content": [image]}, *HI])
    err = openai_error(post(gw, "/v1/chat/completions", json.dumps(body)), 400)
    assert err["param"] == "messages[0].content[0].type" and "system message" in err["message"]
    body = chat(messages=[{"role": "assistant", "content": None, "tool_calls": "call it"}, *HI])
    err = openai_error(post(gw, "/v1/chat/completions", json.dumps(body)), 400)
    assert err["param"] == "messages[0].tool_calls"
    body = chat(messages=[{"role": ["user"], "content": "hi"}])
    assert openai_error(post(gw, "/v1/chat/completions", json.dumps(body)), 400)["param"] == (
        "messages[0].role"
    )


def test_every_user_part_type_openai_defines_is_forwarded(gw, fake):
    parts = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://x.invalid/a.png", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "a.pdf"}},
    ]
    r = post(
        gw, "/v1/chat/completions", json.dumps(chat(messages=[{"role": "user", "content": parts}]))
    )
    assert r.status_code == 200, r.text
    assert fake.chat_requests[-1]["json"]["messages"][0]["content"] == parts


@pytest.mark.parametrize("block,says", [
    ({"type": "hologram"}, "does not match any of the expected tags"),
    ({"type": "document", "source": {}}, "not supported here"),
    ({"type": "tool_use", "id": "t", "name": "f", "input": {}}, "not supported here"),  # assistant's
    ("text", "does not match any of the expected tags"),
])  # fmt: skip
def test_messages_content_block_types(gw, fake, block, says):
    before = len(fake.requests)
    body = anthropic(messages=[{"role": "user", "content": [block]}])
    err = anthropic_error(post(gw, "/v1/messages", json.dumps(body)), 400)
    assert "messages.0.content.0.type" in err["message"] and says in err["message"], err
    assert err["type"] == "invalid_request_error"
    assert len(fake.requests) == before


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/json; charset=latin-1",
                                   "application/jsonx"])  # fmt: skip
@pytest.mark.parametrize("path,body", JSON_ROUTES)
def test_json_endpoints_need_content_type_json(gw, fake, ctype, path, body):
    before = len(fake.requests)
    headers = {"Authorization": JSON["Authorization"]}
    if ctype:
        headers["Content-Type"] = ctype
    err = openai_error(post(gw, path, json.dumps(body), headers), 415)
    assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]
    assert len(fake.requests) == before


def test_messages_needs_content_type_json_in_anthropic_shape(gw, fake):
    headers = {"Authorization": JSON["Authorization"], "Content-Type": "text/plain"}
    err = anthropic_error(post(gw, "/v1/messages", json.dumps(anthropic()), headers), 415)
    assert err["type"] == "invalid_request_error" and "application/json" in err["message"]


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8",
                                   "Application/JSON;charset=UTF-8"])  # fmt: skip
def test_json_with_or_without_charset_is_served(gw, ctype):
    r = post(gw, "/v1/chat/completions", json.dumps(chat()), {**JSON, "Content-Type": ctype})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Echo: hi"


def test_admin_bodies_with_wrong_types_or_huge_amounts_are_400(gw):
    def admin(path: str, body: dict) -> requests.Response:
        return post(gw, path, json.dumps(body))

    assert openai_error(admin("/admin/keys", {"name": "k1", "allowed_models": 0}), 400)[
        "param"
    ] == ("allowed_models")
    assert openai_error(admin("/admin/keys", {"name": "k1", "allowed_models": {"gpt-*": 1}}),
                        400)["param"] == "allowed_models"  # fmt: skip
    # A cap that cannot be stored is refused before the key exists: no uncapped key is left.
    for usd in ("1e400", "1e999999999"):
        err = openai_error(admin("/admin/keys", {"name": "capped", "budget_usd": usd}), 400)
        assert err["param"] == "budget_usd", err
    err = openai_error(admin("/admin/keys", {"name": "capped", "budget_usd": 1, "budget_period": 7}),
                       400)  # fmt: skip
    assert err["param"] == "budget_period"
    listed = requests.get(gw.url + "/admin/keys", headers=JSON, timeout=5).json()["data"]
    assert "capped" not in {k["name"] for k in listed}
    rule = {"name": "huge", "scope": "all", "metric": "tokens", "period": "day", "action": "warn"}
    for limit in ("1e400", "1e999999999", 2**63, "9.3e18"):
        err = openai_error(admin("/admin/budgets", {**rule, "limit": limit}), 400)
        assert err["param"] == "limit", err
    r = admin("/admin/budgets", {**rule, "limit": 2**62})
    assert r.status_code == 201 and r.json()["limit"] == 2**62


def test_the_fixture_fails_a_test_on_a_traceback_or_a_500(tmp_path):
    proc = GatewayProcess("", tmp_path)
    proc.stderr_lines = ['{"request_id":"a","status":200}\n', '{"request_id":"b","status":502}\n']
    proc.check_log()  # an upstream's 502 is no crash
    proc.stderr_lines += ["Traceback (most recent call last):\n", "  File ...\n", "KeyError: 'x'\n",
                          '{"request_id":"c","method":"POST","status":500}\n']  # fmt: skip
    problems = proc.log_problems()
    assert len(problems) == 2 and "KeyError" in problems[0] and '"c"' in problems[1]
    with pytest.raises(pytest.fail.Exception, match="traceback or a 500"):
        proc.check_log()
    proc.expect_errors = True
    proc.check_log()


def test_still_serving(gw):
    assert requests.get(gw.url + "/health", timeout=5).status_code == 200
    r = post(gw, "/v1/chat/completions", json.dumps(chat()))
    assert r.status_code == 200
