"""The upstream side of the Responses passthrough on any JSON an upstream may send: a chat answer
or chunks, or an UpstreamError; never another exception."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hoosh_edge.errors import UpstreamError
from hoosh_edge.formats.openai_responses_up import ChunkMaker, chat_from_response, chat_to_items

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=12,
)  # fmt: skip
_key = st.sampled_from(["type", "output", "content", "text", "name", "arguments", "call_id", "id",
                        "status", "usage", "input_tokens", "item", "item_id", "delta", "response",
                        "error", "message"])  # fmt: skip
_types = st.sampled_from(["message", "function_call", "output_text", "response.output_text.delta",
                          "response.output_item.added", "response.function_call_arguments.delta",
                          "response.completed", "response.incomplete", "response.failed",
                          "error", "failed", "incomplete"])  # fmt: skip
# Dicts with the keys the translation reads, so the search reaches its branches.
_shaped = st.recursive(
    _json,
    lambda inner: st.dictionaries(_key, inner | _types, max_size=5) | st.lists(inner, max_size=3),
    max_leaves=20,
)


@given(_shaped)
def test_a_response_object_is_an_answer_or_an_upstream_error(doc):
    try:
        out = chat_from_response(doc, "p")
    except UpstreamError:
        return
    msg = out["choices"][0]["message"]
    assert msg["content"] is None or isinstance(msg["content"], str)


@given(st.lists(_shaped, max_size=6))
def test_stream_events_are_chunks_or_an_upstream_error(events):
    maker = ChunkMaker("p")
    try:
        for event in events:
            for chunk in maker.feed(event):
                assert isinstance(chunk.get("choices"), list)
    except UpstreamError:
        pass


def test_a_conversation_becomes_input_items():
    items = chat_to_items([
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:x", "detail": "low"}}]},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ])  # fmt: skip
    assert items == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "data:x", "detail": "low"}]},
        {"type": "message", "role": "assistant", "content": "calling"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "done"},
    ]  # fmt: skip
