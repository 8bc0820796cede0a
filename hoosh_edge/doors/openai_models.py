"""GET /v1/models, /v1/models/{id} and /v1/health."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from hoosh_edge import workers
from hoosh_edge.doors.common import gateway
from hoosh_edge.errors import ModelNotFound

bp = Blueprint("models", __name__)


def _model_obj(mid: str, owner: str, created: int, source: str | None = None) -> dict:
    obj = {"id": mid, "object": "model", "created": created, "owned_by": owner}
    if source is not None:
        # Where the id comes from: local, alias, config, or provider (listed by the provider
        # itself, for a provider configured with globs; fetched in the background and cached).
        obj["source"] = source
    return obj


@bp.get("/v1/models")
def list_models() -> Response:
    gw = gateway()
    created = int(gw.started_at)
    data = [_model_obj(mid, owner, created, src) for mid, owner, src in gw.model_listing()]
    return jsonify({"object": "list", "data": data})


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    gw = gateway()
    for mid, owner in gw.model_ids():
        if mid == model_id:
            return jsonify(_model_obj(mid, owner, int(gw.started_at)))
    # A glob-served id (e.g. any gpt-*) exists too, if some backend would take it.
    for b in gw.router.backends:
        if b.serves(model_id):
            return jsonify(_model_obj(model_id, b.name, int(gw.started_at)))
    raise ModelNotFound(f"The model '{model_id}' does not exist here.", param="model")


@bp.get("/v1/health")
def health() -> Response:
    gw = gateway()
    providers = gw.router.health_report()
    storage = gw.storage_report()
    pools = workers.status()  # counted from the jobs themselves: threads in use, queued, stuck
    healthy = all(p["state"] in ("ok", "disabled") for p in providers)
    if storage is not None and storage["state"] != "ok":
        healthy = False
    if any(p["stuck"] for p in pools.values()):
        healthy = False
    tts = gw.speech.tts_report()  # which phonemizer speaks, or what to install
    if tts["state"] == "unavailable":
        healthy = False
    body = {"status": "ok" if healthy else "degraded", "providers": providers,
            "local_models": gw.local_status(), "tts": tts, "workers": pools}  # fmt: skip
    if storage is not None:
        body["storage"] = storage
    return jsonify(body)
