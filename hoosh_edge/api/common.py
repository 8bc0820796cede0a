"""Helpers every blueprint shares: the gateway handle, JSON bodies, response headers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from flask import Response, current_app, g, request

from ..errors import InvalidRequest, PayloadTooLarge

if TYPE_CHECKING:
    from ..app import Gateway


def gateway() -> Gateway:
    """The Gateway object of the running app."""
    return current_app.extensions["hoosh"]


def read_json(limit: int) -> Any:
    """The request body as JSON, refusing bodies over ``limit`` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"The request body is {length} bytes; the limit is {limit} bytes.")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes.")
    if not data.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({e}). Send valid JSON with "
            "Content-Type: application/json."
        ) from None


def inference_headers(resp: Response, provider: str | None, model: str | None) -> Response:
    """Say who really served the request."""
    resp.headers["X-Request-Id"] = g.request_id
    if provider:
        resp.headers["X-Hoosh-Provider"] = provider
    if model:
        resp.headers["X-Hoosh-Model"] = model
    return resp
