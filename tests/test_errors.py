"""Bad input gets a clear OpenAI-style 4xx and the server keeps serving."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import openai_provider_toml


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    from tests.conftest import GatewayProcess
    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI() as fake:
        proc = GatewayProcess(openai_provider_toml(fake), tmp_path_factory.mktemp("gw"))
        with proc:
            yield proc


def post(gw, body=None, *, data=None, headers=None):
    return requests.post(gw.url + "/v1/chat/completions", json=body, data=data,
                         headers=headers, timeout=10)  # fmt: skip


def assert_error(r, status, param=None, code=None, contains=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    if contains is not None:
        assert contains in err["message"]
    return err


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": MSG}, "model"),
        ({"model": "gpt-4o-mini"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages"),
        ({"model": "gpt-4o-mini", "messages": "hi"}, "messages"),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
        ),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
        ),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "gpt-4o-mini", "messages": MSG, "temperature": 2.5}, "temperature"),
        ({"model": "gpt-4o-mini", "messages": MSG, "temperature": -0.1}, "temperature"),
        ({"model": "gpt-4o-mini", "messages": MSG, "temperature": "hot"}, "temperature"),
        ({"model": "gpt-4o-mini", "messages": MSG, "top_p": 1.5}, "top_p"),
        ({"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 1.5}, "max_tokens"),
        ({"model": "gpt-4o-mini", "messages": MSG, "n": 2}, "n"),
        ({"model": "gpt-4o-mini", "messages": MSG, "presence_penalty": 3}, "presence_penalty"),
        ({"model": "gpt-4o-mini", "messages": MSG, "frequency_penalty": -2.5}, "frequency_penalty"),
        ({"model": "gpt-4o-mini", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "gpt-4o-mini", "messages": MSG, "stream": "yes"}, "stream"),
        ({"model": "gpt-4o-mini", "messages": MSG, "seed": "x"}, "seed"),
    ],
)
def test_invalid_fields_get_400_naming_the_field(gw, body, param):
    assert_error(post(gw, body), 400, param=param)


def test_malformed_json(gw):
    err = assert_error(
        post(gw, data=b'{"model": ', headers={"Content-Type": "application/json"}), 400
    )
    assert "JSON" in err["message"]
    assert_error(post(gw, data=b"[1, 2]", headers={"Content-Type": "application/json"}), 400)
    assert_error(post(gw, data=b"", headers={"Content-Type": "application/json"}), 400)
    assert_error(post(gw, data=b"\xff\xfe\x00", headers={"Content-Type": "application/json"}), 400)


def test_unknown_model_is_404_listing_what_exists(gw):
    err = assert_error(post(gw, {"model": "nope-1", "messages": MSG}), 404, param="model",
                       code="model_not_found")  # fmt: skip
    assert "nope-1" in err["message"] and "Available" in err["message"]


def test_body_over_one_megabyte_is_413(gw):
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}
    assert_error(post(gw, big), 413)


def test_unknown_path_and_method(gw):
    r = requests.get(gw.url + "/v1/nothing-here", timeout=5)
    assert_error(r, 404)
    r = requests.get(gw.url + "/v1/chat/completions", timeout=5)
    assert_error(r, 405)


def test_server_still_serves_after_all_that(gw):
    r = post(gw, {"model": "gpt-4o-mini", "messages": MSG})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Echo: hi"
