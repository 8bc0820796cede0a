"""Ollama's model endpoints: /api/tags, /api/show, /api/ps and /api/version.

Local models are described from their files (``backends.model_facts``): chat models from GGUF
metadata, on-device embedding models from their GGUF file or sentence-transformers folder, with
size and the sha256 the store recorded. Routing aliases and cloud models are listed too, with what
is known of them; a cloud model is an embedding model when its provider embeds and its name says
so (``text-embedding-3-small``, ``mistral-embed``). ``capabilities`` says ``completion``,
``tools`` or ``embedding`` as the model's backend really does. Names are the gateway's ids with
Ollama's ``:latest`` tag added where they have no tag; both spellings resolve. Pulls and deletes
are in ``ollama_pull``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from flask import Response, jsonify

from hoosh_edge.backends.model_facts import ModelFacts, embedding_facts, model_facts
from hoosh_edge.doors.common import gateway
from hoosh_edge.doors.ollama_http import bp, embeds, gateway_name, is_known, read_body, wanted
from hoosh_edge.errors import ModelNotFound
from hoosh_edge.threads import run_blocking
from hoosh_edge.version import __version__

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger(__name__)

# The Ollama release whose API (docs/api.md) this door follows; clients gate features on it.
OLLAMA_API_VERSION = "0.12.0"
_FAR = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)  # keep_alive < 0: never unloaded


def ollama_name(model_id: str) -> str:
    """The name Ollama's clients expect: ``NAME:TAG`` (``:latest`` when the id has no tag)."""
    return model_id if ":" in model_id else f"{model_id}:latest"


def _iso(ts: float | datetime) -> str:
    when = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, timezone.utc)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _local_chat_serves(gw: Gateway, model_id: str) -> bool:
    local = gw.router.by_name.get("local")
    return local is not None and local.serves(model_id)


def _is_embedder(gw: Gateway, backend: str, model: str) -> bool:
    """Whether ``model`` of ``backend`` makes embeddings (and not chat answers)."""
    if backend == "local":
        return gw.embeddings.serves(model) and not _local_chat_serves(gw, model)
    b = gw.router.by_name.get(backend)
    # A provider's list does not say which of its models embed; their names do.
    return b is not None and not b.is_local and b.can_embed and "embed" in model.lower()


def _local_path(gw: Gateway, model_id: str) -> str | None:
    local = gw.router.by_name.get("local")
    engine = getattr(local, "engine", None)
    return getattr(engine, "paths", {}).get(model_id) if engine is not None else None


def _facts(gw: Gateway, backend: str, model: str) -> ModelFacts | None:
    """What the files of an on-device model say (None for a cloud model)."""
    if backend != "local":
        return None
    try:
        if _is_embedder(gw, backend, model):
            return run_blocking(embedding_facts, gw.embeddings.models[model])
        path = _local_path(gw, model)
        return None if path is None else run_blocking(model_facts, path)
    except (OSError, ValueError) as e:  # moved, damaged or unreadable since start-up
        log.warning("cannot describe model %s from its files: %s", model, e)
        return None


def _context(gw: Gateway, model_id: str, facts: ModelFacts | None = None) -> int:
    """The context this box serves the model with (its n_ctx, within what it was trained for);
    for an embedding model, the longest input it reads (its facts say)."""
    if _local_chat_serves(gw, model_id):
        return int(gw.router.by_name["local"].engine.context_length(model_id))  # type: ignore[attr-defined]
    if facts is None:
        return 0
    return int(facts.metadata.get(f"{facts.architecture}.context_length", 0))


def _details(f: ModelFacts | None) -> dict[str, Any]:
    if f is None:
        return {"parent_model": "", "format": "", "family": "", "families": None,
                "parameter_size": "", "quantization_level": ""}  # fmt: skip
    return {"parent_model": "", "format": f.format, "family": f.architecture,
            "families": [f.architecture], "parameter_size": f.parameter_size,
            "quantization_level": f.quantization}  # fmt: skip


def _first_target(gw: Gateway, model_id: str) -> tuple[str, str]:
    """(backend name, model) that ``model_id`` goes to first: aliases are followed once."""
    if model_id in gw.router.aliases and gw.router.aliases[model_id]:
        backend, _, model = gw.router.aliases[model_id][0].partition(":")
        return backend, model
    if gw.embeddings.serves(model_id) and not _local_chat_serves(gw, model_id):
        return "local", model_id  # before the providers: a cloud's "*" would take it too
    for b in gw.router.backends:
        if b.serves(model_id):
            return b.name, model_id
    backend, _, model = model_id.partition(":")
    return backend, model


def _capabilities(gw: Gateway, backend: str, model: str) -> list[str]:
    """What the model really does: on-device tool calls only once the engine has them."""
    if _is_embedder(gw, backend, model):
        return ["embedding"]
    b = gw.router.by_name.get(backend)
    if b is not None and b.is_local and not getattr(b, "calls_tools", False):
        return ["completion"]
    return ["completion", "tools"]


def _entry(gw: Gateway, model_id: str) -> dict[str, Any]:
    backend, model = _first_target(gw, model_id)
    facts = _facts(gw, backend, model)
    name = ollama_name(model_id)
    if facts is not None:
        digest, size, modified = facts.sha256, facts.size, facts.modified
    else:
        # Not a file: a stable id (the sha256 of the name), so clients can tell models apart.
        digest = hashlib.sha256(model_id.encode()).hexdigest()
        size, modified = 0, gw.started_at
    return {"name": name, "model": name, "modified_at": _iso(modified), "size": size,
            "digest": digest, "details": _details(facts)}  # fmt: skip


def _model_ids(gw: Gateway) -> list[str]:
    """Aliases and chat models (cloud embedding models among them), then on-device embedders."""
    ids = [mid for mid, _, _ in gw.router.listing()]
    return ids + [mid for mid in gw.embeddings.model_ids() if mid not in ids]


@bp.get("/api/tags")
def tags() -> Response:
    gw = gateway()
    return jsonify({"models": [_entry(gw, mid) for mid in _model_ids(gw)]})


def _any_known(gw: Gateway, name: str) -> bool:
    return is_known(gw, name) or embeds(gw, name)


def _existing(gw: Gateway, name: str) -> str:
    model_id = gateway_name(gw, name, _any_known)
    if not _any_known(gw, model_id):
        raise ModelNotFound(f"model '{name}' not found", param="model")
    return model_id


@bp.post("/api/show")
def show() -> Response:
    gw = gateway()
    model_id = _existing(gw, wanted(read_body()))
    backend, model = _first_target(gw, model_id)
    facts = _facts(gw, backend, model)
    info: dict[str, Any] = {}
    if facts is not None:
        info = {k: v for k, v in facts.metadata.items() if k.startswith(("general.",
                                                                         facts.architecture))}  # fmt: skip
        info[f"{facts.architecture}.context_length"] = _context(gw, model, facts)
    return jsonify({
        "license": facts.license if facts else "",
        "modelfile": f"# served by hoosh-edge\nFROM {facts.path.name}\n" if facts else "",
        "parameters": "",
        "template": facts.chat_template if facts else "",
        "details": _details(facts),
        "model_info": info,
        "capabilities": _capabilities(gw, backend, model),
        "modified_at": _iso(facts.modified if facts else gw.started_at),
    })  # fmt: skip


@bp.get("/api/ps")
def ps() -> Response:
    gw = gateway()
    out = []
    for slot in gw.pool.slots.values():
        if slot.kind not in ("llm", "embed") or not slot.loaded:
            continue
        model_id = slot.key.removeprefix("embed:") if slot.kind == "embed" else slot.key
        left = gw.pool.expires_in(slot.key)
        facts = _facts(gw, "local", model_id)
        when = _FAR if left is None or math.isinf(left) else datetime.now(timezone.utc) + timedelta(
            seconds=left)  # fmt: skip
        name = ollama_name(model_id)
        out.append({"name": name, "model": name, "size": slot.estimate_bytes,
                    "digest": facts.sha256 if facts else "", "details": _details(facts),
                    "expires_at": _iso(when), "size_vram": 0,
                    "context_length": _context(gw, model_id, facts)})  # fmt: skip
    return jsonify({"models": out})


@bp.get("/api/version")
def version() -> Response:
    return jsonify({"version": OLLAMA_API_VERSION, "hoosh_edge": __version__})
