"""Helpers every blueprint shares: the gateway handle, JSON bodies, response headers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Response, current_app, g

from .bodies import read_json

__all__ = ["gateway", "inference_headers", "read_json"]

if TYPE_CHECKING:
    from ..app import Gateway


def gateway() -> Gateway:
    """The Gateway object of the running app."""
    return current_app.extensions["hoosh"]


def inference_headers(resp: Response, provider: str | None, model: str | None) -> Response:
    """Say who really served the request."""
    resp.headers["X-Request-Id"] = g.request_id
    if provider:
        resp.headers["X-Hoosh-Provider"] = provider
    if model:
        resp.headers["X-Hoosh-Model"] = model
    return resp
