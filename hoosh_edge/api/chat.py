"""POST /v1/chat/completions: JSON or SSE, through the router with fallback."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import gevent
from flask import Blueprint, Response, g, jsonify, request

from .. import chatfmt
from ..budget import Usage
from ..cache import ChatRecorder, chat_key, directives, replay_chunks
from ..errors import DeadlineExceeded, HooshError
from ..estimate import DEFAULT_MAX_TOKENS, Unbounded, prompt_text_tokens, prompt_tokens, text_tokens
from ..keys import require_model
from ..providers.base import CallContext
from ..router import Selected, Target
from ..spend import Hold, chat_usage
from ..threads import KEEPALIVE, pump, run_books
from .common import gateway, inference_headers, read_json

log = logging.getLogger(__name__)
bp = Blueprint("chat", __name__)

# Fields the gateway handles itself; never forwarded as they came.
_OWN_FIELDS = ("model", "stream", "stream_options")


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    gw = gateway()
    req = chatfmt.validate_chat_request(read_json(gw.config.server.max_body_bytes))
    return serve_chat(gw, req)[1]


def serve_chat(
    gw: Any, req: dict[str, Any], route: str = "/v1/chat/completions"
) -> tuple[ChatCall, Response]:
    """Serve a validated OpenAI chat request: the cache, then the router; OpenAI-shaped answer."""
    require_model(g.get("key"), req["model"])
    targets = gw.router.resolve(req["model"])
    ctx = CallContext(request_id=g.request_id, on_malformed_chunk=gw.metrics.malformed_chunk)
    g.call_ctx = ctx
    call = ChatCall(gw, req, ctx)
    call.route = route
    call.base = {k: v for k, v in req.items() if k not in _OWN_FIELDS}
    lookup, store = directives(request.headers.get("Cache-Control"))
    cache = gw.cache
    if cache is None or not cache.policy.enabled or not cache.policy.chat_cacheable(req):
        call.cache_state = "BYPASS"
        return call, call.run(targets)
    primary = targets[0]
    call.cache_key = chat_key(primary.provider, primary.model, call.base)
    call.cache_store = store
    flight = cache.inflight(call.cache_key).acquire()  # identical requests wait, then hit
    try:
        doc = run_books(cache.get_chat, call.cache_key) if lookup else None
        if doc is not None:
            gw.metrics.inc("hoosh_cache_total", {"result": "hit"}, help="Response cache lookups")
            flight.release()
            return call, call.replay(doc)
        gw.metrics.inc("hoosh_cache_total", {"result": "miss" if lookup else "bypass"},
                       help="Response cache lookups")  # fmt: skip
        call.cache_state = "MISS" if lookup else "BYPASS"
        call.flight = flight
        return call, call.run(targets)
    except BaseException:
        flight.release()
        raise


class ChatCall:
    """One chat request on its way through the router, and what it used."""

    cache_key: str | None = None
    route = "/v1/chat/completions"
    cache_store = False
    cache_state = "BYPASS"
    flight: Any = None
    base: dict[str, Any]

    def run(self, targets: list[Target]) -> Response:
        """Serve from the targets; a stream releases the cache flight when it ends."""
        if self.req.get("stream"):
            return self.stream(targets, self.base)
        try:
            return self.complete(targets, self.base)
        finally:
            self.release_flight()

    def release_flight(self) -> None:
        if self.flight is not None:
            self.flight.release()
            self.flight = None

    def maybe_store(self, target: Target, primary: bool, doc: dict[str, Any] | None) -> None:
        """Keep a finished answer of the primary target (a fallback's answer is not its)."""
        if doc is None or not self.cache_key or not self.cache_store or not primary:
            return
        stored = {**doc, "usage": {k: v for k, v in (doc.get("usage") or {}).items()
                                   if k != "cost_usd"}}  # fmt: skip
        run_books(self.gw.cache.put_chat, self.cache_key, stored,
                     provider=target.provider, model=target.model)  # fmt: skip

    def replay(self, doc: dict[str, Any]) -> Response:
        """Answer from the cache: no upstream call, no budget touched, cost 0."""
        usage = doc.get("usage") or {}
        usage["cost_usd"] = 0
        doc["usage"] = usage
        model = doc.get("model") or self.req["model"]
        if not self.req.get("stream"):
            doc.update(id=self.id, object="chat.completion", created=self.created)
            resp = jsonify(doc)
        else:
            include_usage = bool((self.req.get("stream_options") or {}).get("include_usage"))

            def frames() -> Iterator[bytes]:
                for chunk in replay_chunks(doc):
                    if not chunk.get("choices") and not include_usage:
                        continue
                    self._stamp(chunk, None)
                    chunk["model"] = model
                    yield chatfmt.sse(chunk)
                yield b"data: [DONE]\n\n"

            resp = Response(frames(), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache"})  # fmt: skip
        resp.headers["X-Hoosh-Cache"] = "HIT"
        resp.headers["X-Hoosh-Cost-USD"] = "0"
        g.log_fields = {"provider": "cache", "model": model, "cache": "HIT",
                        "prompt_tokens": usage.get("prompt_tokens"),
                        "completion_tokens": usage.get("completion_tokens"), "cost_usd": 0}  # fmt: skip
        return inference_headers(resp, "cache", model)

    def __init__(self, gw: Any, req: dict[str, Any], ctx: CallContext) -> None:
        self.gw = gw
        self.req = req
        self.ctx = ctx
        self.id = f"chatcmpl-{ctx.request_id}"
        self.created = int(time.time())
        # For counts shown to clients when a backend sends none; money uses each target's bound.
        self.prompt_bound = prompt_text_tokens(req)
        self.caps: dict[str, int] = {}  # completion limits the gateway chose, per target
        self.started = time.monotonic()
        self.key = g.get("key_name")

    def request_for(self, target: Target) -> dict[str, Any]:
        """The request as this target should get it (token limit clamped to the provider's)."""
        req = self.gw.request_for(target, self.base)
        cap = self.caps.get(target.label)
        if cap is not None:
            # The budget's limit on what this call may write: what was reserved is what is sent
            # (never above the provider's own limit: that was the ceiling it was cut from).
            req.pop("max_tokens", None)
            req.pop("max_completion_tokens", None)
            local_or_anthropic = target.backend.is_local or (
                self.gw.provider_type(target) == "anthropic"
            )
            req["max_tokens" if local_or_anthropic else "max_completion_tokens"] = cap
        return req

    def admit(self, target: Target) -> Hold | None:
        """Reserve this target's upper bound in the ledger (or raise BudgetExceeded)."""
        acct = self.gw.accountant
        if acct is None:
            return None
        req = self.request_for(target)
        is_local = target.backend.is_local
        price = acct.price_of(target.provider, target.model, is_local)
        unbounded = None
        try:
            prompt = prompt_tokens(req, image_max_tokens=price.max_image_tokens if price else None)
        except Unbounded as e:
            prompt, unbounded = prompt_text_tokens(req), (None if is_local else e.what)
        sent = chatfmt.max_tokens_of(req)  # the client's limit, clamped to the provider's
        open_completion = chatfmt.max_tokens_of(self.base) is None
        ceiling = (price.max_output_tokens if price else None) or DEFAULT_MAX_TOKENS
        if sent is not None:
            ceiling = min(ceiling, sent) if open_completion else sent
        estimate = Usage(prompt_tokens=prompt, completion_tokens=ceiling)
        hold = acct.admit(provider=target.provider, model=target.model, is_local=is_local,
                          estimate=estimate, key=self.key, request_id=self.ctx.request_id,
                          open_completion=open_completion, unbounded=unbounded)  # fmt: skip
        if hold.max_tokens is not None:
            self.caps[target.label] = hold.max_tokens
        return hold

    def settle(self, hold: Hold | None, usage: dict[str, Any]) -> None:
        """Book the real (or guessed) usage; add its cost to the usage object."""
        if hold is None or self.gw.accountant is None:
            return
        actual = chat_usage(usage)
        guessed = bool(usage.get("estimated"))
        if guessed:
            # No counts came back: bill this target's bounds, at most what was reserved.
            actual.prompt_tokens = hold.reservation.estimate.prompt_tokens
        self.gw.accountant.commit(hold, actual, guessed=guessed)
        if guessed:
            usage.update(prompt_tokens=actual.prompt_tokens,
                         completion_tokens=actual.completion_tokens,
                         total_tokens=actual.prompt_tokens + actual.completion_tokens)  # fmt: skip
        usage["cost_usd"] = hold.cost_usd

    @staticmethod
    def cap_header(resp: Response, hold: Hold | None) -> None:
        """``X-Hoosh-Max-Tokens``: the completion limit the gateway set for the budget."""
        if hold is not None and hold.max_tokens is not None:
            resp.headers["X-Hoosh-Max-Tokens"] = str(hold.max_tokens)

    def budget_headers(self, resp: Response, target: Target, hold: Hold | None) -> None:
        if hold is None or self.gw.accountant is None:
            return
        resp.headers["X-Hoosh-Cost-USD"] = hold.cost_usd_text
        left = self.gw.accountant.remaining_header(
            key=self.key, provider=target.provider, model=target.model,
            is_local=target.backend.is_local)  # fmt: skip
        if left is not None:
            resp.headers["X-Hoosh-Budget-Remaining"] = left

    def complete(self, targets: list[Target], base: dict[str, Any]) -> Response:

        def run(target: Target) -> dict[str, Any]:
            body = self.request_for(target)
            doc = target.backend.complete(target.model, body, self.ctx)
            if doc is None:
                doc = chatfmt.join_chunks(target.backend.stream(target.model, body, self.ctx))
            return doc

        limit = self.gw.config.server.request_timeout_s
        with gevent.Timeout(
            limit,
            DeadlineExceeded(
                f"The request did not finish within {limit:g} s (server.request_timeout_s)."
            ),
        ):
            target, doc, _, hold = self.gw.router.attempt(targets, self.ctx, run, self.admit)
        doc["id"] = self.id
        doc["object"] = "chat.completion"
        doc.setdefault("created", self.created)
        doc["model"] = doc.get("model") or target.model
        doc["usage"] = chatfmt.normalize_usage(
            doc.get("usage"), self.prompt_bound, chatfmt.completion_text(doc)
        )
        self.settle(hold, doc["usage"])
        self.maybe_store(target, target == targets[0], doc)
        self.gw.record_chat(self.ctx, target, doc["usage"], status=200, stream=False,
                            cache=self.cache_state, key=self.key,
                            duration_s=time.monotonic() - self.started, route=self.route)  # fmt: skip
        resp = jsonify(doc)
        resp.headers["X-Hoosh-Cache"] = self.cache_state
        self.budget_headers(resp, target, hold)
        self.cap_header(resp, hold)
        return inference_headers(resp, target.provider, target.model)

    def stream(self, targets: list[Target], base: dict[str, Any]) -> Response:
        include_usage = bool((self.req.get("stream_options") or {}).get("include_usage"))
        heartbeat = self.gw.config.server.sse_keepalive_s
        source = pump(
            self.gw.router.stream(targets, self.request_for, self.ctx, self.admit),
            maxsize=16,
            heartbeat_s=heartbeat,
        )
        try:
            first = next(source)  # the router's choice, or a failure while headers can still say so
        except StopIteration:
            first = KEEPALIVE
        except BaseException:
            source.close()
            self.release_flight()
            raise
        target = first.target if isinstance(first, Selected) else None
        self.primary = targets[0]
        g.logs_itself = True
        resp = Response(
            self._frames(source, first, target, include_usage),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        if target is not None and self.gw.accountant is not None:
            left = self.gw.accountant.remaining_header(
                key=self.key, provider=target.provider, model=target.model,
                is_local=target.backend.is_local)  # fmt: skip
            if left is not None:
                resp.headers["X-Hoosh-Budget-Remaining"] = left
        self.cap_header(resp, first.hold if isinstance(first, Selected) else None)
        resp.headers["X-Hoosh-Cache"] = self.cache_state
        return inference_headers(resp, target.provider if target else None,
                                 target.model if target else None)  # fmt: skip

    def _frames(
        self, source: Any, first: Any, target: Target | None, include_usage: bool
    ) -> Iterator[bytes]:
        usage = None
        chars = 0  # streamed UTF-8 bytes: a bound of the completion if no usage arrives
        status = 200
        finished = False
        hold = first.hold if isinstance(first, Selected) else None
        recorder = ChatRecorder() if self.cache_key and self.cache_store else None
        items = _prepend(first, source)
        try:
            for item in items:
                if item is KEEPALIVE:
                    yield b": keep-alive\n\n"
                    continue
                if isinstance(item, Selected):
                    target, hold = item.target, item.hold
                    continue
                if item.get("usage"):
                    usage = item["usage"]
                    if not item.get("choices"):
                        continue  # sent once, normalized, at the end
                    item = {k: v for k, v in item.items() if k != "usage"}
                self._stamp(item, target)
                chars += text_tokens(chatfmt.chunk_text(item))
                if recorder is not None:
                    recorder.add(item)
                yield chatfmt.sse(item)
            usage = chatfmt.normalize_usage(usage, self.prompt_bound, chars)
            self.settle(hold, usage)
            if recorder is not None and target is not None:
                doc = recorder.completion()
                if doc is not None:
                    doc["usage"] = usage
                self.maybe_store(target, target == self.primary, doc)
            if include_usage:
                tail = {"choices": [], "usage": usage}
                self._stamp(tail, target)
                yield chatfmt.sse(tail)
            yield b"data: [DONE]\n\n"
            finished = True
        except HooshError as e:
            status = e.status
            log.warning("request %s: stream failed: %s", self.ctx.request_id, e.message)
            yield chatfmt.sse(e.to_dict())
        except Exception:  # noqa: BLE001 - the client still gets a clean error event
            status = 500
            log.exception("request %s: stream failed", self.ctx.request_id)
            yield chatfmt.sse(
                {
                    "error": {
                        "message": "Internal error while streaming.",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }  # fmt: skip
            )
        finally:
            source.close()
            self.release_flight()
            if not finished and status == 200:
                status = 499  # the client went away mid-stream
            if target is not None:
                if not isinstance(usage, dict) or "total_tokens" not in usage:
                    usage = chatfmt.normalize_usage(usage, self.prompt_bound, chars)
                if hold is not None and not hold.committed:
                    # Cut short (client gone, upstream died): bill what was streamed.
                    self.settle(hold, usage)
                self.gw.record_chat(self.ctx, target, usage, status=status, stream=True,
                                    cache=self.cache_state, key=self.key,
                                    duration_s=time.monotonic() - self.started,
                                    route=self.route)  # fmt: skip

    def _stamp(self, chunk: dict[str, Any], target: Target | None) -> None:
        chunk["id"] = self.id  # one id for every chunk of one completion
        chunk["object"] = "chat.completion.chunk"
        chunk["created"] = self.created
        chunk["model"] = chunk.get("model") or (target.model if target else self.req["model"])


def _prepend(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest
