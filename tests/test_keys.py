"""API keys: stored keys, config keys, the request authenticator, model globs, no leaked secrets."""

from __future__ import annotations

import hmac
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hoosh_edge.books import keys as keys_module
from hoosh_edge.books.db import DB_FILENAME, Database
from hoosh_edge.books.keys import (
    Authenticator,
    KeyRecord,
    KeyStore,
    StaticKeys,
    is_allowed_model,
    require_model,
)
from hoosh_edge.doors.auth import authenticate_request, presented_key
from hoosh_edge.errors import AuthenticationError, InvalidRequest, PermissionDenied


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(books_db):
    """Each test on both engines: the SQLite file and PostgreSQL (conftest.books_db)."""
    return books_db


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database: Database, clock: Clock) -> KeyStore:
    return KeyStore(database, clock=clock)


def other_last_char(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- the store -------------------------------------------------------------------------------


def test_create_returns_a_long_random_key_once_and_a_record_without_it(store: KeyStore) -> None:
    record, key = store.create("phone", rpm=30, max_concurrent=2, budget_usd="5.00")
    assert key.startswith("hk-") and len(key) >= 3 + 40
    assert record.name == "phone" and record.kind == "stored"
    assert record.rpm == 30 and record.max_concurrent == 2 and record.budget_usd == "5.00"
    assert record.allowed_models is None and record.revoked_at is None
    assert record.prefix == key[:11] + "…"
    assert key not in repr(record) and key not in str(record.to_dict())
    _, second = store.create("laptop")
    assert second != key and second[3:11] != key[3:11]


def dump_all(database: Any, tmp_path: Path) -> str:
    """Every row of every table, as text: the whole file, or every table of the PostgreSQL db."""
    if isinstance(database, Database):
        conn = sqlite3.connect(tmp_path / DB_FILENAME)
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()
    with database.read() as db:
        tables = [r[0] for r in db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]  # fmt: skip
        return "\n".join(
            repr(tuple(row)) for t in tables for row in db.execute(f"SELECT * FROM {t}").fetchall()
        )


def test_the_database_holds_a_hash_and_a_short_prefix_never_the_key(
    store: KeyStore, database: Any, tmp_path: Path
) -> None:
    _, key = store.create("phone")
    dump = dump_all(database, tmp_path)
    assert key[3:11] in dump  # the dump did read the keys' rows
    with database.read() as db:
        row = db.execute("SELECT prefix, key_hash FROM api_keys").fetchone()
    assert key not in dump and key[3:] not in dump
    assert row[0] == key[3:11]
    assert len(row[1]) == 64 and key[11:] not in row[1]


def test_list_shows_every_key_with_its_prefix_and_revoke_marks_it(store: KeyStore) -> None:
    a, _ = store.create("a", allowed_models=["llama-*"])
    store.create("b")
    assert [r.name for r in store.list()] == ["a", "b"]
    assert store.list()[0].allowed_models == ("llama-*",)
    assert store.list()[0].prefix == a.prefix
    assert store.revoke("a") is True
    assert store.revoke("a") is False
    assert store.revoke("nobody") is False
    assert [r.name for r in store.list(include_revoked=False)] == ["b"]
    revoked = store.get("a")
    assert revoked is not None and revoked.revoked and revoked.revoked_at
    assert store.has_active_keys()
    store.revoke("b")
    assert not store.has_active_keys()


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "ключ", "a/b", "admin", "static-0"])
def test_bad_or_reserved_names_are_refused_naming_the_field(store: KeyStore, name: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        store.create(name)
    assert e.value.param == "name" and "name" in e.value.message


def test_names_are_unique_even_after_revocation(store: KeyStore) -> None:
    store.create("phone")
    with pytest.raises(InvalidRequest, match="already exists"):
        store.create("phone")
    store.revoke("phone")
    with pytest.raises(InvalidRequest, match="already exists"):
        store.create("phone")
    assert len(store.list()) == 1


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"rpm": 0}, "rpm"),
        ({"rpm": 1.5}, "rpm"),
        ({"rpm": True}, "rpm"),
        ({"max_concurrent": -1}, "max_concurrent"),
        ({"budget_usd": "-1"}, "budget_usd"),
        ({"budget_usd": "0.0000001"}, "budget_usd"),
        ({"budget_usd": "five"}, "budget_usd"),
        ({"budget_usd": "NaN"}, "budget_usd"),
        ({"budget_usd": 1.5}, "budget_usd"),
        ({"allowed_models": "gpt-4o"}, "allowed_models"),
        ({"allowed_models": ["ok", ""]}, "allowed_models"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(store: KeyStore, kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        store.create("k", **kwargs)
    assert e.value.param == param
    assert store.list() == []


def test_authenticate_accepts_the_key_and_refuses_near_misses_and_revoked(
    store: KeyStore,
) -> None:
    record, key = store.create("phone")
    assert store.authenticate(key) == record
    assert store.authenticate(other_last_char(key)) is None
    assert store.authenticate(key[:-1]) is None
    assert store.authenticate(key + "x") is None
    assert store.authenticate("") is None
    assert store.authenticate("hk-") is None
    store.revoke("phone")
    assert store.authenticate(key) is None


def test_the_hash_comparison_goes_through_compare_digest(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = store.create("phone")
    calls = []
    real = hmac.compare_digest

    def spy(a, b):  # type: ignore[no-untyped-def]
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    assert store.authenticate(other_last_char(key)) is None
    assert store.authenticate("not-even-a-key") is None  # compared against a dummy, too
    assert store.authenticate(key) is not None
    assert len(calls) == 3
    assert all(key not in a and key not in b for a, b in calls)


def test_last_used_is_written_lazily_not_on_every_request(
    store: KeyStore, database: Database, clock: Clock
) -> None:
    _, key = store.create("phone")

    def on_disk() -> str | None:
        with database.read() as db:
            return db.execute("SELECT last_used_at FROM api_keys").fetchone()[0]

    store.authenticate(key)
    first = on_disk()
    assert first is not None
    clock.now += 30
    store.authenticate(key)
    assert on_disk() == first  # within the interval: memory only
    assert store.list()[0].last_used_at != first  # but this process knows
    clock.now += 31
    store.authenticate(key)
    assert on_disk() != first
    clock.now += 5
    store.authenticate(key)
    store.flush_last_used()
    assert on_disk() == store.list()[0].last_used_at
    # A second process (the CLI) sees what was written.
    assert KeyStore(database).list()[0].last_used_at == on_disk()


# --- config keys -------------------------------------------------------------------------------


def test_static_keys_resolve_to_numbered_records_and_admin() -> None:
    static = StaticKeys(("alpha-key-1", "beta-key-2"), "root-key")
    assert static.authenticate("alpha-key-1").name == "static-0"  # type: ignore[union-attr]
    assert static.authenticate("beta-key-2").name == "static-1"  # type: ignore[union-attr]
    admin = static.authenticate("root-key")
    assert admin is not None and admin.name == "admin" and admin.is_admin
    assert static.authenticate("beta-key-3") is None
    assert static.authenticate("") is None
    assert [r.name for r in static.records()] == ["admin", "static-0", "static-1"]
    for secret in ("alpha-key-1", "beta-key-2", "root-key"):
        assert secret not in repr(static) and secret not in repr(static.records())
    assert not StaticKeys((), None)
    # The admin key listed among the client keys as well is still the admin key.
    both = StaticKeys(("client-key", "root-key"), "root-key")
    assert both.authenticate("root-key").is_admin  # type: ignore[union-attr]


# --- the request authenticator ------------------------------------------------------------


def test_header_forms() -> None:
    assert presented_key({"Authorization": "Bearer k1"}) == "k1"
    assert presented_key({"authorization": "bearer k1"}) == "k1"
    assert presented_key({"AUTHORIZATION": "BEARER   k1 "}) == "k1"
    assert presented_key({"x-api-key": "k2"}) == "k2"
    assert presented_key({"X-Api-Key": " k2 "}) == "k2"
    assert presented_key({"Authorization": "Basic abc", "x-api-key": "k2"}) == "k2"
    assert presented_key({"Authorization": "Bearer k1", "x-api-key": "k2"}) == "k1"
    assert presented_key({"Authorization": "Bearer "}) is None
    assert presented_key({}) is None


def test_open_gateway_when_no_key_exists_at_all(store: KeyStore) -> None:
    auth = Authenticator(store, StaticKeys())
    assert auth.keys_exist() is False
    assert authenticate_request(auth, {}, path="/v1/chat/completions") is None
    # SDKs always send something; on an open gateway it is ignored.
    assert authenticate_request(auth, bearer("sk-no-key"), path="/v1/models") is None
    assert authenticate_request(auth, {}, path="/admin/keys") is None
    # Once every stored key is revoked the gateway is open again.
    store.create("phone")
    assert auth.keys_exist()
    store.revoke("phone")
    assert authenticate_request(auth, {}, path="/v1/models") is None


def test_missing_and_invalid_keys_get_distinct_401s(store: KeyStore) -> None:
    _, key = store.create("phone")
    auth = Authenticator(store, StaticKeys())
    with pytest.raises(AuthenticationError, match="Missing API key") as missing:
        authenticate_request(auth, {}, path="/v1/models")
    assert missing.value.status == 401 and missing.value.code == "missing_api_key"
    with pytest.raises(AuthenticationError, match="Invalid API key") as invalid:
        authenticate_request(auth, bearer(other_last_char(key)), path="/v1/models")
    assert invalid.value.status == 401 and invalid.value.code == "invalid_api_key"
    assert authenticate_request(auth, bearer(key), path="/v1/models").name == "phone"  # type: ignore[union-attr]
    assert authenticate_request(auth, {"x-api-key": key}, path="/v1/messages").name == "phone"  # type: ignore[union-attr]
    store.revoke("phone")
    store.create("other")  # keeps the gateway closed
    with pytest.raises(AuthenticationError, match="Invalid API key"):
        authenticate_request(auth, bearer(key), path="/v1/models")


def test_config_and_stored_keys_work_side_by_side(store: KeyStore) -> None:
    _, key = store.create("phone")
    auth = Authenticator(store, StaticKeys(("config-key-0",), None))
    assert authenticate_request(auth, bearer("config-key-0"), path="/v1/x").name == "static-0"  # type: ignore[union-attr]
    assert authenticate_request(auth, bearer(key), path="/v1/x").name == "phone"  # type: ignore[union-attr]
    # Config keys alone close the gateway, with or without a store.
    only_config = Authenticator(None, StaticKeys(("config-key-0",), None))
    with pytest.raises(AuthenticationError):
        authenticate_request(only_config, {}, path="/v1/x")


def test_admin_paths_need_the_admin_key(store: KeyStore) -> None:
    _, key = store.create("phone")
    auth = Authenticator(store, StaticKeys(("config-key-0",), "root-key"))
    for path in ("/admin/keys", "/admin"):
        assert authenticate_request(auth, bearer("root-key"), path=path).is_admin  # type: ignore[union-attr]
        with pytest.raises(PermissionDenied, match="'phone' is not an admin key") as e:
            authenticate_request(auth, bearer(key), path=path)
        assert e.value.status == 403
        with pytest.raises(PermissionDenied, match="static-0"):
            authenticate_request(auth, bearer("config-key-0"), path=path)
        with pytest.raises(AuthenticationError) as none:
            authenticate_request(auth, {}, path=path)
        assert none.value.status == 401
    # The admin key works on client paths too; '/administer' is not an admin path.
    assert authenticate_request(auth, bearer("root-key"), path="/v1/models").is_admin  # type: ignore[union-attr]
    assert authenticate_request(auth, bearer(key), path="/administer").name == "phone"  # type: ignore[union-attr]


def test_an_admin_key_alone_closes_the_gateway(store: KeyStore) -> None:
    auth = Authenticator(store, StaticKeys((), "root-key"))
    with pytest.raises(AuthenticationError):
        authenticate_request(auth, {}, path="/v1/models")
    assert authenticate_request(auth, bearer("root-key"), path="/v1/models").is_admin  # type: ignore[union-attr]


def test_without_an_admin_key_admin_paths_close_once_any_key_exists(store: KeyStore) -> None:
    auth = Authenticator(store, StaticKeys())
    assert authenticate_request(auth, {}, path="/admin/keys") is None  # open loopback gateway
    _, key = store.create("phone")
    with pytest.raises(AuthenticationError):
        authenticate_request(auth, {}, path="/admin/keys")
    with pytest.raises(PermissionDenied, match="server.admin_key"):
        authenticate_request(auth, bearer(key), path="/admin/keys")
    assert authenticate_request(auth, bearer(key), path="/v1/models").name == "phone"  # type: ignore[union-attr]


# --- models -------------------------------------------------------------------------------------


def test_allowed_models_are_globs(store: KeyStore) -> None:
    record, _ = store.create("kid", allowed_models=["smollm2*", "whisper-tiny", "gpt-4o-mini"])
    assert is_allowed_model(record, "smollm2-135m")
    assert is_allowed_model(record, "whisper-tiny")
    assert is_allowed_model(record, "gpt-4o-mini")
    assert not is_allowed_model(record, "gpt-4o")
    assert not is_allowed_model(record, "SMOLLM2-135m")  # exact case, like model ids
    assert not is_allowed_model(record, "whisper-tiny.en")
    with pytest.raises(
        PermissionDenied, match="'kid' is not allowed to use the model 'gpt-4o'"
    ) as e:
        require_model(record, "gpt-4o")
    assert e.value.status == 403 and e.value.param == "model"
    require_model(record, "smollm2-360m")
    everything, _ = store.create("all")
    assert is_allowed_model(everything, "anything/at-all")
    assert is_allowed_model(None, "anything")  # open gateway
    nothing, _ = store.create("none", allowed_models=[])
    assert not is_allowed_model(nothing, "smollm2")
    # The listing keeps "nothing" and "everything" apart.
    assert (
        nothing.to_dict()["allowed_models"] == [] and everything.to_dict()["allowed_models"] is None
    )
    assert record.to_dict()["allowed_models"] == ["smollm2*", "whisper-tiny", "gpt-4o-mini"]
    assert set(record.to_dict()) == {
        "name", "prefix", "kind", "allowed_models", "rpm", "max_concurrent", "budget_usd",
        "created_at", "last_used_at", "revoked_at",
    }  # fmt: skip


# --- secrets never leak -----------------------------------------------------------------------


def test_no_secret_in_records_errors_or_messages(store: KeyStore) -> None:
    record, key = store.create("phone", allowed_models=["x"])
    static = StaticKeys(("config-secret-1",), "admin-secret-1")
    auth = Authenticator(store, static)
    texts = [repr(record), str(record), str(record.to_dict()), repr(static), repr(auth.static)]
    texts += [repr(r) for r in store.list()] + [repr(r) for r in static.records()]
    wrong = [other_last_char(key), "config-secret-2", key]
    for presented, path in zip(wrong, ["/v1/x", "/v1/x", "/admin/x"], strict=True):
        with pytest.raises((AuthenticationError, PermissionDenied)) as e:
            authenticate_request(auth, bearer(presented), path=path)
        texts += [str(e.value), repr(e.value), str(e.value.to_dict())]
    with pytest.raises(PermissionDenied) as denied:
        require_model(record, "y")
    texts += [str(denied.value), repr(denied.value)]
    blob = "\n".join(texts)
    for secret in (key, key[11:], other_last_char(key)[11:], "config-secret", "admin-secret-1"):
        assert secret not in blob
    assert isinstance(record, KeyRecord) and not hasattr(record, "key")
