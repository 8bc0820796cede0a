"""The Gateway: the typed object graph of one running box, built completely by ``build_gateway``.

Nothing is attached later. ``create_app`` wires Flask to it; the Wyoming server (and any other
door) takes the same object.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hoosh_edge.backends.engines.pool import ModelPool
from hoosh_edge.backends.local import LocalChat, LocalSpeech, configured_models
from hoosh_edge.backends.local_embed import LocalEmbeddings
from hoosh_edge.backends.providers.base import ChatBackend
from hoosh_edge.books.cache import CachePolicy, ResponseCache
from hoosh_edge.books.db import Database
from hoosh_edge.books.keys import Authenticator, KeyStore, StaticKeys
from hoosh_edge.books.ledger import SpendLedger
from hoosh_edge.books.pricing import PriceTable
from hoosh_edge.books.prompt_states import PromptStateStore
from hoosh_edge.books.responses import ResponseStore
from hoosh_edge.books.semantic_cache import SemanticCache
from hoosh_edge.books.spend import Accountant
from hoosh_edge.config import Config
from hoosh_edge.errors import HooshError, ModelNotFound, StorageUnavailable
from hoosh_edge.exposure import Exposure
from hoosh_edge.limits import RateLimiter
from hoosh_edge.metrics import Metrics
from hoosh_edge.pipeline.gauges import gateway_gauges
from hoosh_edge.pipeline.router import Router

log = logging.getLogger("hoosh_edge")


def build_providers(config: Config) -> list[ChatBackend]:
    """One backend per configured cloud or LAN provider."""
    from hoosh_edge.backends.providers.openai_compat import OpenAICompatProvider

    out: list[ChatBackend] = []
    for pcfg in config.providers:
        if pcfg.type == "anthropic":
            from hoosh_edge.backends.providers.anthropic import AnthropicProvider

            out.append(AnthropicProvider(pcfg))
        else:
            out.append(OpenAICompatProvider(pcfg))
    return out


class Gateway:
    """Everything a call may need: config, router, engines, books, metrics."""

    def __init__(self, config: Config, *, pool: ModelPool, speech: LocalSpeech,
                 local_backends: list[ChatBackend], db: Database, ledger: SpendLedger,
                 accountant: Accountant, cache: ResponseCache, keys: KeyStore,
                 prompt_states: PromptStateStore | None = None,
                 embeddings: LocalEmbeddings | None = None) -> None:  # fmt: skip
        self.config = config
        self.started_at = time.time()
        self.pool = pool
        self.speech = speech
        self.local_backends = local_backends
        self.db = db
        self.ledger = ledger
        self.accountant = accountant
        self.cache = cache
        self.keys = keys
        self.prompt_states = prompt_states
        self.embeddings = embeddings or LocalEmbeddings(pool, {}, config.embeddings)
        self.semantic = SemanticCache(db, lambda: self.cache.policy)
        self.lease: Any = None  # books.fleet.Lease when the books are shared
        self.responses = ResponseStore(db, max_stored=config.server.responses_max_stored,
                                       ttl_s=config.server.responses_ttl_s,
                                       max_bytes=config.server.responses_max_mb << 20)  # fmt: skip
        self.metrics = Metrics()
        self.accountant.metrics = self.metrics
        self.auth = Authenticator(keys, StaticKeys(config.server.api_keys, config.server.admin_key))
        self.limiter = RateLimiter()
        self.exposure = Exposure()
        self.inflight = 0  # requests whose response has not finished (a stream counts to its end)
        self.router = Router(config, self.local_backends + build_providers(config))
        self.router.release = accountant.release
        self.metrics.gauge_callback(lambda: gateway_gauges(self))

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
                    if health.opened_at is None or not backend.can_probe:
                        continue
                    started = time.monotonic()
                    try:
                        backend.probe()
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
        from hoosh_edge.config import ConfigError, load_config
        from hoosh_edge.exposure import StartupError, check_exposure, check_wyoming_exposure

        old = self.config
        try:
            new = load_config(old.source, host=old.server.host, port=old.server.port)
            prices = PriceTable(dict(new.pricing))
            policy = CachePolicy.from_config(new.cache)
            router = Router(new, self.local_backends + build_providers(new))
            check_exposure(new, keys_exist=self.keys.has_active_keys())
            check_wyoming_exposure(new)
            self.ledger.seed_rules([dict(b) for b in new.budgets])
        except (ConfigError, HooshError, ValueError, StartupError) as e:
            message = e.message if isinstance(e, HooshError) else str(e)
            log.error("config reload refused, keeping the running config: %s", message)
            return {"reloaded": False, "error": message}
        for name, health in self.router.health.items():
            if name in router.by_name:
                health.cooldown_s = new.routing.breaker_cooldown_s
                router.health[name] = health  # a provider keeps its record across reloads
        self.accountant = Accountant(self.ledger, prices, self.accountant.pending)
        self.accountant.metrics = self.metrics
        router.release = self.accountant.release
        self.router, self.config = router, new
        self.cache.policy = policy
        self.responses.max_stored = new.server.responses_max_stored
        self.responses.ttl_s = new.server.responses_ttl_s
        self.responses.max_bytes = new.server.responses_max_mb << 20
        self.auth = Authenticator(self.keys, StaticKeys(new.server.api_keys, new.server.admin_key))
        for w in new.warnings:
            log.warning("config: %s", w)
        restart = [
            k for k in ("llm", "stt", "tts", "embeddings") if getattr(new, k) != getattr(old, k)
        ]
        later = [f"local.{k}" for k in restart]
        cache_shared = self.cache.db is not self.db
        if new.database != old.database or policy.shared != cache_shared:
            later.append("database")  # where the books and the cache live is chosen at start-up
        log.info("config reloaded from %s", new.source or "the environment")
        return {"reloaded": True, "source": new.source, "providers": [p.name for p in new.providers],
                "restart_needed_for": later}  # fmt: skip

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
        if self.speech.stt:
            lines.append(f"local speech-to-text: {', '.join(self.speech.stt)}")
        if self.speech.tts:
            lines.append(f"local text-to-speech voices: {', '.join(self.speech.tts)} "
                         f"(default {self.speech.default_voice})")  # fmt: skip
        if self.embeddings.models:
            lines.append(f"local embeddings: {', '.join(self.embeddings.models)}")
        if not lines:
            lines.append("no models yet: pull one with 'hoosh-edge models pull smollm2' "
                         "or set OPENAI_API_KEY / ANTHROPIC_API_KEY")  # fmt: skip
        return lines

    def local_status(self) -> list[dict[str, Any]]:
        """On-device models and their state, for /v1/health and the status page."""
        return self.pool.status()

    def model_ids(self) -> list[tuple[str, str]]:
        """(id, owner) of every model: chat targets, then on-device speech models."""
        ids = self.router.model_ids()
        seen = {mid for mid, _ in ids}
        extra = self.speech.model_ids() + self.embeddings.model_ids()
        return ids + [(mid, "local") for mid in extra if mid not in seen]

    def model_listing(self) -> list[tuple[str, str, str]]:
        """(id, owner, source) of every model to list: chat targets, then on-device speech."""
        out = self.router.listing()
        seen = {mid for mid, _, _ in out}
        extra = self.speech.model_ids() + self.embeddings.model_ids()
        return out + [(m, "local", "local") for m in extra if m not in seen]

    def storage_report(self) -> dict[str, Any]:
        """The data folder's state and the usage waiting for it, for the health endpoints."""
        report = self.db.state.report()
        if self.ledger.db is not self.db:  # the shared books (PostgreSQL) fail on their own
            shared = self.ledger.db.state.report()
            report["books"] = shared
            if shared["state"] != "ok":
                report["state"], report["error"] = shared["state"], shared["error"]
        report.update(self.accountant.pending.report())
        return report

    def close(self) -> None:
        self.router.close()
        self.pool.stop()
        try:
            if len(self.accountant.pending):
                self.accountant.pending.flush(self.ledger)
            self.cache.flush()
        except StorageUnavailable:
            pass  # StorageState said why when it happened
        if len(self.accountant.pending):
            log.warning("storage: %d usage record(s) could not be written before stopping; "
                        "they are lost", len(self.accountant.pending))  # fmt: skip
        self.keys.flush_last_used()
        if self.lease is not None:
            self.lease.stop()
        for shared in {id(d): d for d in (self.ledger.db, self.cache.db)}.values():
            if shared is not self.db:
                shared.close()
        self.db.close()
        if self.prompt_states is not None:
            self.prompt_states.close()  # the writes still queued reach the disk


def prompt_state_store(config: Config) -> PromptStateStore | None:
    """The saved prompt states of the on-device chat models, as ``[local.llm]`` bounds them."""
    c = config.llm
    if not (c.prompt_cache_mb or c.prompt_cache_disk_mb):
        return None
    folder: Path | None = Path(config.server.data_dir) / "prompt-states"
    try:
        return PromptStateStore(folder, ram_bytes=c.prompt_cache_mb << 20,
                                disk_bytes=c.prompt_cache_disk_mb << 20)  # fmt: skip
    except OSError as e:
        log.warning("prompt cache: cannot use %s (%s); saved prompt states stay in RAM",
                    folder, e)  # fmt: skip
        return PromptStateStore(None, ram_bytes=c.prompt_cache_mb << 20)


def _shared_books(config: Config) -> Any:
    """The fleet's PostgreSQL books when ``[database]`` names them, else None (SQLite)."""
    cfg = config.database
    if cfg is None or not cfg.url:
        return None
    from hoosh_edge.books.fleet import open_shared_books

    return open_shared_books(cfg)


def pg_cache_lock() -> int:
    """The shared cache's advisory lock (imported here only: psycopg is an optional extra)."""
    from hoosh_edge.books.pg import CACHE_LOCK

    return CACHE_LOCK


def build_gateway(config: Config, *, pool: ModelPool | None = None, start: bool = True) -> Gateway:
    """A complete Gateway: every configured provider, every local model found, the books opened.

    ``pool`` may bring a ModelPool of its own (tests); ``start`` starts the idle-unload reaper
    and loads the preloaded models.
    """
    from hoosh_edge.backends.modelstore import LocalModels, discover_local_models

    models_dir = Path(config.server.models_dir)
    found = discover_local_models(models_dir) if models_dir.is_dir() else LocalModels()
    pool = pool if pool is not None else ModelPool()
    backends: list[ChatBackend] = []
    db = Database.open(Path(config.server.data_dir),
                       synchronous=config.server.durability.upper())  # fmt: skip
    llm = configured_models(config.llm, found.llm)
    states = prompt_state_store(config) if llm else None
    if llm:
        from hoosh_edge.backends.engines.llama import LlamaEngine

        c = config.llm
        if states is not None:
            pool.caches.append(states)
        engine = LlamaEngine(llm, pool, n_threads=c.n_threads, n_ctx=c.n_ctx,
                             keep_alive_s=c.keep_alive_s, max_queue=c.max_queue,
                             states=states)  # fmt: skip
        backends.append(LocalChat(engine))
    speech = LocalSpeech(pool, configured_models(config.stt, found.stt),
                         configured_models(config.tts, found.tts), config.stt, config.tts,
                         models_dir=models_dir)  # fmt: skip
    embeddings = LocalEmbeddings(pool, configured_models(config.embeddings, found.embed),
                                 config.embeddings)  # fmt: skip
    policy = CachePolicy.from_config(config.cache)
    if policy.shared and not (config.database and config.database.url):
        raise ValueError("[cache] shared = true keeps the cache in the fleet's database: it "
                         "needs a [database] table")  # fmt: skip
    books, lease = _shared_books(config), None
    ledger = SpendLedger(books or db, timezone=config.timezone)
    if books is not None:
        from hoosh_edge.books.fleet import Lease
        from hoosh_edge.books.orphans import owner

        lease = Lease(ledger, owner(), books.lease_s)
        lease.start()
    ledger.seed_rules([dict(b) for b in config.budgets])
    cache_db = books.sibling(pg_cache_lock()) if books is not None and policy.shared else db
    gw = Gateway(config, pool=pool, speech=speech, local_backends=backends, db=db, ledger=ledger,
                 accountant=Accountant(ledger, PriceTable(dict(config.pricing))),
                 cache=ResponseCache(cache_db, policy),
                 keys=KeyStore(books or db), prompt_states=states,
                 embeddings=embeddings)  # fmt: skip
    gw.lease = lease
    semantic = gw.cache.policy.semantic
    if semantic is not None and not gw.embeddings.models:
        log.warning("[cache] semantic is set but no on-device embedding model is installed "
                    "('hoosh-edge models pull all-minilm-l6-v2'): the semantic cache is off")  # fmt: skip
    elif semantic is not None and semantic.embedding_model is not None and \
            not gw.embeddings.serves(semantic.embedding_model):  # fmt: skip
        log.warning("[cache] semantic.embedding_model %r is not an on-device embedding model "
                    "(have: %s): the semantic cache is off", semantic.embedding_model,
                    ", ".join(gw.embeddings.models))  # fmt: skip
    if start:
        for mid in config.llm.preload:
            if not llm or mid not in llm:
                gw.close()
                raise ModelNotFound(f"local.llm.preload names '{mid}', which is not a local model")
            pool.slot(mid).ensure_loaded()
        for mid in config.embeddings.preload:
            if not embeddings.serves(mid):
                gw.close()
                raise ModelNotFound(f"local.embeddings.preload names '{mid}', which is not a "
                                    "local embedding model")  # fmt: skip
            pool.slot(f"embed:{mid}").ensure_loaded()
        pool.start_reaper()
    return gw
