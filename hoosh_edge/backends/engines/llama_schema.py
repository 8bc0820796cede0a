"""JSON schemas as llama.cpp grammars, refusing every keyword the grammar cannot enforce.

llama-cpp-python's converter (``llama_cpp.llama_grammar.SchemaConverter``) silently ignores the
keywords it does not know, so a schema with ``minimum`` or ``oneOf`` would be "honoured" by
output that breaks it. Here a schema is first checked keyword by keyword, and one the grammar
cannot enforce is an ``InvalidRequest`` naming the keyword and where it is. Supported:

- every schema: ``type`` (one name, or a list of names with nothing else beside it), ``enum``,
  ``const``, ``anyOf``, ``$ref`` to ``#/...`` in the same schema (``$defs``, ``definitions``);
  annotations (``title``, ``description``, ``default``, ``examples``, ``$comment``, ``$schema``,
  ``$id``, ``deprecated``, ``readOnly``, ``writeOnly``) are accepted and do not constrain.
- objects: ``properties``, ``required``, ``additionalProperties`` (true, false or a schema).
  Without ``additionalProperties`` the output holds only the listed properties.
- arrays: ``items`` (one schema), ``minItems``, ``maxItems``; ``prefixItems`` (a fixed tuple).
- strings: ``minLength``, ``maxLength``, ``pattern`` (anchored with ``^...$``, no lookaround),
  ``format`` date, time, date-time, uuid. Counts (lengths, items, ``{n,m}``) up to 1000.
- integers: ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum`` (numbers);
  integers have at most 15 digits.

Refused: ``oneOf``, ``allOf``, ``not``, ``if``/``then``/``else``, ``multipleOf``, bounds on
``number``, ``uniqueItems``, ``contains``, ``patternProperties``, ``propertyNames``,
``min/maxProperties``, other ``format`` values, remote ``$ref``, and anything unknown.
Two fixes over the converter: string characters exclude control characters (JSON forbids them),
and ``$ref`` rules are named by their whole path, so two tools' ``#/$defs/Item`` stay apart.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from llama_cpp import llama_grammar as lg

from hoosh_edge.errors import InvalidRequest

ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "$schema",
                         "$id", "deprecated", "readOnly", "writeOnly", "$defs", "definitions"})  # fmt: skip
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
FORMATS = frozenset({"date", "time", "date-time", "uuid"})
TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
_BY_TYPE = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "integer": set(BOUNDS),
}
_ALWAYS = {"type", "enum", "const"}
MAX_REPEAT = 1000  # longest minLength/maxLength/minItems/maxItems/pattern {n,m} spelled out
INT_CAP = 10**15 - 1  # the converter's own integers stop at 16 digits
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# JSON strings may not hold raw control characters; the converter's rule allows them.
JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


def refuse(where: str, what: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {what} is not supported by on-device models.", param=param)


def check(schema: Any, where: str, param: str) -> None:
    """Raise InvalidRequest for the first keyword of ``schema`` the grammar cannot enforce."""
    if schema is True:
        return
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{where} must be a JSON schema object.", param=param)
    keys = set(schema) - ANNOTATIONS
    for ref_key in ("$defs", "definitions"):
        defs = schema.get(ref_key)
        if defs is not None:
            if not isinstance(defs, dict):
                raise InvalidRequest(f"{where}.{ref_key} must be an object.", param=param)
            for name, sub in defs.items():
                check(sub, f"{where}.{ref_key}.{name}", param)
    for alone in ("$ref", "anyOf"):
        if alone in keys and keys - {alone}:
            other = sorted(keys - {alone})[0]
            raise refuse(where, f"'{other}' beside '{alone}'", param)
    if "$ref" in keys:
        if not isinstance(schema["$ref"], str) or not schema["$ref"].startswith("#"):
            raise refuse(where, f"the $ref {schema['$ref']!r} (only '#/...' refs)", param)
        return
    if "anyOf" in keys:
        alts = schema["anyOf"]
        if not isinstance(alts, list) or not alts:
            raise InvalidRequest(f"{where}.anyOf must be a non-empty array.", param=param)
        for i, sub in enumerate(alts):
            check(sub, f"{where}.anyOf[{i}]", param)
        return
    kind = schema.get("type")
    if isinstance(kind, list):
        if not kind or any(k not in TYPES for k in kind):
            raise InvalidRequest(f"{where}.type lists an unknown type.", param=param)
        if keys - {"type"}:
            raise refuse(where, f"'{sorted(keys - {'type'})[0]}' beside a list of types", param)
        return
    if kind is not None and kind not in TYPES:
        raise InvalidRequest(f"{where}.type {kind!r} is not a JSON schema type.", param=param)
    allowed = _ALWAYS | (_BY_TYPE.get(kind, set()) if kind else set().union(*_BY_TYPE.values()))
    for key in sorted(keys):
        if key not in allowed:
            what = f"'{key}'" + (f" for type '{kind}'" if kind and key in BOUNDS else "")
            raise refuse(where, f"the keyword {what}", param)
    if "enum" in keys and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise InvalidRequest(f"{where}.enum must be a non-empty array.", param=param)
    if "enum" in keys or "const" in keys:
        return  # the converter writes the listed values and nothing else
    untyped = keys & (set(BOUNDS) | {"minLength", "maxLength"})
    if kind is None and untyped:
        raise refuse(where, f"'{sorted(untyped)[0]}' without a 'type'", param)
    _check_object(schema, where, param)
    _check_array(schema, where, param)
    _check_string(schema, where, param)
    if kind == "integer" and keys & set(BOUNDS):
        int_bounds(schema, where, param)


def _check_object(schema: dict[str, Any], where: str, param: str) -> None:
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise InvalidRequest(f"{where}.properties must be an object.", param=param)
    for name, sub in props.items():
        check(sub, f"{where}.properties.{name}", param)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise InvalidRequest(f"{where}.required must be an array of names.", param=param)
    missing = [r for r in required if r not in props]
    if missing:
        raise refuse(where, f"'required' naming '{missing[0]}', which 'properties' lacks,", param)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        check(extra, f"{where}.additionalProperties", param)
    elif extra is not None and not isinstance(extra, bool):
        raise InvalidRequest(f"{where}.additionalProperties must be a schema.", param=param)


def _check_array(schema: dict[str, Any], where: str, param: str) -> None:
    items, prefix = schema.get("items"), schema.get("prefixItems")
    if prefix is not None:
        if items is not None or "minItems" in schema or "maxItems" in schema:
            raise refuse(where, "'prefixItems' with 'items', 'minItems' or 'maxItems'", param)
        if not isinstance(prefix, list) or not prefix:
            raise InvalidRequest(f"{where}.prefixItems must be a non-empty array.", param=param)
        for i, sub in enumerate(prefix):
            check(sub, f"{where}.prefixItems[{i}]", param)
    if items is not None:
        if not isinstance(items, dict):
            raise refuse(where, "'items' that is not one schema object", param)
        check(items, f"{where}.items", param)
    elif ("minItems" in schema or "maxItems" in schema) and prefix is None:
        raise refuse(where, "'minItems'/'maxItems' without 'items'", param)
    _counts(schema, ("minItems", "maxItems"), where, param)


def _check_string(schema: dict[str, Any], where: str, param: str) -> None:
    shaped = [k for k in ("pattern", "format") if k in schema]
    sized = [k for k in ("minLength", "maxLength") if k in schema]
    if len(shaped) + bool(sized) > 1:
        raise refuse(where, f"'{(shaped + sized)[1]}' together with '{shaped[0]}'", param)
    fmt = schema.get("format")
    if fmt is not None and fmt not in FORMATS and not str(fmt).startswith("uuid"):
        raise refuse(where, f"the format {fmt!r}", param)
    pattern = schema.get("pattern")
    if pattern is not None and (
        not isinstance(pattern, str) or not pattern.startswith("^") or not pattern.endswith("$")
    ):
        raise refuse(where, "a 'pattern' not anchored with ^...$", param)
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as e:
            raise InvalidRequest(f"{where}.pattern is not a regular expression: {e}",
                                 param=param) from e  # fmt: skip
    counts = [int(n) for n in re.findall(r"\{\s*(\d+)?\s*(?:,\s*(\d+)?\s*)?\}", pattern or "")
              for n in n if n]  # fmt: skip
    if counts and max(counts) > MAX_REPEAT:  # the grammar spells each repetition out
        raise refuse(where, f"a 'pattern' repeating more than {MAX_REPEAT} times", param)
    _counts(schema, ("minLength", "maxLength"), where, param)


def _counts(schema: dict[str, Any], keys: tuple[str, str], where: str, param: str) -> None:
    for key in keys:
        v = schema.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise InvalidRequest(f"{where}.{key} must be a non-negative integer.", param=param)
    lo, hi = schema.get(keys[0], 0), schema.get(keys[1])
    if hi is not None and hi < lo:
        raise InvalidRequest(f"{where}: {keys[1]} is below {keys[0]}.", param=param)
    if max(lo, hi or 0) > MAX_REPEAT:  # the grammar spells each repetition out
        raise refuse(where, f"a {keys[0]}/{keys[1]} above {MAX_REPEAT}", param)


def int_bounds(schema: dict[str, Any], where: str, param: str) -> tuple[int, int]:
    """The inclusive integer range of an integer schema's bounds (capped at 15 digits)."""
    lo, hi = -INT_CAP, INT_CAP
    for key in BOUNDS:
        v = schema.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidRequest(f"{where}.{key} must be a number.", param=param)
        if key == "minimum":
            lo = max(lo, math.ceil(v))
        elif key == "exclusiveMinimum":
            lo = max(lo, math.floor(v) + 1)
        elif key == "maximum":
            hi = min(hi, math.floor(v))
        else:
            hi = min(hi, math.ceil(v) - 1)
    if lo > hi:
        raise InvalidRequest(f"{where}: no integer lies within its bounds.", param=param)
    return lo, hi


def int_range(lo: int, hi: int) -> str:
    """A GBNF expression for the decimal integers lo..hi (no leading zeros, no "-0")."""
    alts = []
    if lo < 0:
        alts += ['"-" ' + a for a in _naturals(max(1, -hi), -lo)]
    if hi >= 0:
        alts += _naturals(max(0, lo), hi)
    return "(" + " | ".join(alts) + ")"


def _naturals(a: int, b: int) -> list[str]:
    out = []
    for length in range(len(str(a)), len(str(b)) + 1):
        lo = max(a, 10 ** (length - 1) if length > 1 else 0)
        hi = min(b, 10**length - 1)
        if lo <= hi:
            out += [" ".join(seq) for seq in _same_length(str(lo), str(hi))]
    return out


def _same_length(lo: str, hi: str) -> list[list[str]]:
    """Digit sequences (GBNF items) covering lo..hi, both of one length."""
    if not lo:
        return [[]]
    n = len(lo) - 1
    if lo[0] == hi[0]:
        return [[f'"{lo[0]}"', *rest] for rest in _same_length(lo[1:], hi[1:])]
    out: list[list[str]] = []
    first, last = int(lo[0]), int(hi[0])
    if lo[1:] != "0" * n:
        out += [[f'"{lo[0]}"', *rest] for rest in _same_length(lo[1:], "9" * n)]
        first += 1
    tail = hi[1:] != "9" * n
    if tail:
        last -= 1
    if first <= last:
        digit = f'"{first}"' if first == last else f"[{first}-{last}]"
        out.append([digit] + ["[0-9]"] * n)
    if tail:
        out += [[f'"{hi[0]}"', *rest] for rest in _same_length("0" * n, hi[1:])]
    return out


class Converter(lg.SchemaConverter):
    """The converter with integer bounds, JSON-correct strings and per-path $ref rules."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)

    def add(self, schema: Any, name: str, url: str) -> str:
        """Rules for a (checked) schema; the name of its top rule."""
        schema = {} if schema is True else json.loads(json.dumps(schema))
        schema = self.resolve_refs(schema, url)
        return self.visit(schema, name)

    def visit(self, schema: Any, name: str) -> str:
        if schema is True:
            schema = {}
        if schema.get("type") == "integer" and any(k in schema for k in BOUNDS):
            lo, hi = int_bounds(schema, name, "response_format")
            rule_name = name + "-" if name in lg.RESERVED_NAMES else name or "root"
            return self._add_rule(rule_name, int_range(lo, hi) + " space")
        return super().visit(schema, name)

    def resolve_refs(self, schema: Any, url: str) -> Any:
        """Local refs made absolute (``url#/...``) and filed, in ``$defs`` too (the converter
        skips what sits beside a ``$ref``, so a recursive definition was never filed)."""

        def visit(n: Any) -> None:
            if isinstance(n, list):
                for x in n:
                    visit(x)
            elif isinstance(n, dict):
                ref = n.get("$ref")
                if isinstance(ref, str) and ref.startswith("#"):
                    n["$ref"] = full = f"{url}{ref}"
                    if full not in self._refs:
                        target = schema
                        for part in filter(None, ref[1:].split("/")):
                            part = part.replace("~1", "/").replace("~0", "~")
                            if not isinstance(target, dict) or part not in target:
                                raise ValueError(f"the $ref {ref!r} points nowhere")
                            target = target[part]
                        self._refs[full] = target
                for v in n.values():
                    visit(v)

        visit(schema)
        return schema

    def _format_literal(self, literal: str) -> str:
        # The converter escapes quotes and newlines but not backslashes: a JSON string with an
        # escape in it (an enum value with a quote) made a grammar llama.cpp cannot parse.
        out = []
        for ch in literal:
            if ch in _ESCAPES:
                out.append(_ESCAPES[ch])
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\x{ord(ch):02x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'

    def _resolve_ref(self, ref: str) -> str:
        ref_name = "ref-" + lg.INVALID_RULE_CHARS_RE.sub("-", ref)
        if ref_name not in self._rules and ref not in self._refs_being_resolved:
            self._refs_being_resolved.add(ref)
            ref_name = self.visit(self._refs[ref], ref_name)
            self._refs_being_resolved.remove(ref)
        return ref_name

    def _add_primitive(self, name: str, rule: Any) -> str:
        if name == "char":
            return self._add_rule("char", JSON_CHAR)
        return super()._add_primitive(name, rule)

    def rules(self) -> str:
        return self.format_grammar()
