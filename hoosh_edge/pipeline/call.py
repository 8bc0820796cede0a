"""The neutral shapes a door hands the pipeline and gets back: no Flask, no wire format."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hoosh_edge.backends.providers.base import CallContext
from hoosh_edge.errors import HooshError


@dataclass(frozen=True)
class Caller:
    """Who asks: the key the door authenticated (None when keys are off) and the request id."""

    request_id: str
    key: Any = None  # books.keys.KeyRecord

    @property
    def key_name(self) -> str | None:
        return self.key.name if self.key is not None else None


@dataclass(frozen=True)
class CacheAsk:
    """What the caller allows of the response cache (a door reads it from its own headers)."""

    lookup: bool = True
    store: bool = True


@dataclass
class Served:
    """Who served a call and what it cost: the door turns this into its response headers."""

    provider: str | None = None  # "cache" for an answer replayed from the cache
    model: str | None = None
    cache: str = "BYPASS"  # HIT, SEMANTIC, MISS or BYPASS
    similarity: float | None = None  # a SEMANTIC hit: cosine of the question and the stored one
    cost_usd: str | None = None  # exact, as text; None when no budget gate ran
    remaining: str | None = None  # the tightest budget rule in scope and what it has left
    max_tokens: int | None = None  # the completion limit the gateway set for the budget
    sample_rate: int | None = None  # speech: the PCM rate of the audio
    fields: dict[str, Any] = field(default_factory=dict)  # for the access line


class Keepalive:
    """Yielded by a stream while nothing else is ready: the door sends its own keep-alive."""

    def __repr__(self) -> str:
        return "KEEPALIVE"


KEEPALIVE = Keepalive()


class ChunkStream:
    """A started stream of neutral chunks; the door iterates it and must ``close()`` it.

    After the iteration ends, ``usage`` holds the settled usage (with ``cost_usd``) and
    ``error`` the failure that ended it early, if one did. ``status`` is what the access line
    says: 200, the error's status, or 499 when the caller went away.
    """

    def __init__(self, served: Served, prompt_bound: int,
                 items: Callable[[ChunkStream], Iterator[Any]]) -> None:  # fmt: skip
        """``items(stream)`` makes the chunks; it sets ``usage``, ``error`` and ``status``."""
        self.served = served
        self.prompt_bound = prompt_bound
        self.usage: dict[str, Any] | None = None
        self.error: HooshError | None = None
        self.status = 200
        self._items = items(self)

    def __iter__(self) -> Iterator[Any]:
        return self._items

    def close(self) -> None:
        self._items.close()  # type: ignore[attr-defined]


__all__ = ["KEEPALIVE", "CacheAsk", "CallContext", "Caller", "ChunkStream", "Keepalive", "Served"]
