"""Ollama's model endpoints: /api/tags, /api/show, /api/ps, /api/version, /api/pull, /api/delete.

Local chat models are described from their files (``modelstore.facts``: GGUF metadata, size, the
sha256 the store recorded); routing aliases and cloud models are listed too, with what is known
of them. Names are the gateway's ids with Ollama's ``:latest`` tag added where they have no tag;
both spellings resolve. A pull installs a model of the box's manifest through the model store and
reports Ollama's progress lines; like a delete, it needs the admin key once keys exist, and the
gateway serves the new files from its next start. ``create``, ``copy``, ``push`` and ``blobs``
have no meaning here and answer 501.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
import gevent.queue
from flask import Response, g, jsonify

from hoosh_edge.backends.model_facts import ModelFacts, model_facts
from hoosh_edge.backends.modelstore import load_manifest, pull, remove
from hoosh_edge.doors.common import gateway
from hoosh_edge.doors.ollama_http import NDJSON, bp, gateway_name, is_known, read_body
from hoosh_edge.errors import (
    Conflict,
    HooshError,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    UpstreamError,
)
from hoosh_edge.formats import ollama as fmt
from hoosh_edge.threads import run_blocking
from hoosh_edge.version import __version__

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger(__name__)

# The Ollama release whose API (docs/api.md) this door follows; clients gate features on it.
OLLAMA_API_VERSION = "0.12.0"
_FAR = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)  # keep_alive < 0: never unloaded


class NotImplementedHere(HooshError):
    status = 501
    type = "invalid_request_error"
    code = "not_implemented"


def ollama_name(model_id: str) -> str:
    """The name Ollama's clients expect: ``NAME:TAG`` (``:latest`` when the id has no tag)."""
    return model_id if ":" in model_id else f"{model_id}:latest"


def _iso(ts: float | datetime) -> str:
    when = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, timezone.utc)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _local_path(gw: Gateway, model_id: str) -> str | None:
    local = gw.router.by_name.get("local")
    engine = getattr(local, "engine", None)
    return getattr(engine, "paths", {}).get(model_id) if engine is not None else None


def _facts(gw: Gateway, model_id: str) -> ModelFacts | None:
    path = _local_path(gw, model_id)
    return None if path is None else run_blocking(model_facts, path)


def _context(gw: Gateway, model_id: str) -> int:
    """The context this box serves the model with (its n_ctx, within what it was trained for)."""
    return int(gw.router.by_name["local"].engine.context_length(model_id))  # type: ignore[attr-defined]


def _details(f: ModelFacts | None) -> dict[str, Any]:
    if f is None:
        return {"parent_model": "", "format": "", "family": "", "families": None,
                "parameter_size": "", "quantization_level": ""}  # fmt: skip
    return {"parent_model": "", "format": "gguf", "family": f.architecture,
            "families": [f.architecture], "parameter_size": f.parameter_size,
            "quantization_level": f.quantization}  # fmt: skip


def _first_target(gw: Gateway, model_id: str) -> tuple[str, str]:
    """(backend name, model) that ``model_id`` goes to first: aliases are followed once."""
    if model_id in gw.router.aliases and gw.router.aliases[model_id]:
        backend, _, model = gw.router.aliases[model_id][0].partition(":")
        return backend, model
    for b in gw.router.backends:
        if b.serves(model_id):
            return b.name, model_id
    backend, _, model = model_id.partition(":")
    return backend, model


def _capabilities(gw: Gateway, backend: str) -> list[str]:
    """What the model's backend really does: on-device tool calls only once the engine has them."""
    b = gw.router.by_name.get(backend)
    if b is not None and b.is_local and not getattr(b, "calls_tools", False):
        return ["completion"]
    return ["completion", "tools"]


def _entry(gw: Gateway, model_id: str) -> dict[str, Any]:
    backend, model = _first_target(gw, model_id)
    facts = _facts(gw, model) if backend == "local" else None
    name = ollama_name(model_id)
    if facts is not None:
        digest, size, modified = facts.sha256, facts.size, facts.modified
    else:
        # Not a file: a stable id (the sha256 of the name), so clients can tell models apart.
        digest = hashlib.sha256(model_id.encode()).hexdigest()
        size, modified = 0, gw.started_at
    return {"name": name, "model": name, "modified_at": _iso(modified), "size": size,
            "digest": digest, "details": _details(facts)}  # fmt: skip


def _chat_ids(gw: Gateway) -> list[str]:
    return [mid for mid, _, _ in gw.router.listing()]


@bp.get("/api/tags")
def tags() -> Response:
    gw = gateway()
    return jsonify({"models": [_entry(gw, mid) for mid in _chat_ids(gw)]})


def _wanted(body: Any) -> str:
    """The model a body names (``model``, or the older ``name``)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    return name.strip()


def _existing(gw: Gateway, name: str) -> str:
    model_id = gateway_name(gw, name)
    if not is_known(gw, model_id):
        raise ModelNotFound(f"model '{name}' not found", param="model")
    return model_id


@bp.post("/api/show")
def show() -> Response:
    gw = gateway()
    model_id = _existing(gw, _wanted(read_body()))
    backend, model = _first_target(gw, model_id)
    facts = _facts(gw, model) if backend == "local" else None
    info: dict[str, Any] = {}
    if facts is not None:
        info = {k: v for k, v in facts.metadata.items() if k.startswith(("general.",
                                                                         facts.architecture))}  # fmt: skip
        info[f"{facts.architecture}.context_length"] = _context(gw, model)
    return jsonify({
        "license": facts.license if facts else "",
        "modelfile": f"# served by hoosh-edge\nFROM {facts.path.name}\n" if facts else "",
        "parameters": "",
        "template": facts.chat_template if facts else "",
        "details": _details(facts),
        "model_info": info,
        "capabilities": _capabilities(gw, backend),
        "modified_at": _iso(facts.modified if facts else gw.started_at),
    })  # fmt: skip


@bp.get("/api/ps")
def ps() -> Response:
    gw = gateway()
    out = []
    for slot in gw.pool.slots.values():
        if slot.kind != "llm" or not slot.loaded:
            continue
        left = gw.pool.expires_in(slot.key)
        facts = _facts(gw, slot.key)
        when = _FAR if left is None or math.isinf(left) else datetime.now(timezone.utc) + timedelta(
            seconds=left)  # fmt: skip
        name = ollama_name(slot.key)
        out.append({"name": name, "model": name, "size": slot.estimate_bytes,
                    "digest": facts.sha256 if facts else "", "details": _details(facts),
                    "expires_at": _iso(when), "size_vram": 0,
                    "context_length": _context(gw, slot.key)})  # fmt: skip
    return jsonify({"models": out})


@bp.get("/api/version")
def version() -> Response:
    return jsonify({"version": OLLAMA_API_VERSION, "hoosh_edge": __version__})


# ---- the model store: pull and delete (the admin key) -------------------------------------------


def require_admin(gw: Gateway) -> None:
    """Pulls and deletes change the box: with keys on, only the admin key may."""
    if not gw.auth.keys_exist():
        return
    record = g.get("key")
    if record is not None and record.is_admin:
        return
    if not gw.auth.has_admin_key:
        raise PermissionDenied("Pulling and deleting models are disabled while client keys exist "
                               "and no admin key is set: configure server.admin_key.")  # fmt: skip
    raise PermissionDenied("Pulling and deleting models need the admin key.")


def _store(gw: Gateway) -> tuple[Any, Path]:
    models_dir = Path(gw.config.server.models_dir)
    own = models_dir / "manifest.toml"
    return load_manifest(own if own.is_file() else None), models_dir


def _manifest_id(manifest: Any, name: str) -> str:
    for mid in (name, name.removesuffix(":latest")):
        if mid in manifest.models:
            return mid
    raise ModelNotFound(f"pull model manifest: '{name}' is not in this box's manifest "
                        f"(known: {', '.join(sorted(manifest.models)) or 'none'})")  # fmt: skip


@bp.post("/api/pull")
def pull_model() -> Response:
    gw = gateway()
    require_admin(gw)
    body = read_body()
    name = _wanted(body)
    manifest, models_dir = _store(gw)
    spec = manifest.get(_manifest_id(manifest, name))
    lines = _pull_lines(manifest, spec, models_dir)
    if body.get("stream", True) is False:
        last: dict[str, Any] = {}
        for last in lines:
            if "error" in last:
                raise UpstreamError(last["error"], code="pull_failed")
        return jsonify(last)
    return Response((fmt.ndjson(obj) for obj in lines), mimetype=NDJSON)


_PULLING: set[str] = set()  # models a pull thread is working on (one pull per model at a time)


def _pull_lines(manifest: Any, spec: Any, models_dir: Path) -> Iterator[dict[str, Any]]:
    """Ollama's progress objects while the store pulls ``spec`` in a pool thread.

    Downloads, hashing and converters run off the hub; the thread hands each progress line to
    the hub with ``run_callback_threadsafe``. A client that goes away does not stop the thread:
    the pull completes (or fails) on its own, and a new pull of the model waits for it.
    """
    digests = {f.name: f"sha256:{f.sha256}" if f.sha256 else "" for f in spec.files}
    sizes = {f.name: f.size for f in spec.files}
    events: gevent.queue.Queue = gevent.queue.Queue()
    hub = gevent.get_hub()
    shown: dict[str, int] = {}

    def put(event: dict[str, Any] | None) -> None:
        hub.loop.run_callback_threadsafe(events.put_nowait, event)

    def progress(file: str, done: int, total: int | None) -> None:  # in the pull's thread
        if done - shown.get(file, -(1 << 30)) < (1 << 20) and done != total:
            return  # one line a MiB is plenty
        shown[file] = done
        put({"status": f"pulling {digests.get(file, file)[7:19] or file}",
             "digest": digests.get(file, ""), "total": total or sizes.get(file) or 0,
             "completed": done})  # fmt: skip

    def work() -> None:  # in the pull's thread
        event: dict[str, Any] | None = None
        try:
            pull(manifest, spec.id, models_dir, progress=progress)
        except HooshError as e:
            event = {"error": e.message}
        except Exception as e:  # noqa: BLE001 - the client gets the reason, the log the rest
            log.exception("pull of %s failed", spec.id)
            event = {"error": f"pull failed: {type(e).__name__}"}
        finally:
            _PULLING.discard(spec.id)  # before the client hears: it may pull again at once
        put(event)

    if spec.id in _PULLING:
        raise Conflict(f"'{spec.id}' is being pulled already; try again when that pull is done.",
                       code="pull_in_progress")  # fmt: skip
    _PULLING.add(spec.id)
    total = sum(f.size or 0 for f in spec.files)
    try:
        worker = gevent.spawn(
            run_blocking, work, owner=f"pull:{spec.id}", expect_s=total / 250_000 + 600
        )  # a slow link: 250 kB/s
    except BaseException:
        _PULLING.discard(spec.id)
        raise
    return _progress(events, worker, spec, digests)


def _progress(events: gevent.queue.Queue, worker: gevent.Greenlet, spec: Any,
              digests: dict[str, str]) -> Iterator[dict[str, Any]]:  # fmt: skip
    yield {"status": "pulling manifest"}
    try:
        while True:
            event = events.get()
            if event is None:
                break
            yield event
            if "error" in event:
                return
        for f in spec.files:
            yield {"status": f"pulling {digests[f.name][7:19] or f.name}",
                   "digest": digests[f.name], "total": f.size or 0, "completed": f.size or 0}  # fmt: skip
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        yield {"status": "success"}
    finally:
        worker.kill(block=False)  # only the waiting greenlet: the thread finishes the pull


@bp.delete("/api/delete")
def delete_model() -> Response:
    gw = gateway()
    require_admin(gw)
    manifest, models_dir = _store(gw)
    mid = _manifest_id(manifest, _wanted(read_body()))
    if mid in gw.pool.slots:
        gw.pool.keep(mid, 0)  # out of memory first (or once its current answer ends)
    if not remove(manifest, mid, models_dir):
        raise ModelNotFound(f"model '{mid}' is not installed")
    log.info("model %s deleted through /api/delete", mid)
    return Response(status=200)


@bp.route("/api/create", methods=["POST"])
@bp.route("/api/copy", methods=["POST"])
@bp.route("/api/push", methods=["POST"])
@bp.route("/api/blobs/<path:digest>", methods=["HEAD", "POST"])
def not_here(digest: str | None = None) -> Response:
    raise NotImplementedHere(
        "This gateway serves the models of its manifest and its providers: creating, copying, "
        "pushing and uploading models is not supported. Pull a model with /api/pull."
    )
