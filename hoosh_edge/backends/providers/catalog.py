"""What models a provider really has, asked of the provider itself, for ``GET /v1/models``.

A provider configured with globs (``models = ["gpt-4.1*"]``) serves names no config lists. Its own
``GET {base_url}/models`` says which exist. The answer is kept for ``ttl_s``; asking happens in a
background greenlet started by a model listing, never at start-up. Only the very first listing
waits for it, and at most ``first_wait_s`` (clients such as Open WebUI list once and remember);
every later listing answers at once with what is known and refreshes behind it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent

from hoosh_edge.config import ProviderConfig

log = logging.getLogger(__name__)


class ModelCatalog:
    """The cached model list of one provider, refreshed in the background."""

    def __init__(self, name: str, fetch: Callable[[], list[str]], *, ttl_s: float = 600.0,
                 retry_s: float = 60.0, first_wait_s: float = 1.0) -> None:  # fmt: skip
        self.name = name
        self._fetch = fetch
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.first_wait_s = first_wait_s
        self._asked = False
        self._ids: list[str] | None = None
        self._fetched_at = -1e18
        self._failed_at = -1e18
        self._running: gevent.Greenlet | None = None

    def ids(self) -> list[str] | None:
        """The ids last listed by the provider (None if never), asking again when stale."""
        now = time.monotonic()
        stale = now - self._fetched_at > self.ttl_s and now - self._failed_at > self.retry_s
        if stale and self._running is None:
            self._running = gevent.spawn(self._refresh)
        if not self._asked:
            self._asked = True
            self.wait(self.first_wait_s)
        return self._ids

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a refresh under way."""
        running = self._running
        if running is not None:
            running.join(timeout)

    def _refresh(self) -> None:
        try:
            ids = self._fetch()
        except Exception as e:  # noqa: BLE001 - a failed listing keeps the last good one
            self._failed_at = time.monotonic()
            log.info("provider %s: could not list its models (%s)", self.name, e)
        else:
            self._ids = sorted({i for i in ids if isinstance(i, str) and i})
            self._fetched_at = time.monotonic()
        finally:
            self._running = None


def listed_ids(doc: object) -> list[str]:
    """The ``data[].id`` of an OpenAI- or Anthropic-shaped model list."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ValueError("the model list has no 'data' array")
    return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


class ListsItsModels:
    """``serves``, ``model_ids`` and ``listing`` for a provider whose ``catalog`` is a
    ProviderModels and whose ``cfg`` is its ProviderConfig."""

    catalog: ProviderModels
    cfg: ProviderConfig

    def serves(self, model: str) -> bool:
        return self.cfg.serves(model)

    def model_ids(self) -> list[str]:
        return self.catalog.named()

    def listing(self) -> list[tuple[str, str]]:
        return self.catalog.listing()


def is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


class ProviderModels:
    """A provider's models for listings: the names its config gives, and what it says it has."""

    def __init__(self, cfg: object, fetch: Callable[[], list[str]]) -> None:
        self.cfg = cfg
        self.catalog = ModelCatalog(cfg.name, fetch)  # type: ignore[attr-defined]

    def named(self) -> list[str]:
        """The literal (non-glob) model names of the config."""
        return [m for m in self.cfg.models if not is_glob(m)]  # type: ignore[attr-defined]

    def listing(self) -> list[tuple[str, str]]:
        """(id, source) to list: ``config`` for named ids, ``provider`` for ids it listed itself.

        Only a provider with globs is asked (the config names every model of the others), and
        only when it is enabled; what it lists is filtered by the globs it may serve.
        """
        cfg = self.cfg
        out = [(m, "config") for m in self.named()]
        if cfg.enabled and any(is_glob(m) for m in cfg.models):  # type: ignore[attr-defined]
            seen = {m for m, _ in out}
            for mid in self.catalog.ids() or ():
                if mid not in seen and cfg.serves(mid):  # type: ignore[attr-defined]
                    out.append((mid, "provider"))
        return out
