"""What every chat backend (cloud provider or on-device engine) offers the router.

A backend turns one validated OpenAI chat request into OpenAI ``chat.completion.chunk``-shaped
dicts: content deltas, then a chunk with ``finish_reason``, then a usage chunk (``choices: []``).
The API layer owns ids, timestamps and framing, and builds non-streamed answers by joining the
chunks — so streaming and not streaming are one code path. A provider that can answer without
streaming more cheaply may also implement ``complete()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass
class CallContext:
    """Per-request facts a backend may need: for logs and counters, never for decisions."""

    request_id: str = "-"
    on_malformed_chunk: Callable[[str], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tried: Any = None  # the target tried last (the router sets it), for the access line

    def malformed(self, provider: str, raw: str) -> None:
        log.warning(
            "request %s: skipped a malformed stream chunk from %s: %.200r",
            self.request_id, provider, raw,
        )  # fmt: skip
        if self.on_malformed_chunk is not None:
            self.on_malformed_chunk(provider)


class Backend(Protocol):
    """What the router needs of anything it can try: a name for the books, and where it runs."""

    name: str
    is_local: bool


class ChatBackend:
    """Base class: a named source of chat completions, and what else it offers, declared.

    The pipeline reads these flags; it never sniffs for methods.
    """

    name: str = "?"
    is_local: bool = False
    can_transcribe: bool = False  # transcribe(model, data, filename, form, translate=)
    can_speak: bool = False  # speech(model, body) -> (chunks, content type)
    can_embed: bool = False  # embeddings(model, body) -> OpenAI's embeddings list document
    can_probe: bool = False  # probe(): a cheap call that says whether the upstream answers
    reports_queue_depth: bool = False  # queue_depth(model): requests running or waiting
    counts_tokens: bool = False  # count_tokens(model, messages): its own tokenizer, exactly

    def serves(self, model: str) -> bool:
        raise NotImplementedError

    def model_ids(self) -> list[str]:
        """Concrete model ids to list in /v1/models (globs are not listed)."""
        return []

    def listing(self) -> list[tuple[str, str]]:
        """(id, source) for /v1/models: ``local``, ``config`` or ``provider`` (its own list)."""
        return [(m, "local" if self.is_local else "config") for m in self.model_ids()]

    def stream(self, model: str, req: dict[str, Any], ctx: CallContext) -> Iterator[dict]:
        raise NotImplementedError

    def complete(self, model: str, req: dict[str, Any], ctx: CallContext) -> dict | None:
        """A whole chat.completion, or None to have the caller join ``stream()``."""
        return None

    def transcribe(self, model: str, data: bytes, filename: str, form: dict[str, Any], *,
                   translate: bool = False) -> tuple[bytes, str]:  # fmt: skip
        raise NotImplementedError

    def speech(self, model: str, body: dict[str, Any]) -> tuple[Iterator[bytes], str]:
        raise NotImplementedError

    def embeddings(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def probe(self) -> None:
        raise NotImplementedError

    def queue_depth(self, model: str) -> int:
        return 0

    def count_tokens(self, model: str, messages: list[dict[str, Any]],
                     req: dict[str, Any] | None = None) -> int:  # fmt: skip
        """Prompt tokens of ``messages`` (and of the tools ``req`` shows, where it has them)."""
        raise NotImplementedError

    def close(self) -> None:
        pass
