"""The semantic cache's part of a chat call: which requests it covers, their scope and vector.

``prepare`` says whether ``[cache] semantic`` covers a request (its model is listed, no tools
unless allowed, cacheable by the exact cache's rules) and if so embeds the last user message on
the box and hashes everything else; ``lookup`` finds a stored answer for it; ``remember`` keeps
the vector beside a freshly stored answer. A failure of the embedding model never fails the chat
call: it is logged and the call goes on without the semantic cache.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hoosh_edge.books.cache import chat_key
from hoosh_edge.errors import HooshError
from hoosh_edge.pipeline.router import Target
from hoosh_edge.threads import run_books

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

log = logging.getLogger(__name__)

# How long the embedding of one message may take before the call goes on without the cache.
EMBED_WAIT_S = 10.0


@dataclass(frozen=True)
class SemanticAsk:
    """A covered request: its scope (the exact hash of the rest) and its last user message's vector."""

    scope: str
    vector: np.ndarray
    model: str  # the embedding model


def _last_user_text(messages: list[Any]) -> tuple[int, str] | None:
    """Index and text of the last user message, if it is text only."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if not isinstance(m, dict) or m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            return (i, content) if content.strip() else None
        if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            text = "\n".join(p["text"] for p in content)
            return (i, text) if text.strip() else None
        return None  # images or audio: no text vector stands for them
    return None


def embedding_model(gw: Gateway) -> str | None:
    """The on-device model the semantic cache embeds with, or None if there is none."""
    sem = gw.cache.policy.semantic
    if sem is None:
        return None
    if sem.embedding_model is not None:
        return sem.embedding_model if gw.embeddings.serves(sem.embedding_model) else None
    return next(iter(gw.embeddings.models), None)


def prepare(gw: Gateway, req: dict[str, Any], base: dict[str, Any],
            primary: Target) -> SemanticAsk | None:  # fmt: skip
    """The scope and vector of a request the semantic cache covers, else None."""
    policy = gw.cache.policy
    sem = policy.semantic
    if sem is None or not sem.covers(req) or not policy.chat_cacheable(req):
        return None
    model = embedding_model(gw)
    if model is None:
        return None
    found = _last_user_text(base.get("messages") or [])
    if found is None:
        return None
    index, text = found
    rest = copy.deepcopy(base)
    rest["messages"][index] = {**rest["messages"][index], "content": None}
    exact = chat_key(primary.provider, primary.model, rest)
    scope = hashlib.sha256(f"{exact}\0{model}".encode()).hexdigest()
    try:
        vectors, _ = gw.embeddings.embed(model, [text], truncate=True, wait_s=EMBED_WAIT_S)
    except HooshError as e:
        log.warning("semantic cache: embedding with %s failed (%s); going on without it",
                    model, e.message)  # fmt: skip
        return None
    return SemanticAsk(scope, vectors[0], model)


def lookup(gw: Gateway, ask: SemanticAsk) -> tuple[dict[str, Any], float] | None:
    """A stored answer for a reworded question in the same scope, and how alike the two are."""
    match = run_books(gw.semantic.best, ask.scope, ask.vector)
    if match is None:
        return None
    doc = run_books(gw.cache.get_chat, match.answer_key)
    if doc is None:
        run_books(gw.semantic.forget, match)  # the answer expired or was evicted
        return None
    run_books(gw.semantic.used, match)
    return doc, match.similarity


def remember(gw: Gateway, ask: SemanticAsk, answer_key: str) -> None:
    """Keep the vector of an answer just stored under ``answer_key``."""
    run_books(gw.semantic.put, ask.scope, ask.vector, answer_key, ask.model)
