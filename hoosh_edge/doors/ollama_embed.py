"""POST /api/embed and the legacy POST /api/embeddings in Ollama's shape, on the embeddings pipeline.

``/api/embed`` takes ``input`` (a string or a list of strings), ``truncate`` (default true: an
input past the model's limit is cut; false: a 400), ``dimensions``, ``keep_alive`` and
``options`` (ignored: an encoder has no sampling), and answers
``{"model", "embeddings": [[...]], "total_duration", "load_duration", "prompt_eval_count"}``
(durations in nanoseconds); ``keep_alive: 0`` unloads the model after the answer.
``/api/embeddings`` takes ``prompt`` and answers ``{"embedding"}``. The routes are on the Ollama
blueprint (``ollama_http``): its body reading, ``:latest`` names and ``{"error": "..."}`` errors.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Response, g, jsonify

from hoosh_edge.doors.common import cache_ask, call_context, caller, gateway
from hoosh_edge.doors.ollama_http import bp, embeds, gateway_name, read_body, wanted
from hoosh_edge.doors.openai_embeddings import parse_inputs
from hoosh_edge.errors import InvalidRequest
from hoosh_edge.limits import Deadline
from hoosh_edge.pipeline.embeddings import EmbedAsk, Embedded, embed


def _request() -> tuple[dict[str, Any], str]:
    """The body (a JSON object) and the gateway's id of the model it names."""
    body = read_body()
    return body, gateway_name(gateway(), wanted(body), embeds)


def _run(ask: EmbedAsk) -> tuple[Embedded, int]:
    gw = gateway()
    started = time.monotonic_ns()
    out = embed(gw, ask, caller(), call_context(), cache_ask(),
                Deadline(gw.config.server.request_timeout_s))  # fmt: skip
    g.log_fields = out.served.fields
    return out, time.monotonic_ns() - started


def _unload_now(keep_alive: Any) -> bool:
    """Ollama's ``keep_alive: 0`` (or "0s", "0m"): free the model once the answer is made."""
    if isinstance(keep_alive, (int, float)) and not isinstance(keep_alive, bool):
        return keep_alive == 0
    return isinstance(keep_alive, str) and keep_alive.strip() in ("0", "0s", "0m", "0h")


def _vector(v: Any) -> list[float]:
    return [float(x) for x in v]


@bp.post("/api/embed")
def api_embed() -> Response:
    body, model = _request()
    if "input" not in body:
        raise InvalidRequest("input is required")
    truncate = body.get("truncate")
    truncate = True if truncate is None else truncate  # null is "not sent": Ollama's default
    if not isinstance(truncate, bool):
        raise InvalidRequest("truncate must be true or false")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise InvalidRequest("dimensions must be a positive whole number")
    inputs = body["input"]
    if isinstance(inputs, list) and inputs and not all(isinstance(i, str) for i in inputs):
        raise InvalidRequest("input must be a string or a list of strings")
    ask = EmbedAsk(model=model, inputs=parse_inputs(inputs), dimensions=dims, truncate=truncate)
    out, took = _run(ask)
    if _unload_now(body.get("keep_alive")) and out.served.provider == "local":
        gateway().embeddings.unload(out.model)
    return _answer({
        "model": body["model"],
        "embeddings": [_vector(v) for v in out.vectors],
        "total_duration": took,
        "load_duration": int(out.load_s * 1e9),
        "prompt_eval_count": out.prompt_tokens,
    }, out)  # fmt: skip


@bp.post("/api/embeddings")
def api_embeddings() -> Response:
    body, model = _request()
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequest("prompt must be a string")
    if not prompt:
        # Ollama answers an empty prompt with an empty vector (a client's way to load a model).
        return _answer({"embedding": []}, None)
    out, _ = _run(EmbedAsk(model=model, inputs=[prompt], truncate=True))
    if _unload_now(body.get("keep_alive")) and out.served.provider == "local":
        gateway().embeddings.unload(out.model)
    return _answer({"embedding": _vector(out.vectors[0])}, out)


def _answer(doc: dict[str, Any], out: Embedded | None) -> Response:
    resp = jsonify(doc)
    if out is not None:
        resp.headers["X-Hoosh-Cache"] = out.served.cache
        if out.served.provider:
            resp.headers["X-Hoosh-Provider"] = out.served.provider
        if out.served.cost_usd is not None:
            resp.headers["X-Hoosh-Cost-USD"] = out.served.cost_usd
    return resp
