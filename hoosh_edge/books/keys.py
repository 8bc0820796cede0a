"""Client API keys: stored keys with per-key limits, static keys from the config, one authenticator.

A stored key is ``hk-`` followed by 43 url-safe characters (256 random bits). The database keeps
only its first 8 random characters (``prefix``, a non-secret lookup id, also shown as ``hk-ab12cd34…``
so an operator can recognise a key) and the SHA-256 of the whole key. A plain hash is enough here:
slow hashes (scrypt, PBKDF2) exist to make guessing low-entropy passwords expensive, but nobody can
guess 208 unknown random bits however fast the hash is, and a slow hash would cost the Pi real CPU
on every request. Lookup is one indexed read by prefix, then ``hmac.compare_digest`` of the hashes.

Which key a request carries and which paths need the admin key is the doors' business
(``doors/auth.py``); here keys are only stored, hashed and compared.

A revoked key keeps its row and its name, so the ledger and ``key:NAME`` budget rules never point
at a different key later; a new key needs a new name. ``last_used_at`` is written at most once per
``last_used_interval`` seconds per key, not on every request, to keep writes off the hot path.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import hmac
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from hoosh_edge.books.money import parse_decimal, to_micro
from hoosh_edge.errors import (
    InvalidRequest,
    LastKey,
    PermissionDenied,
    ServiceUnavailable,
    StorageUnavailable,
)
from hoosh_edge.threads import run_books

if TYPE_CHECKING:
    from hoosh_edge.books.db import Database

log = logging.getLogger("hoosh_edge.books.keys")

KEY_PREFIX = "hk-"
_PREFIX_LEN = 8  # random characters kept in clear as the lookup id
_RANDOM_BYTES = 32  # 43 url-safe characters
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_RESERVED = re.compile(r"^(admin|static-\d+)$")
_VERIFIED_MAX = 1024  # keys remembered for an outage of the books' server
ACTIVE_KEYS_TTL_S = 0.1  # how stale has_active_keys() may be about another process's change
_COLUMNS = (
    "name, prefix, allowed_models, rpm, max_concurrent, budget_usd, "
    "created_at, last_used_at, revoked_at"
)


@dataclass(frozen=True)
class KeyRecord:
    """What the gateway knows about a key; never the key itself."""

    name: str
    prefix: str  # for recognition only, e.g. 'hk-ab12cd34…'
    kind: str = "stored"  # 'stored', 'static' (server.api_keys) or 'admin' (server.admin_key)
    allowed_models: tuple[str, ...] | None = None  # globs; None allows every model
    rpm: int | None = None
    max_concurrent: int | None = None
    budget_usd: str | None = None  # a decimal string, for a 'key:NAME' budget rule
    created_at: str | None = None
    last_used_at: str | None = None
    revoked_at: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_dict(self) -> dict[str, Any]:
        """The listing form for the API and the CLI."""
        out = dataclasses.asdict(self)
        # An empty list allows nothing; only None allows everything.
        out["allowed_models"] = None if self.allowed_models is None else list(self.allowed_models)
        return out


def hash_key(key: str) -> str:
    """SHA-256 hex of a key (see the module docstring for why a fast hash is right here)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def is_allowed_model(record: KeyRecord | None, model: str) -> bool:
    """Whether ``record`` may use ``model`` (no record, i.e. an open gateway, may use any)."""
    if record is None or record.allowed_models is None:
        return True
    return any(fnmatch.fnmatchcase(model, glob) for glob in record.allowed_models)


def require_model(record: KeyRecord | None, model: str) -> None:
    """Raise ``PermissionDenied`` naming the model unless ``record`` may use it."""
    if not is_allowed_model(record, model):
        assert record is not None
        raise PermissionDenied(
            f"The API key '{record.name}' is not allowed to use the model '{model}'.",
            param="model",
            code="model_not_allowed",
        )


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _positive_int(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"{field} must be a whole number >= 1 (or absent)", param=field)
    return value


def _budget(value: Any) -> str | None:
    """A usd amount as an exact decimal string: >= 0, at most 6 decimals (micro-dollars)."""
    if value is None:
        return None
    # No JSON floats: the amount is kept as written, and a float has no "as written".
    amount = parse_decimal(value, "budget_usd", floats=False)
    to_micro(amount, "budget_usd")  # only validated: fits the ledger, at most 6 decimals
    return format(amount, "f")  # as given ('5.00' stays '5.00')


def _models(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(m, str) and m.strip() for m in value):
        raise InvalidRequest(
            "allowed_models must be a list of model names or globs", param="allowed_models"
        )
    return tuple(m.strip() for m in value)


def _record(row: Any) -> KeyRecord:
    models = row["allowed_models"]
    return KeyRecord(
        name=row["name"],
        prefix=f"{KEY_PREFIX}{row['prefix']}…",
        allowed_models=tuple(json.loads(models)) if models is not None else None,
        rpm=row["rpm"],
        max_concurrent=row["max_concurrent"],
        budget_usd=row["budget_usd"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


class KeyStore:
    """Keys in the ``api_keys`` table: create, list, revoke, authenticate."""

    _active_keys: tuple[bool, float] | None = None  # has_active_keys(): (answer, when read)

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
        last_used_interval: float = 60.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.last_used_interval = last_used_interval
        self._written: dict[str, float] = {}  # name -> when last_used_at was last written
        self._pending: dict[str, float] = {}  # name -> last use not yet written
        # digest -> record at its last successful check; used only while the books are away.
        self._verified: dict[str, KeyRecord] = {}

    def create(
        self,
        name: str,
        *,
        allowed_models: list[str] | None = None,
        rpm: int | None = None,
        max_concurrent: int | None = None,
        budget_usd: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """Make a key; the plaintext is returned here once and never stored."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequest(
                "name must be 1-64 characters of letters, digits, '_', '.' or '-'", param="name"
            )
        if _RESERVED.match(name):
            raise InvalidRequest(
                f"name '{name}' is reserved for keys from the config file", param="name"
            )
        models = _models(allowed_models)
        row = {
            "name": name,
            "allowed_models": json.dumps(list(models)) if models is not None else None,
            "rpm": _positive_int(rpm, "rpm"),
            "max_concurrent": _positive_int(max_concurrent, "max_concurrent"),
            "budget_usd": _budget(budget_usd),
            "created_at": _utc(self.clock()),
        }
        with self.db.write() as db:
            if db.execute("SELECT 1 FROM api_keys WHERE name = ?", [name]).fetchone():
                raise InvalidRequest(
                    f"a key named '{name}' already exists (revoked keys keep their names)",
                    param="name",
                )
            while True:
                key = KEY_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)
                prefix = key[len(KEY_PREFIX) : len(KEY_PREFIX) + _PREFIX_LEN]
                # A 48-bit prefix clash is vanishingly rare, but the lookup wants one row per prefix.
                if not db.execute("SELECT 1 FROM api_keys WHERE prefix = ?", [prefix]).fetchone():
                    break
            db.execute(
                f"INSERT INTO api_keys ({', '.join(row)}, prefix, key_hash) "
                f"VALUES ({', '.join(':' + c for c in row)}, :prefix, :key_hash)",
                {**row, "prefix": prefix, "key_hash": hash_key(key)},
            )
        self._active_keys = None  # has_active_keys() reads again
        record = self.get(name)
        assert record is not None
        return record, key

    def get(self, name: str) -> KeyRecord | None:
        """One key by name, revoked or not."""
        with self.db.read() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE name = ?", [name]).fetchone()
        return self._with_pending(_record(row)) if row else None

    def list(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        """Every key, oldest first, with last use as far as this process knows it."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self.db.read() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY rowid").fetchall()
        return [self._with_pending(_record(r)) for r in rows]

    def has_active_keys(self) -> bool:
        """Whether any stored key is not revoked (read again after ACTIVE_KEYS_TTL_S at most)."""
        # Asked on every request: the answer is kept, forgotten by this process's own create()
        # and revoke() at once, and re-read after ACTIVE_KEYS_TTL_S for the CLI's changes (a
        # CLI run takes several times longer than that, so its next request sees the change).
        now = time.monotonic()
        known = self._active_keys
        if known is not None and now - known[1] < ACTIVE_KEYS_TTL_S:
            return known[0]
        try:
            with self.db.read() as db:
                sql = "SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)"
                active = bool(db.execute(sql).fetchone()[0])
        except StorageUnavailable:
            if known is None:
                raise
            return known[0]  # the books' server is away: what it said last still holds
        self._active_keys = (active, now)
        return active

    def revoke(self, name: str, *, keep_one: str | None = None) -> bool:
        """Revoke a key; False if there is no such active key.

        With ``keep_one`` (the reason), revoking the last active key raises ``LastKey`` instead;
        the count and the revocation are one transaction, so two revocations at once cannot
        both pass.
        """
        with self.db.write() as db:
            if keep_one is not None:
                others = db.execute(
                    "SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL AND name != ?", [name]
                ).fetchone()[0]
                mine = db.execute(
                    "SELECT 1 FROM api_keys WHERE revoked_at IS NULL AND name = ?", [name]
                ).fetchone()
                if mine and not others:
                    raise LastKey(keep_one)
            cur = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                [_utc(self.clock()), name],
            )
        self._active_keys = None  # has_active_keys() reads again
        return cur.rowcount > 0

    def authenticate(self, presented: str) -> KeyRecord | None:
        """The active key matching ``presented``, compared in constant time; None otherwise."""
        digest = hash_key(presented)
        prefix = presented[len(KEY_PREFIX) : len(KEY_PREFIX) + _PREFIX_LEN]
        row = None
        if presented.startswith(KEY_PREFIX) and len(prefix) == _PREFIX_LEN:
            try:
                with self.db.read() as db:
                    row = db.execute(
                        f"SELECT {_COLUMNS}, key_hash FROM api_keys WHERE prefix = ?", [prefix]
                    ).fetchone()
            except StorageUnavailable:
                # The shared books' server is away: a key it vouched for last time still opens
                # free on-device calls (paid ones are refused without the books anyway).
                if digest not in self._verified:
                    raise
                return self._verified[digest]
        stored = row["key_hash"] if row else hash_key("")
        if not hmac.compare_digest(digest, stored) or row is None or row["revoked_at"]:
            self._verified.pop(digest, None)
            return None
        record = _record(row)
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.pop(next(iter(self._verified)))
        self._verified[digest] = record
        self._touch(record.name)
        return record

    def _touch(self, name: str) -> None:
        """Note a use; write it only if the last write of this key is old enough."""
        now = self.clock()
        self._pending[name] = now
        if now - self._written.get(name, float("-inf")) >= self.last_used_interval:
            # A durable write: in the books pool, so neither the hub nor a model waits for it.
            self._flush({name: now}, run_books)

    def flush_last_used(self, names: list[str] | None = None) -> None:
        """Write pending last-use times (all of them by default; call at shutdown)."""
        todo = {n: t for n, t in self._pending.items() if names is None or n in names}
        if todo:
            self._flush(todo, lambda fn, *args: fn(*args))

    def _flush(self, todo: dict[str, float], run: Callable[..., Any]) -> None:
        """Write ``todo`` (name -> time) with ``run``; the bookkeeping stays on the caller's side."""
        try:
            run(self._write_last_used, todo)
        except (ServiceUnavailable, sqlite3.OperationalError) as e:
            # Bookkeeping only: a busy database must never turn into a refused request.
            log.warning("could not record key use: %s", e)
            return
        for name, ts in todo.items():
            self._written[name] = max(ts, self._written.get(name, ts))
            if self._pending.get(name) == ts:
                del self._pending[name]

    def _write_last_used(self, todo: dict[str, float]) -> None:
        with self.db.write() as db:
            for name, ts in todo.items():
                db.execute("UPDATE api_keys SET last_used_at = ? WHERE name = ?", [_utc(ts), name])

    def _with_pending(self, record: KeyRecord) -> KeyRecord:
        ts = self._pending.get(record.name)
        if ts is None:
            return record
        return dataclasses.replace(record, last_used_at=_utc(ts))


class StaticKeys:
    """Keys from the config file: ``server.api_keys`` as static-0, static-1 …, and the admin key."""

    def __init__(self, api_keys: tuple[str, ...] = (), admin_key: str | None = None) -> None:
        # Only digests are kept, so a stray repr or traceback of this object shows no key.
        self._keys = [
            (hash_key(k), KeyRecord(name=f"static-{i}", prefix="(config)", kind="static"))
            for i, k in enumerate(api_keys)
            if k
        ]
        if admin_key:
            self._keys.insert(0, (hash_key(admin_key), KeyRecord("admin", "(config)", "admin")))
        self.has_admin = bool(admin_key)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"StaticKeys(keys={len(self._keys)}, admin={self.has_admin})"

    def records(self) -> list[KeyRecord]:
        """The records of the configured keys (admin first)."""
        return [rec for _, rec in self._keys]

    def authenticate(self, presented: str) -> KeyRecord | None:
        """The matching config key; every key is compared, so timing does not say which matched."""
        digest = hash_key(presented)
        found = None
        for stored, record in self._keys:
            if hmac.compare_digest(digest, stored) and found is None:
                found = record
        return found


class Authenticator:
    """Config keys and stored keys as one: does any key exist, and whose is this one."""

    def __init__(self, store: KeyStore | None, static: StaticKeys) -> None:
        self.store = store
        self.static = static

    def keys_exist(self) -> bool:
        """Whether any key (config, admin or active stored key) exists; if not, the gateway is open."""
        return bool(self.static) or (self.store is not None and self.store.has_active_keys())

    def authenticate(self, presented: str) -> KeyRecord | None:
        """The record for a presented key: config keys first, then stored keys."""
        record = self.static.authenticate(presented)
        stored = self.store.authenticate(presented) if self.store is not None else None
        return record or stored

    @property
    def has_admin_key(self) -> bool:
        """Whether ``server.admin_key`` is set (the only key ``/admin/*`` takes once keys exist)."""
        return self.static.has_admin
