"""POST /v1/embeddings: parse OpenAI's request, hand the pipeline, frame OpenAI's list answer."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify

from hoosh_edge.doors.common import (
    cache_ask,
    call_context,
    caller,
    gateway,
    read_json,
    served_headers,
)
from hoosh_edge.errors import InvalidRequest
from hoosh_edge.limits import Deadline
from hoosh_edge.pipeline.embeddings import EmbedAsk, Inputs, embed, encode

bp = Blueprint("embeddings", __name__)

MAX_INPUTS = 2048  # OpenAI's own limit on the items of one request
FORMATS = ("float", "base64")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_inputs(value: Any, param: str = "input") -> Inputs:
    """A string, a list of strings, a token array, or a list of token arrays; as a list."""
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(_is_int(t) for t in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"'{param}' must be a string, a list of strings, a token array or a "
                             "list of token arrays, and not empty.", param=param)  # fmt: skip
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(f"'{param}' holds {len(value)} items; at most {MAX_INPUTS} a request.",
                             param=param)  # fmt: skip
    if all(isinstance(v, str) for v in value):
        for i, v in enumerate(value):
            if not v.strip():
                raise InvalidRequest(f"'{param}[{i}]' is empty; send text to embed.", param=param)
        return value
    if all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value):
        return value
    raise InvalidRequest(f"'{param}' mixes kinds or holds an empty or non-integer token array; send "
                         "strings only, or token arrays (lists of integers) only.", param=param)  # fmt: skip


def parse_request(body: Any) -> tuple[EmbedAsk, str]:
    """The validated request and its ``encoding_format``."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required (e.g. all-minilm-l6-v2 or "
                             "text-embedding-3-small).", param="model")  # fmt: skip
    if "input" not in body:
        raise InvalidRequest("'input' is required: the text (or texts) to embed.", param="input")
    inputs = parse_inputs(body["input"])
    fmt = body.get("encoding_format") or "float"
    if fmt not in FORMATS:
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.",
                             param="encoding_format")  # fmt: skip
    dims = body.get("dimensions")
    if dims is not None and (not _is_int(dims) or not 1 <= dims <= 65536):
        raise InvalidRequest("'dimensions' must be a whole number from 1 up.", param="dimensions")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user")
    return EmbedAsk(model=model, inputs=inputs, dimensions=dims, user=user), fmt


@bp.post("/v1/embeddings")
def embeddings() -> Response:
    gw = gateway()
    deadline = Deadline(gw.config.server.request_timeout_s)
    ask, fmt = parse_request(read_json(gw.config.server.max_body_bytes))
    out = embed(gw, ask, caller(), call_context(), cache_ask(), deadline)
    g.log_fields = out.served.fields
    doc = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v, fmt)}
            for i, v in enumerate(out.vectors)
        ],  # fmt: skip
        "model": out.model,
        "usage": {"prompt_tokens": out.prompt_tokens, "total_tokens": out.prompt_tokens},
    }
    return served_headers(jsonify(doc), out.served)
