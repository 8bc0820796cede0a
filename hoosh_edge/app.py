"""create_app(config): the Flask app and the Gateway object every blueprint uses."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from . import __version__, browser
from .config import Config, load_config
from .errors import HooshError
from .exposure import Exposure, needs_key
from .metrics import Metrics
from .providers.base import CallContext, ChatBackend
from .router import Router, Target

log = logging.getLogger("hoosh_edge")
access_log = logging.getLogger("hoosh_edge.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def build_providers(config: Config) -> list[ChatBackend]:
    """One backend per configured cloud or LAN provider."""
    from .providers.openai_compat import OpenAICompatProvider

    out: list[ChatBackend] = []
    for pcfg in config.providers:
        if pcfg.type == "anthropic":
            from .providers.anthropic import AnthropicProvider

            out.append(AnthropicProvider(pcfg))
        else:
            out.append(OpenAICompatProvider(pcfg))
    return out


class Gateway:
    """Everything a request may need: config, router, engines, metrics."""

    def __init__(self, config: Config, *, local_backends: list[ChatBackend] | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.started_at = time.time()
        self.local_backends = list(local_backends or [])
        self.pool: Any = None  # the ModelPool of on-device models, set by local.build_gateway
        self.speech: Any = None  # LocalSpeech, likewise
        self.db: Any = None  # the SQLite Database
        self.ledger: Any = None  # budget.SpendLedger
        self.accountant: Any = None  # spend.Accountant: the budget gate
        self.cache: Any = None  # cache.ResponseCache
        self.keys: Any = None  # keys.KeyStore
        from .keys import Authenticator, StaticKeys
        from .limits import RateLimiter

        self.auth = Authenticator(None, StaticKeys(config.server.api_keys, config.server.admin_key))
        self.limiter = RateLimiter()
        self.exposure = Exposure()
        self.inflight = 0  # requests whose response has not finished (a stream counts to its end)
        self.router = Router(config, self.local_backends + build_providers(config))
        self.metrics.gauge_callback(self._gauges)
        from .watchdog import gauges as pool_gauges

        self.metrics.gauge_callback(pool_gauges)

    def _gauges(self) -> list[tuple[str, str, list[tuple[dict[str, str], float]]]]:
        """Gauges read at scrape time: models, queues, budgets, cache, device."""
        from .device import cpu_temperature_c, mem_available_bytes

        out: list[tuple[str, str, list[tuple[dict[str, str], float]]]] = []
        if self.pool is not None:
            status = self.pool.status()
            out.append(
                (
                    "hoosh_model_loaded",
                    "1 when the on-device model is in memory",
                    [({"model": m["id"], "kind": m["kind"]}, float(m["loaded"])) for m in status],
                )
            )
            out.append(
                (
                    "hoosh_model_memory_bytes",
                    "Estimated memory of each loaded model",
                    [
                        ({"model": m["id"]}, m["estimate_bytes"] if m["loaded"] else 0)
                        for m in status
                    ],
                )
            )
            out.append(
                (
                    "hoosh_model_queue_depth",
                    "Requests waiting for each model",
                    [({"model": m["id"]}, m["queue_depth"]) for m in status],
                )
            )
        if self.ledger is not None:
            samples = []
            for rule in self.ledger.list_rules():
                left = max(0, rule.measured_limit - self.ledger.rule_usage(rule))
                samples.append(
                    (
                        {"rule": rule.name, "metric": rule.metric, "unit": rule.unit},
                        float(rule.format_amount(left)),
                    )
                )
            out.append(
                ("hoosh_budget_remaining", "What each budget rule has left this period", samples)
            )
        if self.db is not None:
            out.append(("hoosh_storage_writable",
                        "1 while the data folder takes writes, 0 after a write failed",
                        [({}, 1.0 if self.db.state.ok else 0.0)]))  # fmt: skip
        if self.accountant is not None:
            books = self.accountant.pending.report()
            out.append(("hoosh_usage_pending", "Usage records waiting in memory for the disk",
                        [({}, books["pending_usage"])]))  # fmt: skip
            out.append(("hoosh_usage_dropped", "Usage records lost because the disk was full",
                        [({}, books["dropped_usage"])]))  # fmt: skip
        if self.cache is not None:
            st = self.cache.stats()
            out.append(
                (
                    "hoosh_cache_entries",
                    "Answers in the response cache",
                    [({}, st.get("entries", 0))],
                )
            )
            out.append(
                ("hoosh_cache_bytes", "Bytes in the response cache", [({}, st.get("bytes", 0))])
            )
        temp = cpu_temperature_c()
        if temp is not None:
            out.append(
                ("hoosh_device_cpu_temperature_celsius", "Hottest thermal zone", [({}, temp)])
            )
        avail = mem_available_bytes()
        if avail is not None:
            out.append(("hoosh_device_memory_available_bytes",
                        "MemAvailable, or less when a cgroup memory limit is nearer",
                        [({}, avail)]))  # fmt: skip
        return out  # fmt: skip

    def attach_database(self, db: Any, ledger: Any, accountant: Any, cache: Any) -> None:
        """Connect the database: ledger, budget gate, response cache and stored API keys."""
        from .keys import Authenticator, KeyStore, StaticKeys

        self.db, self.ledger, self.accountant, self.cache = db, ledger, accountant, cache
        self.router.release = accountant.release
        accountant.metrics = self.metrics
        self.keys = KeyStore(db)
        s = self.config.server
        self.auth = Authenticator(self.keys, StaticKeys(s.api_keys, s.admin_key))

    def start_probe(self, interval_s: float = 15.0) -> None:
        """Check providers whose circuit is open in the background, so they come back on their own.

        Only providers that failed are probed: a healthy box makes no network call it wasn't
        asked to make.
        """
        import gevent

        def loop() -> None:
            while True:
                gevent.sleep(interval_s)
                for backend in list(self.router.backends):
                    health = self.router.health_of(backend.name)
                    probe = getattr(backend, "probe", None)
                    if health.opened_at is None or probe is None:
                        continue
                    started = time.monotonic()
                    try:
                        probe()
                    except HooshError as e:
                        health.last_error = e.message
                        continue
                    except Exception:  # noqa: BLE001 - a probe must never end the loop
                        continue
                    log.info("provider %s answers again; closing its circuit", backend.name)
                    health.ok(time.monotonic() - started)

        self._probe = gevent.spawn(loop)

    def request_done(self) -> None:
        self.inflight -= 1

    def reload(self) -> dict[str, Any]:
        """Re-read the config; apply providers, routing, budgets, prices, cache policy and keys.

        A bad new config changes nothing and says why. In-flight requests finish on the objects
        they started with. On-device model changes take effect at the next restart.
        """
        from .cache import CachePolicy
        from .config import ConfigError, load_config
        from .exposure import StartupError, check_exposure
        from .keys import Authenticator, StaticKeys
        from .pricing import PriceTable
        from .spend import Accountant

        old = self.config
        try:
            new = load_config(old.source, host=old.server.host, port=old.server.port)
            prices = PriceTable(dict(new.pricing))
            policy = CachePolicy.from_config(new.cache)
            router = Router(new, self.local_backends + build_providers(new))
            check_exposure(new, keys_exist=self.keys is not None and self.keys.has_active_keys())
            if self.ledger is not None:
                self.ledger.seed_rules([dict(b) for b in new.budgets])
        except (ConfigError, HooshError, ValueError, StartupError) as e:
            message = e.message if isinstance(e, HooshError) else str(e)
            log.error("config reload refused, keeping the running config: %s", message)
            return {"reloaded": False, "error": message}
        for name, health in self.router.health.items():
            if name in router.by_name:
                health.cooldown_s = new.routing.breaker_cooldown_s
                router.health[name] = health  # a provider keeps its record across reloads
        router.release = self.router.release
        self.router, self.config = router, new
        if self.accountant is not None:
            self.accountant = Accountant(self.ledger, prices, self.accountant.pending)
            self.accountant.metrics = self.metrics
            self.router.release = self.accountant.release
        if self.cache is not None:
            self.cache.policy = policy
        self.auth = Authenticator(self.keys, StaticKeys(new.server.api_keys, new.server.admin_key))
        for w in new.warnings:
            log.warning("config: %s", w)
        restart = [k for k in ("llm", "stt", "tts") if getattr(new, k) != getattr(old, k)]
        log.info("config reloaded from %s", new.source or "the environment")
        return {"reloaded": True, "source": new.source, "providers": [p.name for p in new.providers],
                "restart_needed_for": [f"local.{k}" for k in restart]}  # fmt: skip

    def provider_type(self, target: Target) -> str:
        pcfg = self.config.provider(target.provider)
        return "local" if pcfg is None else pcfg.type

    def request_for(self, target: Target, base: dict[str, Any]) -> dict[str, Any]:
        """The chat request as ``target`` should get it."""
        req = dict(base)
        pcfg = self.config.provider(target.provider)
        limit = pcfg.max_tokens_limit if pcfg else None
        if target.backend.is_local or (pcfg and pcfg.type == "anthropic"):
            # These speak max_tokens only.
            mct = req.pop("max_completion_tokens", None)
            if mct is not None:
                req["max_tokens"] = mct
        if limit is not None:
            field = "max_completion_tokens" if "max_completion_tokens" in req else "max_tokens"
            asked = req.get(field)
            req[field] = limit if asked is None else min(asked, limit)
        return req

    def record_chat(
        self,
        ctx: CallContext,
        target: Target,
        usage: dict[str, Any],
        *,
        status: int,
        stream: bool,
        duration_s: float,
        route: str = "/v1/chat/completions",
        cache: str | None = None,
        key: str | None = None,
    ) -> None:
        """Count what a chat request used."""
        labels = {"provider": target.provider}
        self.metrics.inc("hoosh_tokens_in_total", labels, usage.get("prompt_tokens", 0),
                         help="Prompt tokens")  # fmt: skip
        self.metrics.inc("hoosh_tokens_out_total", labels, usage.get("completion_tokens", 0),
                         help="Completion tokens")  # fmt: skip
        fields = {
            "provider": target.provider,
            "model": target.model,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "cost_usd": usage.get("cost_usd"),
            "cache": cache,
            "stream": stream,
        }
        if stream:
            if key:
                fields = {"key": key, **fields}
            # A stream's access line is written when it ends (outside the request context).
            _log_access(ctx.request_id, "POST", route, status, duration_s, fields)
        else:
            g.log_fields = fields

    def describe(self) -> list[str]:
        """What this gateway serves, for the start-up banner."""
        lines = []
        for b in self.router.backends:
            pcfg = self.config.provider(b.name)
            if b.is_local:
                lines.append(f"local chat: {', '.join(b.model_ids()) or '(no models)'}")
            elif pcfg is not None:
                state = "" if pcfg.enabled else f" [disabled: {pcfg.disabled_reason}]"
                lines.append(f"{b.name} ({pcfg.type}, {pcfg.base_url}): "
                             f"{', '.join(pcfg.models)}{state}")  # fmt: skip
        if self.speech is not None and self.speech.stt:
            lines.append(f"local speech-to-text: {', '.join(self.speech.stt)}")
        if self.speech is not None and self.speech.tts:
            lines.append(f"local text-to-speech voices: {', '.join(self.speech.tts)} "
                         f"(default {self.speech.default_voice})")  # fmt: skip
        if not lines:
            lines.append("no models yet: pull one with 'hoosh-edge models pull smollm2' "
                         "or set OPENAI_API_KEY / ANTHROPIC_API_KEY")  # fmt: skip
        return lines

    def local_status(self) -> list[dict[str, Any]]:
        """On-device models and their state, for /v1/health and the status page."""
        pool = getattr(self, "pool", None)
        return pool.status() if pool is not None else []

    def model_ids(self) -> list[tuple[str, str]]:
        """(id, owner) of every model: chat targets, then on-device speech models."""
        ids = self.router.model_ids()
        if self.speech is not None:
            seen = {mid for mid, _ in ids}
            ids += [(mid, "local") for mid in self.speech.model_ids() if mid not in seen]
        return ids

    def model_listing(self) -> list[tuple[str, str, str]]:
        """(id, owner, source) of every model to list: chat targets, then on-device speech."""
        out = self.router.listing()
        if self.speech is not None:
            seen = {mid for mid, _, _ in out}
            out += [(m, "local", "local") for m in self.speech.model_ids() if m not in seen]
        return out

    def storage_report(self) -> dict[str, Any] | None:
        """The data folder's state and the usage waiting for it, for the health endpoints."""
        if self.db is None:
            return None
        report = self.db.state.report()
        if self.accountant is not None:
            report.update(self.accountant.pending.report())
        return report

    def close(self) -> None:
        from .errors import StorageUnavailable

        self.router.close()
        if self.pool is not None:
            self.pool.stop()
        try:
            if self.accountant is not None and len(self.accountant.pending):
                self.accountant.pending.flush(self.ledger)
            if self.cache is not None:
                self.cache.flush()
        except StorageUnavailable:
            pass  # StorageState said why when it happened
        if self.accountant is not None and len(self.accountant.pending):
            log.warning("storage: %d usage record(s) could not be written before stopping; "
                        "they are lost", len(self.accountant.pending))  # fmt: skip
        if self.keys is not None:
            self.keys.flush_last_used()
        if self.db is not None:
            self.db.close()


def _log_access(rid: str, method: str, path: str, status: int, duration_s: float,
                fields: dict[str, Any] | None) -> None:  # fmt: skip
    if not access_log.isEnabledFor(logging.INFO):
        return  # log_level above info: no line is written, so none is built
    line = {"ts": round(time.time(), 3), "request_id": rid, "method": method, "path": path,
            "status": status, "duration_ms": round(duration_s * 1000, 2)}  # fmt: skip
    if fields:
        line.update(fields)
    access_log.info(json.dumps(line, separators=(",", ":")))


def create_app(config: Config | None = None, *, gateway: Gateway | None = None) -> Flask:
    """The Flask app for ``config`` (default: the environment and no file)."""
    if gateway is None:
        gateway = Gateway(config if config is not None else load_config(None))
    config = gateway.config
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max(
        config.server.max_audio_bytes, config.server.max_body_bytes
    )
    app.json.sort_keys = False
    app.extensions["hoosh"] = gateway

    from .api import count_tokens  # noqa: F401 - adds its route to the messages blueprint
    from .api.admin import bp as admin_bp
    from .api.audio import bp as audio_bp
    from .api.bodies import check_headers
    from .api.chat import bp as chat_bp
    from .api.messages import bp as messages_bp
    from .api.models import bp as models_bp
    from .api.status import bp as status_bp

    app.register_blueprint(chat_bp)
    app.register_blueprint(messages_bp)
    app.register_blueprint(audio_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(status_bp)
    app.register_blueprint(models_bp)

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
        if (path.startswith("/v1/") and path != "/v1/health") or path.startswith("/admin"):
            check_headers(request.headers)
        gateway.exposure.check(server, gateway.auth.keys_exist, path)
        if needs_key(server, path):
            record = gateway.auth.authenticate_request(request.headers, path=path)
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
            _log_access(g.get("request_id", "-"), request.method, request.path,
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
            from .api.messages import _hoosh_error as anthropic_hoosh_error

            return anthropic_hoosh_error(e)  # e.g. a key refused on a path without a route
        resp = jsonify(e.to_dict())
        for k, v in e.headers.items():
            resp.headers[k] = v
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
            from .api.messages import anthropic_error

            return anthropic_error(code, message)
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
