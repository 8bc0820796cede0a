"""Generated hostile /v1/responses and /v1/completions bodies: never a 500, always OpenAI's error
shape, the gateway still serving (the fuzz module's gateway: fake OpenAI and fake Anthropic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests import fuzzing
from tests.test_fuzz_input import _body, check, gw, http, post_json  # noqa: F401 - fixtures

words = fuzzing.words
_part = st.one_of(
    st.builds(lambda t: {"type": "input_text", "text": t}, words),
    st.builds(lambda t: {"type": "output_text", "text": t}, words),
    st.just({"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}),
    st.just({"type": "input_file", "file_id": "file_1"}),
)
_item = st.one_of(
    st.builds(lambda r, c: {"type": "message", "role": r, "content": c},
              st.sampled_from(["user", "assistant", "system", "developer"]),
              st.one_of(words, st.lists(_part, min_size=1, max_size=3))),
    st.builds(lambda a: {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                         "arguments": a}, st.sampled_from(['{"city": "Oslo"}', "{", ""])),
    st.builds(lambda o: {"type": "function_call_output", "call_id": "call_1", "output": o}, words),
    st.just({"type": "reasoning", "id": "rs_1", "summary": []}),
)  # fmt: skip
_tool = {"type": "function", "name": "get_weather", "description": "Weather.",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
responses_request = st.fixed_dictionaries(
    {
        "model": st.sampled_from(fuzzing.CHAT_MODELS),
        "input": st.one_of(words, st.lists(_item, min_size=1, max_size=4)),
    },
    optional={
        "instructions": words,
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_output_tokens": st.integers(1, 64),
        "stream": st.booleans(),
        "store": st.booleans(),
        "tools": st.sampled_from([[_tool], [{"type": "web_search"}]]),
        "tool_choice": st.sampled_from(["auto", "none", "required",
                                        {"type": "function", "name": "get_weather"}]),
        "text": st.sampled_from([{"format": {"type": "text"}}, {"format": {"type": "json_object"}},
                                 {"format": {"type": "json_schema", "name": "x",
                                             "schema": {"type": "object"}}}]),
        "metadata": st.dictionaries(words, words, max_size=3),
        "previous_response_id": st.sampled_from(["resp_nope", ""]),
        "user": words,
    },
)  # fmt: skip
completions_request = st.fixed_dictionaries(
    {
        "model": st.sampled_from(fuzzing.CHAT_MODELS),
        "prompt": st.one_of(words, st.lists(words, min_size=1, max_size=3)),
    },
    optional={
        "max_tokens": st.integers(1, 64),
        "temperature": st.floats(0, 2),
        "stream": st.booleans(),
        "echo": st.booleans(),
        "suffix": words,
        "logprobs": st.integers(0, 5),
        "stop": st.one_of(words, st.lists(words, max_size=4)),
    },
)


@given(fuzzing.broken(responses_request), st.booleans())
def test_responses(gw, http, mutated, raw_utf8):  # noqa: F811 - the fixtures
    check(gw, http, post_json(http, gw, "/v1/responses", _body(mutated, raw_utf8)))


@given(fuzzing.broken(completions_request), st.booleans())
def test_completions(gw, http, mutated, raw_utf8):  # noqa: F811 - the fixtures
    check(gw, http, post_json(http, gw, "/v1/completions", _body(mutated, raw_utf8)))
