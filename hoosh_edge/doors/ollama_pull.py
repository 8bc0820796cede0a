"""Ollama's model store endpoints: POST /api/pull and DELETE /api/delete (the admin key).

A pull installs a model of the box's manifest through the model store and reports Ollama's
progress lines; like a delete, it needs the admin key once keys exist, and the gateway serves the
new files from its next start. ``create``, ``copy``, ``push`` and ``blobs`` have no meaning here
and answer 501.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
import gevent.queue
from flask import Response, g, jsonify

from hoosh_edge.backends.modelstore import load_manifest, pull, remove
from hoosh_edge.doors.common import gateway
from hoosh_edge.doors.ollama_http import NDJSON, bp, read_body, wanted
from hoosh_edge.errors import (
    Conflict,
    HooshError,
    ModelNotFound,
    PermissionDenied,
    UpstreamError,
)
from hoosh_edge.formats import ollama as fmt
from hoosh_edge.threads import run_blocking

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger(__name__)


class NotImplementedHere(HooshError):
    status = 501
    type = "invalid_request_error"
    code = "not_implemented"


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
    name = wanted(body)
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
    mid = _manifest_id(manifest, wanted(read_body()))
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
