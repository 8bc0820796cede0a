"""An embeddings call's whole life: may the caller use the model, the cache, route, admit, try the
targets with fallback, settle, store, record.

On-device encoders first (``[local.embeddings.models]`` or found in ``models/``); a provider that
declares ``can_embed`` and serves the model (``text-embedding-3-small`` ...) is the fallback,
under the same budget rules as chat: its reservation is one token per UTF-8 byte of the inputs
(no tokenizer makes more), and the usage it reports is what is booked. Doors (OpenAI's
``/v1/embeddings``, Ollama's ``/api/embed``) parse the request and frame the ``Embedded`` answer.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
import numpy as np

from hoosh_edge.books.cache import embedding_key
from hoosh_edge.books.keys import require_model
from hoosh_edge.books.ledger import Usage
from hoosh_edge.errors import DeadlineExceeded, InvalidRequest, ModelNotFound, UpstreamError
from hoosh_edge.limits import Deadline
from hoosh_edge.pipeline.call import CacheAsk, CallContext, Caller, Served
from hoosh_edge.pipeline.router import Target
from hoosh_edge.threads import run_books

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

Inputs = list[str] | list[list[int]]


@dataclass
class EmbedAsk:
    """An embeddings request, parsed by its door: texts, or token arrays of the model's own ids."""

    model: str
    inputs: Inputs
    dimensions: int | None = None
    truncate: bool | None = None  # None: local.embeddings.truncate
    user: str | None = None


@dataclass
class Embedded:
    """The vectors (one row per input, float32), the tokens read, and who served them."""

    vectors: np.ndarray
    prompt_tokens: int
    model: str
    served: Served
    load_s: float = 0.0  # how long loading the model took within this call (Ollama reports it)


def targets_for(gw: Gateway, model: str) -> list[Target]:
    """On-device first, then providers that can embed; aliases and ``provider:model`` as in chat."""
    local, router = gw.embeddings, gw.router
    cloud = {b.name: b for b in router.backends if not b.is_local and b.can_embed}
    specs: list[str] = []
    if model in router.aliases:
        specs = list(router.aliases[model])  # in the order the operator wrote
    elif model.partition(":")[0] in {"local", *cloud}:
        specs = [model]
    if specs:
        targets = []
        for spec in specs:
            pname, _, mname = spec.partition(":")
            if pname == "local" and local.serves(mname):
                targets.append(Target(local, mname))
            elif pname in cloud:
                targets.append(Target(cloud[pname], mname))
    else:
        targets = [Target(local, model)] if local.serves(model) else []
        targets += [Target(b, model) for b in cloud.values() if b.serves(model)]
    if not targets:
        known = ", ".join(local.model_ids()) or "none"
        raise ModelNotFound(f"No embedding model or provider serves '{model}' here. On-device "
                            f"embedding models: {known}.", param="model")  # fmt: skip
    return targets


def _bound(inputs: Inputs, local: bool) -> int:
    """Tokens the inputs can take at most: one a UTF-8 byte, plus the model's markers."""
    extra = 2 if local else 1
    return sum((len(i.encode()) if isinstance(i, str) else len(i)) + extra for i in inputs)


def _past(deadline: Deadline) -> DeadlineExceeded:
    return DeadlineExceeded(f"The request did not finish within {deadline.seconds:g} s "
                            "(server.request_timeout_s).")  # fmt: skip


def _pack(vectors: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode()


def _unpack(text: str, rows: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(rows, -1)


def _from_provider(doc: dict[str, Any], n: int, name: str) -> np.ndarray:
    """The provider's vectors in input order (floats or base64), checked for count, width, values."""
    try:
        rows: list[Any] = [None] * n
        for pos, d in enumerate(doc["data"]):
            idx = d.get("index", pos)
            if not isinstance(idx, int) or not 0 <= idx < n or rows[idx] is not None:
                raise UpstreamError(f"{name} answered /embeddings with a bad index {idx!r}")
            emb = d["embedding"]
            rows[idx] = (_unpack(emb, 1)[0] if isinstance(emb, str)
                         else np.asarray(emb, dtype=np.float32))  # fmt: skip
        if any(r is None for r in rows) or len({r.shape for r in rows}) != 1 or rows[0].ndim != 1:
            raise UpstreamError(f"{name} answered /embeddings with {len(doc['data'])} vectors of "
                                f"mixed or missing sizes for {n} inputs")  # fmt: skip
        out = np.stack(rows)
    except (ValueError, TypeError) as e:  # strings, objects or bad base64 where numbers belong
        raise UpstreamError(f"{name} answered /embeddings with vectors that are not numbers "
                            f"({type(e).__name__})") from None  # fmt: skip
    if not np.isfinite(out).all():
        raise UpstreamError(f"{name} answered /embeddings with NaN or infinite values")
    return out


def embed(gw: Gateway, ask: EmbedAsk, caller: Caller, ctx: CallContext, cache_ask: CacheAsk,
          deadline: Deadline) -> Embedded:  # fmt: skip
    """The cache, then the targets in order; vectors and usage, booked."""
    require_model(caller.key, ask.model)
    if not ask.inputs:
        raise InvalidRequest("'input' must not be empty.", param="input")
    targets = targets_for(gw, ask.model)
    started = time.monotonic()
    cache, key = gw.cache, None
    params = {"dimensions": ask.dimensions, "truncate": ask.truncate}
    if cache.policy.embedding_cacheable():
        first = targets[0]
        key = embedding_key(first.provider, first.model, list(ask.inputs), params)
        entry = run_books(cache.get, key) if cache_ask.lookup else None
        if entry is not None and entry.meta.get("rows") == len(ask.inputs):
            served = Served(provider="cache", model=entry.meta.get("model"), cache="HIT",
                            cost_usd="0")  # fmt: skip
            served.fields = {"provider": "cache", "model": served.model, "cache": "HIT",
                             "inputs": len(ask.inputs)}  # fmt: skip
            return Embedded(_unpack(entry.body.decode(), len(ask.inputs)),
                            int(entry.meta.get("tokens") or 0), served.model or ask.model, served)  # fmt: skip
    load_s = 0.0

    def call(target: Target) -> tuple[np.ndarray, int | None]:
        nonlocal load_s
        if target.backend.is_local:
            slot = gw.embeddings.pool.slot(f"embed:{target.model}")
            was_loaded = slot.loaded
            t0 = time.monotonic()
            dim = gw.embeddings.dimensions(target.model)
            if not was_loaded:
                load_s = time.monotonic() - t0
            if ask.dimensions is not None and ask.dimensions != dim:
                raise InvalidRequest(
                    f"The model '{target.model}' makes {dim}-dimension vectors and was not "
                    "trained to be cut shorter; leave 'dimensions' out.", param="dimensions")  # fmt: skip
            vectors, counts = gw.embeddings.embed(target.model, ask.inputs, truncate=ask.truncate,
                                                  wait_s=deadline.remaining())  # fmt: skip
            return vectors, sum(counts)
        body: dict[str, Any] = {"input": ask.inputs, "encoding_format": "float"}
        if ask.dimensions is not None:
            body["dimensions"] = ask.dimensions
        if ask.user is not None:
            body["user"] = ask.user
        doc = target.backend.embeddings(target.model, body)
        tokens = (doc.get("usage") or {}).get("prompt_tokens")
        tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None
        return _from_provider(doc, len(ask.inputs), target.provider), tokens

    def admit(target: Target) -> Any:
        bound = _bound(ask.inputs, target.backend.is_local)
        return gw.accountant.admit(provider=target.provider, model=target.model,
                                   is_local=target.backend.is_local,
                                   estimate=Usage(prompt_tokens=bound), key=caller.key_name,
                                   request_id=caller.request_id)  # fmt: skip

    try:
        with gevent.Timeout(max(0.001, deadline.remaining()), _past(deadline)):
            target, (vectors, tokens), _, hold = gw.router.attempt(targets, ctx, call, admit)
    except DeadlineExceeded as exc:
        raise _past(deadline) from exc
    guessed = tokens is None
    tokens = _bound(ask.inputs, False) if tokens is None else tokens
    served = Served(provider=target.provider, model=target.model,
                    cache="MISS" if key and cache_ask.lookup else "BYPASS")  # fmt: skip
    if hold is not None:
        gw.accountant.commit(hold, Usage(prompt_tokens=tokens), guessed=guessed)
        served.cost_usd = hold.cost_usd_text
    gw.metrics.inc("hoosh_embedding_inputs_total", {"provider": target.provider}, len(ask.inputs),
                   help="Texts embedded")  # fmt: skip
    served.fields = {"provider": target.provider, "model": target.model,
                     "inputs": len(ask.inputs), "prompt_tokens": tokens,
                     "duration_ms": round((time.monotonic() - started) * 1000, 2)}  # fmt: skip
    if key and cache_ask.store and target is targets[0]:
        meta = {"provider": target.provider, "model": target.model, "rows": len(ask.inputs),
                "tokens": tokens, "content_type": "application/octet-stream"}  # fmt: skip
        run_books(cache.put, key, "embedding", _pack(vectors).encode(), meta)
    return Embedded(vectors, tokens, target.model, served, load_s)


def encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    """One vector as OpenAI sends it: a float list, or base64 of little-endian float32."""
    if fmt == "base64":
        return _pack(vector[None, :])
    return [float(x) for x in vector.astype(np.float32)]
