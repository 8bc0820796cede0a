"""The token upper bound: never below what a byte-level tokenizer makes of the same request."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoosh_edge.books.ledger import Usage
from hoosh_edge.books.pricing import Price, cost_micro_usd
from hoosh_edge.books.rules import Rule
from hoosh_edge.books.spend import affordable_tokens
from hoosh_edge.estimate import (
    PER_MESSAGE_TOKENS,
    PER_REQUEST_TOKENS,
    Unbounded,
    json_tokens,
    prompt_tokens,
    text_tokens,
)
from tests.conftest import require, require_module
from tests.fake_openai import harsh_prompt_tokens

SMOLLM2 = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# Any text at all: every script, emoji with joiners and modifiers, control characters.
texts = st.text(max_size=200)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
tool_calls = st.builds(
    lambda name, args: {
        "id": "call_1",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args)},
    },  # fmt: skip
    texts,
    st.dictionaries(texts, json_values, max_size=4),
)
messages = st.one_of(
    st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["system", "user"]), texts),
    st.builds(
        lambda c, n: {"role": "user", "name": n, "content": [{"type": "text", "text": c}]},
        texts,
        texts,
    ),  # fmt: skip
    st.builds(
        lambda c, calls: {"role": "assistant", "content": c, "tool_calls": calls},
        st.none() | texts,
        st.lists(tool_calls, max_size=3),
    ),  # fmt: skip
    st.builds(lambda c: {"role": "tool", "tool_call_id": "call_1", "content": c}, texts),
)
tools = st.lists(
    st.builds(
        lambda name, desc, schema: {
            "type": "function",
            "function": {"name": name, "description": desc, "parameters": schema},
        },
        texts,
        texts,
        st.dictionaries(texts, json_values, max_size=4),
    ),  # fmt: skip
    max_size=3,
)
requests_ = st.builds(
    lambda msgs, tl, fmt: {
        "model": "m",
        "messages": msgs,
        **({"tools": tl} if tl else {}),
        **({"response_format": fmt} if fmt else {}),
    },  # fmt: skip
    st.lists(messages, min_size=1, max_size=6),
    tools,
    st.none() | st.dictionaries(texts, json_values, max_size=3),
)


@given(requests_)
@settings(max_examples=300, deadline=None)
def test_the_bound_is_never_below_the_harshest_byte_level_count(req) -> None:
    # The fake upstream's tokenizer: one token a byte of everything tokenized, plus overhead.
    assert prompt_tokens(req) >= harsh_prompt_tokens(req)


@pytest.fixture(scope="module")
def vocab():
    llama_cpp = require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")
    require(SMOLLM2.exists(), "SmolLM2 is not pulled (hoosh-edge models pull smollm2)")
    return llama_cpp.Llama(str(SMOLLM2), vocab_only=True, verbose=False)


@given(texts)
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_real_byte_level_bpe_never_makes_more_tokens_than_bytes(vocab, text) -> None:
    tokens = vocab.tokenize(text.encode(), add_bos=False, special=False)
    assert len(tokens) <= text_tokens(text)


@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), texts), min_size=1,
                max_size=5))  # fmt: skip
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_real_chat_template_fits_the_per_message_overhead(vocab, turns) -> None:
    # ChatML, as SmolLM2 (and OpenAI's models) wrap each message: markers, role, newlines.
    rendered = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)
    rendered += "<|im_start|>assistant\n"
    tokens = vocab.tokenize(rendered.encode(), add_bos=False, special=True)
    req = {"messages": [{"role": role, "content": text} for role, text in turns]}
    assert len(tokens) <= prompt_tokens(req)


def test_scripts_count_their_bytes_not_their_characters() -> None:
    for text, size in (("hello", 5), ("今日は", 9), ("🙂", 4), ("👩‍👩‍👧‍👦", 25)):
        assert text_tokens(text) == size
    one = {"messages": [{"role": "user", "content": "今日は"}]}
    assert prompt_tokens(one) == PER_REQUEST_TOKENS + PER_MESSAGE_TOKENS + 4 + 9


def test_tool_arguments_and_schemas_count_in_their_widest_spelling() -> None:
    compact = '{"a":1,"b":[1,2],"c":"é"}'
    wide = json.dumps(json.loads(compact))  # spaces after ':' and ',', 'é' escaped
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "f", "arguments": compact}}]}  # fmt: skip
    with_call = prompt_tokens({"messages": [call]})
    without = prompt_tokens({"messages": [{"role": "assistant", "content": None}]})
    assert with_call - without >= len(wide) + 1 + 1  # arguments, name, id
    assert json_tokens({"k": "é"}) == len('{"k": "\\u00e9"}')


def test_images_count_their_documented_maximum_or_are_unbounded() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}}
    req = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}]}
    with pytest.raises(Unbounded):
        prompt_tokens(req)
    # The base64 is not text the model reads: the image costs its maximum, not its bytes.
    assert (
        prompt_tokens(req, image_max_tokens=1445)
        == prompt_tokens(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
        )
        + 1445
    )
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(Unbounded):
        prompt_tokens({"messages": [{"role": "user", "content": [audio]}]}, image_max_tokens=10)


def test_anthropic_system_is_counted() -> None:
    base = {"messages": [{"role": "user", "content": "hi"}]}
    assert prompt_tokens({**base, "system": "Be brief."}) > prompt_tokens(base) + len("Be brief.")
    blocks = [{"type": "text", "text": "Sois bref."}]
    assert prompt_tokens({**base, "system": blocks}) > prompt_tokens(base) + len("Sois bref.")


def _usd_rule(limit: int) -> Rule:
    return Rule("r", "cloud", "usd", limit, "day", "block")


@given(
    st.integers(0, 5000),
    st.integers(0, 2_000_000),
    st.decimals(Decimal("0.01"), Decimal("200"), places=2),
    st.decimals(Decimal("0.01"), Decimal("600"), places=2),
)
@settings(max_examples=300, deadline=None)
def test_the_affordable_answer_is_the_largest_that_fits(prompt, left, inp, out) -> None:
    price = Price(inp, out)
    ceiling = 100_000
    n = affordable_tokens(Usage(prompt_tokens=prompt), price, [(_usd_rule(left), left)], ceiling)
    if n >= 0:
        assert cost_micro_usd(price, Usage(prompt_tokens=prompt, completion_tokens=n)) <= left
    if n < ceiling:
        more = Usage(prompt_tokens=prompt, completion_tokens=max(n, -1) + 1)
        assert cost_micro_usd(price, more) > left


def test_a_tokens_rule_leaves_room_for_the_prompt() -> None:
    rule = Rule("t", "cloud", "tokens", 1000, "day", "block")
    assert affordable_tokens(Usage(prompt_tokens=300), None, [(rule, 1000)], 5000) == 700
    assert affordable_tokens(Usage(prompt_tokens=300), None, [], 5000) == 5000
