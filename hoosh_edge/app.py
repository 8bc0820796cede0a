"""create_app(config): Flask wired to the Gateway; every blueprint reaches it through the app."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from hoosh_edge.config import Config, load_config
from hoosh_edge.doors import browser
from hoosh_edge.doors.auth import authenticate_request
from hoosh_edge.doors.common import error_headers, log_access
from hoosh_edge.errors import HooshError
from hoosh_edge.exposure import needs_key
from hoosh_edge.gateway import Gateway, build_gateway
from hoosh_edge.version import __version__

log = logging.getLogger("hoosh_edge")
access_log = logging.getLogger("hoosh_edge.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def create_app(config: Config | None = None, *, gateway: Gateway | None = None) -> Flask:
    """The Flask app for ``config`` (default: the environment and no file)."""
    if gateway is None:
        gateway = build_gateway(config if config is not None else load_config(None))
    config = gateway.config
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max(
        config.server.max_audio_bytes, config.server.max_body_bytes
    )
    app.json.sort_keys = False
    app.extensions["hoosh"] = gateway

    # These add their routes to a blueprint below: the messages one, and Ollama's.
    from hoosh_edge.doors import anthropic_count, ollama_embed, ollama_pull  # noqa: F401
    from hoosh_edge.doors.admin import bp as admin_bp
    from hoosh_edge.doors.anthropic_messages import bp as messages_bp
    from hoosh_edge.doors.bodies import check_headers
    from hoosh_edge.doors.ollama_models import bp as ollama_bp  # /api/chat and /api/generate too
    from hoosh_edge.doors.openai_audio import bp as audio_bp
    from hoosh_edge.doors.openai_chat import bp as chat_bp
    from hoosh_edge.doors.openai_completions import bp as completions_bp
    from hoosh_edge.doors.openai_embeddings import bp as embeddings_bp
    from hoosh_edge.doors.openai_models import bp as models_bp
    from hoosh_edge.doors.openai_responses import bp as responses_bp
    from hoosh_edge.doors.status import bp as status_bp

    app.register_blueprint(chat_bp)
    app.register_blueprint(messages_bp)
    app.register_blueprint(audio_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(status_bp)
    app.register_blueprint(models_bp)
    app.register_blueprint(ollama_bp)
    app.register_blueprint(embeddings_bp)
    app.register_blueprint(responses_bp)
    app.register_blueprint(completions_bp)

    @app.before_request
    def _start() -> Response | None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex[:24]
        gateway.inflight += 1
        g.counted = True
        g.started = time.monotonic()
        g.log_fields = None
        g.key = None
        g.key_name = None
        path, server = request.path, gateway.config.server
        preflight = browser.check(server, request)  # Host and Origin, before any key is read
        if preflight is not None:
            return preflight
        if (path.startswith(("/v1/", "/api/")) and path != "/v1/health") or path.startswith(
            "/admin"
        ):
            check_headers(request.headers)
        gateway.exposure.check(server, gateway.auth.keys_exist, path)
        if needs_key(server, path):
            record = authenticate_request(gateway.auth, request.headers, path=path)
            if record is not None:
                g.key, g.key_name = record, record.name
                g.lease = gateway.limiter.acquire(
                    record.name, rpm=record.rpm, max_concurrent=record.max_concurrent
                )
        return None

    @app.after_request
    def _finish(resp: Response) -> Response:
        browser.add_cors_headers(gateway.config.server, request, resp)
        lease = g.pop("lease", None)
        if lease is not None:
            resp.call_on_close(lease.release)  # a stream holds its slot until it ends
        if g.pop("counted", False):
            resp.call_on_close(gateway.request_done)
        resp.headers.setdefault("X-Request-Id", g.get("request_id", "-"))
        tried = getattr(g.get("call_ctx"), "tried", None)
        if tried is not None and not (g.get("log_fields") or {}).get("provider"):
            # A call that failed names the target it tried last (a 502 says whose it was).
            g.log_fields = {"provider": tried.provider, "model": tried.model,
                            **(g.get("log_fields") or {})}  # fmt: skip
        if g.get("key_name"):
            fields = g.get("log_fields") or {}
            g.log_fields = {"key": g.key_name, **fields}
        route = request.url_rule.rule if request.url_rule else "unmatched"
        gateway.metrics.inc("hoosh_requests_total", {"route": route, "status": str(resp.status_code)},
                            help="HTTP requests by route and status")  # fmt: skip
        if not resp.is_streamed or not g.get("logs_itself"):
            # A chat stream writes its own line when it ends; other streams log at first byte.
            elapsed = time.monotonic() - g.get("started", time.monotonic())
            gateway.metrics.observe("hoosh_request_duration_seconds", elapsed, {"route": route},
                                    help="Request latency")  # fmt: skip
            log_access(g.get("request_id", "-"), request.method, request.path,
                        resp.status_code, elapsed, g.get("log_fields"))  # fmt: skip
        return resp

    @app.teardown_request
    def _teardown(_exc: BaseException | None) -> None:
        lease = g.pop("lease", None)  # only when after_request never ran
        if lease is not None:
            lease.release()
        if g.pop("counted", False):
            gateway.request_done()

    @app.errorhandler(HooshError)
    def _hoosh_error(e: HooshError) -> tuple[Response, int]:
        if request.path.startswith("/v1/messages"):
            from hoosh_edge.doors.anthropic_messages import _hoosh_error as anthropic_hoosh_error

            return anthropic_hoosh_error(e)  # e.g. a key refused on a path without a route
        if request.path.startswith("/api/"):
            from hoosh_edge.doors.ollama_http import ollama_error

            return ollama_error(e.status, e.message, error_headers(e)), e.status
        resp = jsonify(e.to_dict())
        resp.headers.update(error_headers(e))
        return resp, e.status

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> tuple[Response, int]:
        code = e.code or 500
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        message = {
            404: f"Unknown path {request.path}. See GET /v1/models and POST /v1/chat/completions.",
            405: f"Method {request.method} is not allowed on {request.path}.",
            413: "The request body is too large.",
        }.get(code, e.description or e.name)
        if request.path.startswith("/v1/messages"):
            # Anthropic's clients read Anthropic's error shape, on paths the gateway lacks too.
            from hoosh_edge.doors.anthropic_messages import anthropic_error

            return anthropic_error(code, message)
        if request.path.startswith("/api/"):
            from hoosh_edge.doors.ollama_http import ollama_error  # Ollama's clients read its shape

            return ollama_error(code, message), code
        body = {"error": {"message": message, "type": "invalid_request_error" if code < 500
                          else "server_error", "param": None, "code": kinds.get(code)}}  # fmt: skip
        return jsonify(body), code

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> tuple[Response, int]:
        log.exception("request %s failed", g.get("request_id", "-"))
        body = {"error": {"message": "Internal server error.", "type": "server_error",
                          "param": None, "code": None}}  # fmt: skip
        return jsonify(body), 500

    @app.get("/health")
    def health() -> Response:
        # Liveness: the process answers, so 200 even when the disk is full (a restart would not
        # free it); the storage state is there for whoever looks.
        storage = gateway.storage_report()
        body: dict[str, Any] = {"status": "ok", "version": __version__}
        if storage is not None:
            body["storage"] = storage["state"]
        return jsonify(body)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(gateway.metrics.render(), content_type=gateway.metrics.content_type)

    return app
