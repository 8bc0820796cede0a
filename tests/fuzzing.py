"""Hypothesis strategies for hostile requests: valid-looking bodies with one thing broken.

A body is drawn valid for its endpoint, then one mutation is applied at one place in it: a value
of another type, a deleted or an extra field, nesting far past the limit, a raw number JSON can't
hold (``1e999``, ``NaN``, 400 digits), or nasty text (lone surrogates, emoji, NUL, U+FFFD). It is
then sent as JSON text with the surrogates escaped (``"\\ud800"``) or as raw bytes that are not
UTF-8 at all.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import strategies as st

NASTY_TEXT = ["", " ", "\x00", "\ud800", "\udfff", "a\udc00b", "\ud83d", "🦙🦙", "\ufffd", "\ufeff",
              "\u202e", "é" * 300, "x" * 5000, "null", "0", "-1", "true", "{}", "[]", "\\u0000",
              "../../etc/passwd", "'; DROP TABLE budget_rules; --"]  # fmt: skip
RAW_NUMBERS = ["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" + "0" * 400, "9" * 5000,
               "123456789012345678901234567890", "-9223372036854775809", "9223372036854775808",
               "1e-999", "-0", "2e308", "0.1e1", "1E+2"]  # fmt: skip

any_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=40),  # every code point, surrogates too
    st.text(st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), max_size=10),  # emoji
    st.sampled_from(NASTY_TEXT),
)
numbers = st.one_of(
    st.integers(-(10**30), 10**30),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(any_text, kids, max_size=4)),
    max_leaves=12,
)
words = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)  # valid Unicode only


class Raw:
    """A piece of JSON text to put in the body as it is (a number JSON cannot hold, say)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.marker = f"@@raw-{uuid.uuid4().hex}@@"


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a document, the root included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple, fn: Any) -> Any:
    if not path:
        return fn(doc)
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: _replace(doc[head], rest, fn)}
    out = list(doc)
    out[head] = _replace(doc[head], rest, fn)
    return out


def _delete(doc: Any, path: tuple) -> Any:
    parent, key = path[:-1], path[-1]

    def drop(container: Any) -> Any:
        if isinstance(container, dict):
            return {k: v for k, v in container.items() if k != key}
        return [v for i, v in enumerate(container) if i != key]

    return _replace(doc, parent, drop)


def _mark(raws: list[Raw], text: str) -> str:
    raw = Raw(text)
    raws.append(raw)
    return raw.marker


@st.composite
def broken(draw: st.DrawFn, valid: st.SearchStrategy[dict]) -> tuple[Any, list[Raw]]:
    """A valid body from ``valid`` with one mutation at one drawn place."""
    doc = draw(valid)
    where = draw(st.sampled_from(paths(doc)))
    how = draw(st.sampled_from(["value", "delete", "extra", "nest", "raw", "text", "none"]))
    raws: list[Raw] = []
    if how == "value":
        new = draw(json_values)
        doc = _replace(doc, where, lambda _: new)
    elif how == "delete" and where:
        doc = _delete(doc, where)
    elif how == "extra":
        key, new = draw(any_text), draw(json_values)
        doc = _replace(doc, where, lambda v: {**v, key: new} if isinstance(v, dict) else [v, new])
    elif how == "nest":
        # Nested in the JSON text, not in the drawn value: Hypothesis could not print that one.
        depth = draw(st.sampled_from([2, 40, 62, 63, 64, 65, 100, 1000, 5000]))
        as_list = draw(st.booleans())

        def nest(v: Any) -> str:
            inner = json.dumps(v)
            if as_list:
                return "[" * depth + inner + "]" * depth
            return '{"a": ' * depth + inner + "}" * depth

        doc = _replace(doc, where, lambda v: _mark(raws, nest(v)))
    elif how == "raw":
        number = draw(st.sampled_from(RAW_NUMBERS))
        doc = _replace(doc, where, lambda _: _mark(raws, number))
    elif how == "text":
        new = draw(any_text)
        doc = _replace(doc, where, lambda _: new)
    return doc, raws


def encode(doc: Any, raws: list[Raw], raw_utf8: bool) -> bytes:
    """JSON text of ``doc``: surrogates as ``\\udXXX`` escapes, or as raw (invalid UTF-8) bytes."""
    text = json.dumps(doc, ensure_ascii=not raw_utf8)
    for raw in raws:
        text = text.replace(json.dumps(raw.marker), raw.text)
    return text.encode("utf-8", "surrogatepass")


# ---- valid bodies, one strategy per endpoint ----------------------------------------------------

CHAT_MODELS = ["gpt-4o-mini", "claude-3-5-haiku-latest", "no-such-model"]
_image = st.sampled_from(["https://example.invalid/cat.png", "data:image/png;base64,iVBORw0KGgo="])


def _openai_part(role: str) -> st.SearchStrategy[dict]:
    text = st.builds(lambda t: {"type": "text", "text": t}, words)
    if role == "assistant":
        return st.one_of(text, st.builds(lambda t: {"type": "refusal", "refusal": t}, words))
    if role != "user":
        return text
    return st.one_of(
        text,
        st.builds(lambda u, d: {"type": "image_url", "image_url": {"url": u, "detail": d}},
                  _image, st.sampled_from(["auto", "low", "high"])),
        st.builds(lambda f: {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": f}},
                  st.sampled_from(["wav", "mp3"])),
        st.just({"type": "file", "file": {"file_data": "JVBERi0=", "filename": "a.pdf"}}),
    )  # fmt: skip


@st.composite
def openai_message(draw: st.DrawFn) -> dict:
    role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))
    content = draw(st.one_of(words, st.lists(_openai_part(role), min_size=1, max_size=3)))
    msg: dict[str, Any] = {"role": role, "content": content}
    if role == "tool":
        msg["tool_call_id"] = "call_1"
    if role == "assistant" and draw(st.booleans()):
        msg["tool_calls"] = [{"id": "call_1", "type": "function",
                              "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]  # fmt: skip
    return msg


TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip

chat_request = st.fixed_dictionaries(
    {
        "model": st.sampled_from(CHAT_MODELS),
        "messages": st.lists(openai_message(), min_size=1, max_size=3).map(
            lambda ms: [*ms, {"role": "user", "content": "hi"}]
        ),
    },
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 64),
        "max_completion_tokens": st.integers(1, 64),
        "stream": st.booleans(),
        "stream_options": st.just({"include_usage": True}),
        "stop": st.one_of(words, st.lists(words, max_size=4)),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "tools": st.just([TOOL]),
        "tool_choice": st.sampled_from(
            ["auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}}]
        ),  # fmt: skip
        "response_format": st.sampled_from(
            [
                {"type": "text"},
                {"type": "json_object"},
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            ]
        ),  # fmt: skip
        "user": words,
    },
)

_anthropic_user_block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, words),
    st.just(
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        }
    ),  # fmt: skip
    st.just({"type": "image", "source": {"type": "url", "url": "https://example.invalid/a.png"}}),
    st.builds(lambda t: {"type": "tool_result", "tool_use_id": "toolu_1", "content": t}, words),
)
_anthropic_assistant_block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, words),
    st.just(
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
    ),
    st.just({"type": "thinking", "thinking": "hmm", "signature": "sig"}),
)
anthropic_message = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c},
              st.one_of(words, st.lists(_anthropic_user_block, min_size=1, max_size=3))),
    st.builds(lambda c: {"role": "assistant", "content": c},
              st.one_of(words, st.lists(_anthropic_assistant_block, min_size=1, max_size=3))),
)  # fmt: skip
messages_request = st.fixed_dictionaries(
    {
        "model": st.sampled_from(CHAT_MODELS),
        "max_tokens": st.integers(1, 64),
        "messages": st.lists(anthropic_message, min_size=1, max_size=3).map(
            lambda ms: [*ms, {"role": "user", "content": "hi"}]
        ),
    },
    optional={
        "system": st.one_of(words, st.just([{"type": "text", "text": "Be brief."}])),
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "stop_sequences": st.lists(words, max_size=4),
        "stream": st.booleans(),
        "metadata": st.builds(lambda u: {"user_id": u}, words),
        "tools": st.just(
            [{"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}]
        ),  # fmt: skip
        "tool_choice": st.sampled_from(
            [
                {"type": "auto"},
                {"type": "any"},
                {"type": "none"},
                {"type": "tool", "name": "get_weather"},
            ]
        ),  # fmt: skip
    },
)
speech_request = st.fixed_dictionaries(
    {"model": st.just("tts-1"), "input": words},
    optional={
        "voice": st.sampled_from(["alloy", "echo", "nova"]),
        "response_format": st.sampled_from(["mp3", "wav", "opus", "flac", "pcm", "aac"]),
        "speed": st.floats(0.25, 4.0),
    },
)
_rule_name = st.from_regex(r"\Afz-[a-z0-9]{1,12}\Z")
budget_request = st.fixed_dictionaries(
    {
        "name": _rule_name,
        "scope": st.sampled_from(["all", "cloud", "provider:fake", "model:gpt-*", "key:kitchen"]),
        "metric": st.sampled_from(["usd", "tokens", "requests", "audio_seconds", "characters"]),
        "limit": st.one_of(st.integers(1000, 10**6), st.just("1000.50")),
        "period": st.sampled_from(["hour", "day", "week", "month", "total"]),
        "action": st.just("warn"),  # a rule that blocks would starve the other fuzz tests
    }
)
key_request = st.fixed_dictionaries(
    {"name": _rule_name},
    optional={
        "allowed_models": st.lists(st.sampled_from(CHAT_MODELS), max_size=2),
        "rpm": st.integers(1, 1000),
        "max_concurrent": st.integers(1, 10),
        "budget_usd": st.sampled_from(["1.00", 2, 0.5]),
        "budget_period": st.sampled_from(["day", "month"]),
    },
)
