"""A chat call's whole life: may the caller use the model, cache and single flight, route, admit,
try the targets with fallback, settle or release, store, record.

A door hands ``serve_chat`` a validated chat request (the gateway's neutral chat form: OpenAI's
request fields) and frames what comes back: a ``ChatAnswer`` or a started ``ChunkStream``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent

from hoosh_edge.backends.providers.base import CallContext
from hoosh_edge.books.cache import chat_key
from hoosh_edge.books.keys import require_model
from hoosh_edge.books.ledger import Usage
from hoosh_edge.books.spend import Hold, chat_usage
from hoosh_edge.errors import DeadlineExceeded, HooshError
from hoosh_edge.estimate import (
    DEFAULT_MAX_TOKENS,
    Unbounded,
    prompt_text_tokens,
    prompt_tokens,
    text_tokens,
)
from hoosh_edge.formats import openai as chatfmt
from hoosh_edge.formats.openai_replay import ChatRecorder, replay_chunks
from hoosh_edge.pipeline import semantic
from hoosh_edge.pipeline.call import KEEPALIVE, CacheAsk, Caller, ChunkStream, Served
from hoosh_edge.pipeline.record import record_chat
from hoosh_edge.pipeline.router import Selected, Target
from hoosh_edge.pipeline.shaping import request_for, speaks_max_tokens_only
from hoosh_edge.threads import KEEPALIVE as PUMP_KEEPALIVE
from hoosh_edge.threads import Pump, pump, run_books

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger(__name__)

# Fields the gateway handles itself; never forwarded as they came.
_OWN_FIELDS = ("model", "stream", "stream_options")


@dataclass
class ChatAnswer:
    """A whole completion (choices, usage with ``cost_usd``, model) and who served it."""

    doc: dict[str, Any]
    served: Served
    prompt_bound: int


def serve_chat(gw: Gateway, req: dict[str, Any], caller: Caller, cache_ask: CacheAsk | None = None,
               *, route: str = "chat", ctx: CallContext | None = None) -> ChatAnswer | ChunkStream:  # fmt: skip
    """Serve a validated chat request: the cache, then the router; neutral answer or chunks."""
    cache_ask = cache_ask or CacheAsk()
    require_model(caller.key, req["model"])
    targets = gw.router.resolve(req["model"])
    ctx = ctx or CallContext(request_id=caller.request_id)
    ctx.on_malformed_chunk = gw.metrics.malformed_chunk
    call = ChatCall(gw, req, caller, ctx, route)
    cache = gw.cache
    if not cache.policy.enabled or not cache.policy.chat_cacheable(req):
        return call.run(targets)
    primary = targets[0]
    call.cache_key = chat_key(primary.provider, primary.model, call.base)
    call.cache_store = cache_ask.store
    flight = cache.inflight(call.cache_key).acquire()  # identical requests wait, then hit
    try:
        doc = run_books(cache.get_chat, call.cache_key) if cache_ask.lookup else None
        if doc is not None:
            gw.metrics.inc("hoosh_cache_total", {"result": "hit"}, help="Response cache lookups")
            flight.release()
            return call.replay(doc)
        ask = call.semantic_ask = semantic.prepare(gw, req, call.base, primary)
        found = semantic.lookup(gw, ask) if ask is not None and cache_ask.lookup else None
        if found is not None:
            gw.metrics.inc("hoosh_cache_total", {"result": "semantic"},
                           help="Response cache lookups")  # fmt: skip
            flight.release()
            return call.replay(found[0], similarity=found[1])
        gw.metrics.inc("hoosh_cache_total", {"result": "miss" if cache_ask.lookup else "bypass"},
                       help="Response cache lookups")  # fmt: skip
        call.cache_state = "MISS" if cache_ask.lookup else "BYPASS"
        call.flight = flight
        return call.run(targets)
    except BaseException:
        flight.release()
        raise


class ChatCall:
    """One chat request on its way through the router, and what it used."""

    cache_key: str | None = None
    cache_store = False
    cache_state = "BYPASS"
    flight: Any = None
    semantic_ask: semantic.SemanticAsk | None = None  # [cache] semantic: kept beside the answer

    def __init__(self, gw: Gateway, req: dict[str, Any], caller: Caller, ctx: CallContext,
                 route: str) -> None:  # fmt: skip
        self.gw = gw
        self.req = req
        self.caller = caller
        self.ctx = ctx
        self.route = route
        self.base = {k: v for k, v in req.items() if k not in _OWN_FIELDS}
        # For counts shown to clients when a backend sends none; money uses each target's bound.
        self.prompt_bound = prompt_text_tokens(req)
        self.caps: dict[str, int] = {}  # completion limits the gateway chose, per target
        self.started = time.monotonic()
        self.key = caller.key_name
        self.primary: Target | None = None

    def run(self, targets: list[Target]) -> ChatAnswer | ChunkStream:
        """Serve from the targets; a stream releases the cache flight when it ends."""
        self.primary = targets[0]
        if self.req.get("stream"):
            return self.stream(targets)
        try:
            return self.complete(targets)
        finally:
            self.release_flight()

    def release_flight(self) -> None:
        if self.flight is not None:
            self.flight.release()
            self.flight = None

    def maybe_store(self, target: Target, doc: dict[str, Any] | None) -> None:
        """Keep a finished answer of the primary target (a fallback's answer is not its)."""
        if doc is None or not self.cache_key or not self.cache_store or target != self.primary:
            return
        stored = {**doc, "usage": {k: v for k, v in (doc.get("usage") or {}).items()
                                   if k != "cost_usd"}}  # fmt: skip
        kept = run_books(self.gw.cache.put_chat, self.cache_key, stored,
                         provider=target.provider, model=target.model)  # fmt: skip
        if kept and self.semantic_ask is not None:
            semantic.remember(self.gw, self.semantic_ask, self.cache_key)

    def replay(
        self, doc: dict[str, Any], similarity: float | None = None
    ) -> ChatAnswer | ChunkStream:
        """Answer from the cache: no upstream call, no budget touched, cost 0.

        ``similarity``: a semantic hit (a reworded question), marked ``SEMANTIC``.
        """
        usage = doc.get("usage") or {}
        usage["cost_usd"] = 0
        doc["usage"] = usage
        model = doc.get("model") or self.req["model"]
        state = "HIT" if similarity is None else "SEMANTIC"
        served = Served(provider="cache", model=model, cache=state, cost_usd="0",
                        similarity=similarity)  # fmt: skip
        served.fields = {"provider": "cache", "model": model, "cache": state,
                         "prompt_tokens": usage.get("prompt_tokens"),
                         "completion_tokens": usage.get("completion_tokens"), "cost_usd": 0}  # fmt: skip
        if similarity is not None:
            served.fields["similarity"] = round(similarity, 4)
        if not self.req.get("stream"):
            doc["model"] = model
            return ChatAnswer(doc, served, self.prompt_bound)

        def items(_stream: ChunkStream) -> Iterator[Any]:
            for chunk in replay_chunks(doc):
                if chunk.get("choices"):
                    chunk["model"] = model
                    yield chunk

        stream = ChunkStream(served, self.prompt_bound, items)
        stream.usage = usage  # known before the first chunk: the stored answer's
        return stream

    def request_for(self, target: Target) -> dict[str, Any]:
        """The request as this target should get it (token limit clamped to the provider's)."""
        req = request_for(self.gw.config, target, self.base)
        cap = self.caps.get(target.label)
        if cap is not None:
            # The budget's limit on what this call may write: what was reserved is what is sent
            # (never above the provider's own limit: that was the ceiling it was cut from).
            req.pop("max_tokens", None)
            req.pop("max_completion_tokens", None)
            only = speaks_max_tokens_only(self.gw.config, target)
            req["max_tokens" if only else "max_completion_tokens"] = cap
        return req

    def admit(self, target: Target) -> Hold:
        """Reserve this target's upper bound in the ledger (or raise BudgetExceeded)."""
        acct = self.gw.accountant
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
        if hold is None:
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

    def served(self, target: Target | None, hold: Hold | None) -> Served:
        """Who serves, the budget left after this call's hold, and the gateway's token cap."""
        served = Served(provider=target.provider if target else None,
                        model=target.model if target else None, cache=self.cache_state)  # fmt: skip
        if hold is not None:
            served.max_tokens = hold.max_tokens
        if target is not None:
            tightest = self.gw.accountant.remaining(
                key=self.key, provider=target.provider, model=target.model,
                is_local=target.backend.is_local)  # fmt: skip
            if tightest is not None:
                rule, left = tightest
                served.remaining = f"{rule.format_amount(left)} {rule.unit} ({rule.name})"
        return served

    def complete(self, targets: list[Target]) -> ChatAnswer:
        def run(target: Target) -> dict[str, Any]:
            body = self.request_for(target)
            doc = target.backend.complete(target.model, body, self.ctx)
            if doc is None:
                doc = chatfmt.join_chunks(target.backend.stream(target.model, body, self.ctx))
            return doc

        limit = self.gw.config.server.request_timeout_s
        with gevent.Timeout(limit, DeadlineExceeded(
                f"The request did not finish within {limit:g} s (server.request_timeout_s).")):  # fmt: skip
            target, doc, _, hold = self.gw.router.attempt(targets, self.ctx, run, self.admit)
        doc["model"] = doc.get("model") or target.model
        doc["usage"] = chatfmt.normalize_usage(
            doc.get("usage"), self.prompt_bound, chatfmt.completion_text(doc)
        )
        self.settle(hold, doc["usage"])
        self.maybe_store(target, doc)
        served = self.served(target, hold)
        served.cost_usd = hold.cost_usd_text
        served.fields = record_chat(self.gw.metrics, target, doc["usage"], cache=self.cache_state)
        return ChatAnswer(doc, served, self.prompt_bound)

    def stream(self, targets: list[Target]) -> ChunkStream:
        source = pump(
            self.gw.router.stream(targets, self.request_for, self.ctx, self.admit),
            maxsize=16,
            heartbeat_s=self.gw.config.server.sse_keepalive_s,
        )
        try:
            first = next(source)  # the router's choice, or a failure while headers can still say so
        except StopIteration:
            first = PUMP_KEEPALIVE
        except BaseException:
            source.close()
            self.release_flight()
            raise
        selected = first if isinstance(first, Selected) else None
        target = selected.target if selected else None
        served = self.served(target, selected.hold if selected else None)
        return ChunkStream(served, self.prompt_bound,
                           lambda stream: self._items(stream, source, first))  # fmt: skip

    def _items(self, stream: ChunkStream, source: Pump, first: Any) -> Iterator[Any]:
        """The chunks of the chosen target; settles, stores and records when it ends."""
        usage = None
        chars = 0  # streamed UTF-8 bytes: a bound of the completion if no usage arrives
        finished = False
        target, hold = (first.target, first.hold) if isinstance(first, Selected) else (None, None)
        recorder = ChatRecorder() if self.cache_key and self.cache_store else None
        items = _prepend(first, source)
        try:
            for item in items:
                if item is PUMP_KEEPALIVE:
                    yield KEEPALIVE
                    continue
                if isinstance(item, Selected):
                    target, hold = item.target, item.hold
                    continue
                if chatfmt.text_chunk(item, head=True):
                    # Tokens made while the last frame was written go out as one frame.
                    more = source.take(chatfmt.text_chunk)
                    if more:
                        item = chatfmt.merge_text(item, more)
                if item.get("usage"):
                    usage = item["usage"]
                    if not item.get("choices"):
                        continue  # given once, normalized, at the end
                    item = {k: v for k, v in item.items() if k != "usage"}
                item["model"] = item.get("model") or target.model
                chars += text_tokens(chatfmt.chunk_text(item))
                if recorder is not None:
                    recorder.add(item)
                yield item
            usage = chatfmt.normalize_usage(usage, self.prompt_bound, chars)
            self.settle(hold, usage)
            if recorder is not None and target is not None:
                doc = recorder.completion()
                if doc is not None:
                    doc["usage"] = usage
                self.maybe_store(target, doc)
            stream.usage = usage
            finished = True
        except HooshError as e:
            stream.status, stream.error = e.status, e
            log.warning("request %s: stream failed: %s", self.ctx.request_id, e.message)
        except Exception:  # noqa: BLE001 - the client still gets a clean error event
            stream.error = HooshError("Internal error while streaming.")
            stream.status = stream.error.status
            log.exception("request %s: stream failed", self.ctx.request_id)
        finally:
            items.close()  # closed here, not by the garbage collector in whatever greenlet runs
            source.close()
            self.release_flight()
            if not finished and stream.status == 200:
                stream.status = 499  # the client went away mid-stream
            if target is not None:
                if not isinstance(usage, dict) or "total_tokens" not in usage:
                    usage = chatfmt.normalize_usage(usage, self.prompt_bound, chars)
                if hold is not None and not hold.committed:
                    # Cut short (client gone, upstream died): bill what was streamed.
                    self.settle(hold, usage)
                stream.usage = stream.usage or usage
                fields = record_chat(self.gw.metrics, target, usage, cache=self.cache_state)
                fields["stream"] = True
                stream.served.fields = fields


def _prepend(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest
