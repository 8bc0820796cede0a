"""POST /v1/messages/count_tokens: Anthropic's token counting, for every target the router knows.

An on-device model counts exactly: its own tokenizer over the prompt its chat template makes
(``X-Hoosh-Token-Count: exact``). A cloud model gets the gateway's upper bound, the same figure a
budget reservation uses (``X-Hoosh-Token-Count: upper_bound``): no upstream call, no cost. Errors
take Anthropic's shape, like every route of the messages blueprint this joins.
"""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify

from hoosh_edge import estimate
from hoosh_edge.books.keys import require_model
from hoosh_edge.doors.anthropic_messages import bp
from hoosh_edge.doors.common import gateway, read_json
from hoosh_edge.formats.anthropic_request import to_chat_request


@bp.post("/v1/messages/count_tokens")
def count_tokens() -> Response:
    gw = gateway()
    body = read_json(gw.config.server.max_body_bytes, dotted=True)
    if isinstance(body, dict) and body.get("max_tokens") is None:
        body = {**body, "max_tokens": 1}  # counting needs no answer length
    req = to_chat_request(body)
    require_model(g.get("key"), req["model"])
    target = gw.router.resolve(req["model"])[0]
    count, kind = _count(target, req)
    g.log_fields = {"provider": target.provider, "model": target.model, "prompt_tokens": count}
    resp = jsonify({"input_tokens": count})
    resp.headers["X-Hoosh-Token-Count"] = kind
    resp.headers["X-Hoosh-Provider"] = target.provider
    resp.headers["X-Hoosh-Model"] = target.model
    return resp


def _count(target: Any, req: dict[str, Any]) -> tuple[int, str]:
    if target.backend.counts_tokens:
        # The model's own tokenizer, after its chat template (a local model loads if needed).
        return target.backend.count_tokens(target.model, req["messages"], req), "exact"
    return estimate.prompt_text_tokens(req), "upper_bound"
