"""What a peer may send: JSON bodies (media type, size, depth, text, numbers), form fields, headers.

Every door reads its input through here, so hostile input gets one clear 4xx wherever it arrives:

- a JSON body must come as ``Content-Type: application/json`` (charset UTF-8 if one is named):
  ``text/plain`` is what a web page can post cross-site without a CORS preflight (415);
- it must be UTF-8, strict JSON (no ``NaN``/``Infinity``), nested at most ``MAX_DEPTH`` levels,
  with integers inside a signed 64-bit range and no lone UTF-16 surrogate (``"\\ud800"``) in any
  string, key or value: the upstream, SQLite and the tokenizers all fail on one (400, naming the
  field);
- a form field must be valid UTF-8 text, and the headers the gateway reads must be ASCII.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from flask import request

from hoosh_edge.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

MAX_DEPTH = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
# What Werkzeug puts in place of bytes of a form field that are not valid UTF-8.
_REPLACEMENT = "\ufffd"
# Headers whose value the gateway itself reads; anything but visible ASCII there is garbage.
READ_HEADERS = ("Authorization", "X-Api-Key", "Cache-Control", "Content-Type")
_ASCII_HEADER = re.compile(r"^[\x20-\x7e\t]*$")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def field_path(parts: Iterable[str | int], dotted: bool = False) -> str:
    """A field's name the way the dialect writes it: ``messages[0].content`` or ``messages.0``."""
    out = ""
    for part in parts:
        if isinstance(part, int) and not dotted:
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(the body)"


def _parts(node: tuple | None) -> list[str | int]:
    """The path of a node from its (parent, key) chain."""
    out: list[str | int] = []
    while node is not None:
        node, key = node
        out.append(key)
    return out[::-1]


def _lone_surrogate(where: str, key: bool = False) -> InvalidRequest:
    what = f"A key in '{where}'" if key else f"'{where}'"
    return InvalidRequest(
        f"{what} holds a lone UTF-16 surrogate (such as \\ud800), which is not text; send "
        "valid Unicode.",
        param=where,
    )


def _check_scalar(value: Any, node: tuple | None, dotted: bool, text: bool) -> None:
    if text and isinstance(value, str) and _SURROGATE.search(value):
        raise _lone_surrogate(field_path(_parts(node), dotted))
    if type(value) is int and not INT_MIN <= value <= INT_MAX:  # bool is not checked
        where = field_path(_parts(node), dotted)
        raise InvalidRequest(f"'{where}' is an integer outside the 64-bit range.", param=where)


def check_tree(value: Any, *, dotted: bool = False, text: bool = True, ints: bool = True) -> None:
    """Refuse nesting past MAX_DEPTH, and (if asked) lone surrogates and integers past int64."""
    if not isinstance(value, (dict, list)):
        _check_scalar(value, None, dotted, text)
        return
    # Iterative, so depth never costs Python stack; a path is built only for an error.
    stack: list[tuple[Any, int, tuple | None]] = [(value, 1, None)]
    while stack:
        item, depth, node = stack.pop()
        if depth > MAX_DEPTH:
            raise too_deep()
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            if text and type(key) is str and _SURROGATE.search(key):
                raise _lone_surrogate(field_path(_parts(node), dotted), key=True)
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1, (node, key)))
            elif (ints and kind is int) or (text and kind is str):  # the hot path: kept inline
                _check_scalar(child, (node, key), dotted, text)


def too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"The JSON body is nested more than {MAX_DEPTH} levels deep.", code="json_too_deep"
    )


def parse_json(data: bytes, *, dotted: bool = False) -> Any:
    """A JSON document from UTF-8 bytes, checked by ``check_tree``; ``InvalidRequest`` if not."""
    if not data.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(
            f"The request body is not valid UTF-8 (byte {e.start}); JSON must be sent as UTF-8."
        ) from None
    long_ints: list[str] = []

    def parse_int(digits: str) -> int:
        if len(digits) > 18:  # may be outside int64: check_tree names the field
            long_ints.append(digits)
        return int(digits)

    try:
        value = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=parse_int
        )
    except RecursionError:
        raise too_deep() from None
    except ValueError as e:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({e}). Send valid JSON with "
            "Content-Type: application/json."
        ) from None
    # Cheap tests on the text first: most bodies need no walk at all.
    text_check = _ESCAPED_SURROGATE.search(text) is not None  # strict UTF-8 makes none raw
    if text_check or long_ints or text.count("[") + text.count("{") > MAX_DEPTH:
        check_tree(value, dotted=dotted, text=text_check, ints=bool(long_ints))
    return value


def require_json_type(content_type: str | None) -> None:
    """415 unless the body is declared ``application/json`` (optionally ``charset=utf-8``)."""
    mimetype, _, params = (content_type or "").partition(";")
    mimetype = mimetype.strip().lower()
    charset = None
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset":
            charset = val.strip().strip('"').lower()
    if mimetype != "application/json":
        shown = f"'{mimetype}'" if mimetype else "none"
        raise UnsupportedMediaType(
            f"This endpoint takes a JSON body with Content-Type: application/json; the request "
            f"had {shown}."
        )
    if charset not in (None, "utf-8", "utf8"):
        raise UnsupportedMediaType(
            f"JSON bodies must be UTF-8 (Content-Type: application/json; charset=utf-8); the "
            f"request declared charset={charset}."
        )


def read_json(limit: int, *, dotted: bool = False) -> Any:
    """The request body as checked JSON: declared as JSON, at most ``limit`` bytes."""
    require_json_type(request.headers.get("Content-Type"))
    return parse_json(read_bounded(limit), dotted=dotted)


def read_bounded(limit: int) -> bytes:
    """The raw request body, refused with a 413 past ``limit`` bytes (declared or sent)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"The request body is {length} bytes; the limit is {limit} bytes.")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes.")
    return data


def form_text(name: str) -> str | None:
    """A multipart text field, refused if its bytes were not valid UTF-8."""
    value = request.form.get(name)
    if value is not None and _REPLACEMENT in value:
        raise InvalidRequest(
            f"'{name}' is not valid UTF-8 text (it holds bytes that are not UTF-8, or U+FFFD).",
            param=name,
        )
    return value


def check_headers(headers: Mapping[str, str]) -> None:
    """400 when a header the gateway reads holds anything but visible ASCII."""
    for name in READ_HEADERS:
        value = headers.get(name)
        if value is not None and not _ASCII_HEADER.match(value):
            raise InvalidRequest(
                f"The {name} header holds bytes that are not visible ASCII.", param=name
            )
