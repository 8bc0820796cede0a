"""Legacy /v1/completions through the gateway process with the official SDK: SmolLM2 on the raw
prompt (no chat template), a fake cloud's own /completions, and what is refused."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import openai_provider_toml, require, require_module

require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")
SMOLLM2 = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
require(SMOLLM2.exists(), "SmolLM2 is not pulled (hoosh-edge models pull smollm2)")

LOCAL = f'[local.llm]\nn_threads = 1\nn_ctx = 2048\n[local.llm.models]\nsmollm2 = "{SMOLLM2}"\n'
PROMPT = "The capital of France is"


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def raw_tokens() -> int:
    """How many tokens SmolLM2 makes of PROMPT alone (its chat template makes far more)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(SMOLLM2), n_ctx=256, verbose=False)
    try:
        return len(llm.tokenize(PROMPT.encode(), add_bos=True, special=False))
    finally:
        llm.close()


def test_local_raw_prompt_plain_stream_echo_and_logprobs(gateway_factory, raw_tokens):
    gw = gateway_factory(LOCAL + "[cache]\nenabled = false\n")
    c = client(gw)
    out = c.completions.create(model="smollm2", prompt=PROMPT, max_tokens=8, temperature=0)
    text = out.choices[0].text
    assert out.object == "text_completion" and out.id.startswith("cmpl-") and text
    # The raw prompt, not a chat turn: exactly its own tokens were evaluated.
    assert out.usage.prompt_tokens == raw_tokens
    assert 0 < out.usage.completion_tokens <= 8
    assert out.choices[0].finish_reason in ("stop", "length")
    chunks = list(c.completions.create(model="smollm2", prompt=PROMPT, max_tokens=8,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True}))  # fmt: skip
    streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert streamed == text  # greedy: the same raw prompt makes the same tokens
    assert chunks[-1].usage.prompt_tokens == raw_tokens and not chunks[-1].choices
    echoed = c.completions.create(model="smollm2", prompt=PROMPT, max_tokens=8, temperature=0,
                                  echo=True)  # fmt: skip
    assert echoed.choices[0].text == PROMPT + text
    scored = c.completions.create(model="smollm2", prompt=PROMPT, max_tokens=6, temperature=0,
                                  logprobs=2)  # fmt: skip
    lp = scored.choices[0].logprobs
    assert "".join(lp.tokens) == scored.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == scored.usage.completion_tokens
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(len(t) == 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_local_suffix_without_fim_tokens_is_a_clear_400(gateway_factory):
    gw = gateway_factory(LOCAL)
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).completions.create(model="smollm2", prompt="def f(", suffix="\n    return x",
                                      max_tokens=8)  # fmt: skip
    assert e.value.body["param"] == "suffix" and "FIM" in e.value.body["message"]


def test_cloud_gets_its_own_completions(gateway_factory, fake_openai):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    c = client(gw)
    out = c.completions.create(model="gpt-4o-mini", prompt="hello you", max_tokens=5)
    assert out.choices[0].text == " Echo: hello you" and out.usage.completion_tokens == 3
    sent = fake_openai.requests[-1]
    assert sent["path"] == "/v1/completions"
    assert sent["json"]["prompt"] == "hello you" and sent["json"]["max_tokens"] == 5
    chunks = list(c.completions.create(model="gpt-4o-mini", prompt="a b", stream=True,
                                       logprobs=1))  # fmt: skip
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == " Echo: a b"
    assert chunks[0].choices[0].logprobs.tokens == [" Echo:"]
    two = c.completions.create(model="gpt-4o-mini", prompt=["x", "y"], echo=True, suffix="z")
    assert [ch.text for ch in two.choices] == ["x <fill>", "y <fill>"]
    assert [ch.index for ch in two.choices] == [0, 1]
    assert fake_openai.requests[-1]["json"]["suffix"] == "z"
    assert not fake_openai.chat_requests  # never a chat turn


def test_provider_without_completions_is_a_clear_400(gateway_factory, fake_openai):
    fake_openai.serves_legacy = False
    gw = gateway_factory(openai_provider_toml(fake_openai))
    for stream in (False, True):
        r = requests.post(gw.url + "/v1/completions", timeout=10, json={
            "model": "gpt-4o-mini", "prompt": "hi", "stream": stream})  # fmt: skip
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "model" and "no legacy /completions" in err["message"]


REFUSED = [
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"n": 2}, "n"),
    ({"best_of": 3}, "best_of"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"logprobs": 9}, "logprobs"),
    ({"logprobs": 1, "echo": True}, "echo"),
    ({"prompt": ["a", "b"], "stream": True}, "prompt"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": 5}, "temperature"),
    ({"suffix": 3}, "suffix"),
    ({"frobnicate": True}, "frobnicate"),
]  # fmt: skip


def test_refused_with_the_param_named(gateway_factory, fake_openai):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    for body, param in REFUSED:
        r = requests.post(gw.url + "/v1/completions", timeout=10,
                          json={"model": "gpt-4o-mini", "prompt": "hi", **body})  # fmt: skip
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.text)
    # The raw-prompt field is the completions door's own: a chat client cannot send one.
    r = requests.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "legacy": {"suffix": "x"}})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "legacy", r.text
    assert not [x for x in fake_openai.requests if x["json"] is not None]
