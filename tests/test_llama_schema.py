"""JSON schemas as grammars: which keywords are enforced, which are refused, integer ranges."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import require_module

require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")

from hoosh_edge.backends.engines import llama_schema, llama_tools  # noqa: E402
from hoosh_edge.books.cache_policy import chat_key  # noqa: E402
from hoosh_edge.errors import InvalidRequest  # noqa: E402


def as_regex(expr: str) -> re.Pattern[str]:
    """The GBNF of ``int_range`` (quoted digits, classes, alternatives) as a Python regex."""
    body = re.sub(r'"(.)"', r"\1", expr).replace(" ", "")
    return re.compile(body)


@settings(max_examples=300, deadline=None)
@given(st.integers(-1200, 1200), st.integers(0, 1500))
def test_integer_ranges_hold_exactly_their_integers(lo, width):
    hi = lo + width
    pattern = as_regex(llama_schema.int_range(lo, hi))
    for n in range(lo - 30, hi + 31):
        assert bool(pattern.fullmatch(str(n))) == (lo <= n <= hi), (lo, hi, n)
    for text in ("-0", "01", "007", "+1", ""):
        assert not pattern.fullmatch(text)


def test_bounds_keywords_make_inclusive_ranges():
    def bounds(**kw):
        return llama_schema.int_bounds({"type": "integer", **kw}, "s", "p")

    assert bounds(minimum=1, maximum=14) == (1, 14)
    assert bounds(exclusiveMinimum=0, exclusiveMaximum=10) == (1, 9)
    assert bounds(minimum=0.5, maximum=2.5) == (1, 2)
    assert bounds(minimum=-3) == (-3, llama_schema.INT_CAP)
    with pytest.raises(InvalidRequest, match="no integer"):
        bounds(minimum=3, maximum=2)
    with pytest.raises(InvalidRequest, match="must be a number"):
        bounds(minimum=True)


SUPPORTED = [
    {"type": "object", "properties": {"a": {"type": "string", "minLength": 1, "maxLength": 5}},
     "required": ["a"], "additionalProperties": False, "title": "T", "description": "d"},
    {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 4},
    {"prefixItems": [{"type": "string"}, {"type": "boolean"}]},
    {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
    {"type": ["string", "null"]},
    {"$defs": {"p": {"type": "object", "properties": {"x": {"const": 1}}}},
     "type": "object", "properties": {"p": {"$ref": "#/$defs/p"}}},
    {"type": "string", "pattern": "^[a-z]+$"},
    {"enum": ["a", 1, None]},
    {"type": "object", "additionalProperties": {"type": "number"}},
    {},
    # A recursive definition, the $ref beside its $defs.
    {"$defs": {"n": {"type": "object", "properties": {"next": {"anyOf": [
        {"$ref": "#/$defs/n"}, {"type": "null"}]}}, "required": ["next"]}}, "$ref": "#/$defs/n"},
    # Names and values with quotes, backslashes and newlines.
    {"type": "object", "properties": {'a"b\\c\n': {"const": 'x"y'}}, "required": ['a"b\\c\n']},
]  # fmt: skip
REFUSED = [
    ({"oneOf": [{"type": "string"}]}, "oneOf"),
    ({"allOf": [{"type": "string"}]}, "allOf"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "number", "minimum": 0}, "'minimum' for type 'number'"),
    ({"type": "integer", "multipleOf": 2}, "multipleOf"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "string", "format": "email"}, "email"),
    ({"type": "string", "pattern": "[a-z]+"}, "anchored"),
    ({"type": "string", "pattern": "^a$", "maxLength": 3}, "maxLength"),
    ({"type": "object", "required": ["x"]}, "'x'"),
    ({"type": "object", "patternProperties": {"^a": {}}}, "patternProperties"),
    ({"$ref": "https://example.invalid/s.json"}, "$ref"),
    ({"$ref": "#/$defs/a", "description": "ok", "type": "string"}, "'type' beside '$ref'"),
    ({"type": ["string", "null"], "maxLength": 3}, "list of types"),
    ({"minimum": 1}, "without a 'type'"),
    ({"type": "object", "properties": {"a": {"type": "strin"}}}, "strin"),
    ({"type": "array", "items": [{"type": "string"}]}, "items"),
    ({"type": "string", "maxLength": 100000}, "above 1000"),
    ({"nullable": True, "type": "string"}, "nullable"),
    ({"type": "string", "pattern": "^(ab|c){2,5000}$"}, "more than 1000"),
    ({"type": "string", "pattern": "^(a$"}, "not a regular expression"),
]


@pytest.mark.parametrize("schema", SUPPORTED)
def test_supported_schemas_become_grammars(schema):
    text = llama_tools.grammar_text(None, {"type": "json_schema",
                                           "json_schema": {"name": "x", "schema": schema}})  # fmt: skip
    assert text and text.startswith("root ::= answer")


@pytest.mark.parametrize(("schema", "word"), REFUSED)
def test_unsupported_keywords_are_refused_by_name(schema, word):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(InvalidRequest) as e:
        llama_tools.grammar_text(None, fmt)
    assert word in str(e.value) and e.value.param == "response_format"
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"v": schema}}}}  # fmt: skip
    with pytest.raises(InvalidRequest) as e:
        llama_tools.plan({"tools": [tool]})
    assert word in str(e.value) and e.value.param == "tools"
    assert "tools[0].function.parameters.properties.v" in str(e.value)


def test_a_ref_that_points_nowhere_is_refused():
    with pytest.raises(InvalidRequest, match="points nowhere") as e:
        llama_tools.grammar_text(None, {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"$ref": "#/$defs/missing"}}})  # fmt: skip
    assert e.value.param == "response_format"


def test_two_tools_keep_their_own_refs_apart():
    def tool(name, inner):
        return {"type": "function", "function": {"name": name, "parameters": {
            "$defs": {"Item": inner}, "type": "object",
            "properties": {"item": {"$ref": "#/$defs/Item"}}, "required": ["item"]}}}  # fmt: skip

    req = {"tools": [tool("a", {"const": "from-a"}), tool("b", {"const": "from-b"})]}
    text = llama_tools.grammar_text(llama_tools.plan(req), None)
    assert '"\\"from-a\\""' in text and '"\\"from-b\\""' in text


def test_cache_keys_tell_tool_requests_apart():
    base = {"messages": [{"role": "user", "content": "hi"}]}
    tools = [{"type": "function", "function": {"name": "f"}}]
    variants = [
        base,
        {**base, "tools": tools},
        {**base, "tools": tools, "tool_choice": "required"},
        {**base, "tools": tools, "tool_choice": {"type": "function", "function": {"name": "f"}}},
        {**base, "tools": tools, "parallel_tool_calls": False},
        {**base, "response_format": {"type": "json_object"}},
        {**base, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
    ]
    keys = {chat_key("local", "m", v) for v in variants}
    assert len(keys) == len(variants)
    # Defaults ask for the same answer as their absence.
    assert chat_key("local", "m", {**base, "tools": tools, "parallel_tool_calls": True}) == (
        chat_key("local", "m", {**base, "tools": tools})
    )


def test_escaped_names_and_recursive_refs_make_grammars_llama_cpp_parses(tmp_path):
    """llama.cpp itself parses them (it returns no sampler for a grammar it cannot parse)."""
    import llama_cpp
    import synth_gguf

    llm = llama_cpp.Llama(model_path=str(synth_gguf.make_tiny_gguf(tmp_path / "t.gguf")),
                          n_ctx=256, n_threads=1, verbose=False)  # fmt: skip
    for schema in SUPPORTED:
        text = llama_tools.grammar_text(None, {"type": "json_schema",
                                               "json_schema": {"name": "x", "schema": schema}})  # fmt: skip
        probe = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, text.encode(), b"root")
        assert probe, text
        llama_cpp.llama_sampler_free(probe)
