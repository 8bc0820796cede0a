"""The gateway database's schema, as named, append-only migrations.

To change the schema, append a ``Migration(name, step)`` to ``MIGRATIONS`` — ``step`` is SQL (one or
more statements) or a function taking the ``sqlite_utils.Database`` — and never edit or reorder
the ones already released. ``Database.migrate`` applies each in its own transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils


@dataclass(frozen=True)
class Migration:
    """One named, append-only schema step: SQL text or a function of the database."""

    name: str
    step: str | Callable[[sqlite_utils.Database], None]


MIGRATIONS: list[Migration] = [
    Migration(
        "0001_budget_rules_and_ledger",
        """
        CREATE TABLE budget_rules (
            name TEXT PRIMARY KEY,
            scope TEXT NOT NULL,
            metric TEXT NOT NULL,
            limit_value INTEGER NOT NULL,  -- micro-dollars for metric 'usd'
            period TEXT NOT NULL,
            action TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT 'api',  -- 'config' or 'api'
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE ledger (
            id INTEGER PRIMARY KEY,
            ts INTEGER NOT NULL,  -- microseconds since the Unix epoch, UTC
            request_id TEXT,
            api_key TEXT,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            is_local INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            audio_ms INTEGER NOT NULL DEFAULT 0,
            characters INTEGER NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 1,
            cost_micro_usd INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX ledger_ts ON ledger (ts);
        """,
    ),
    Migration(
        "0002_reservations",
        """
        CREATE TABLE reservations (
            id INTEGER PRIMARY KEY,
            ts INTEGER NOT NULL,
            pid INTEGER NOT NULL,  -- owning process: a reservation never outlives it
            owner TEXT NOT NULL,  -- boot id, pid and a per-process token: pids get reused
            request_id TEXT,
            api_key TEXT,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            is_local INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            audio_ms INTEGER NOT NULL DEFAULT 0,
            characters INTEGER NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 1,
            cost_micro_usd INTEGER NOT NULL DEFAULT 0
        );
        """,
    ),
    Migration(
        "0003_ledger_request_id_index",
        "CREATE INDEX ledger_request_id ON ledger (request_id);",
    ),
    Migration(
        "0004_budget_usage",
        # Running totals per rule and period, so a reservation need not re-sum the whole ledger.
        """
        CREATE TABLE budget_usage (
            rule TEXT NOT NULL,
            period_start INTEGER NOT NULL,  -- microseconds since the epoch, UTC; 0 for 'total'
            used INTEGER NOT NULL,  -- committed use in the rule's measured unit
            PRIMARY KEY (rule, period_start)
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        "0005_api_keys",
        # Only a non-secret prefix (the lookup id) and a SHA-256 of each key: see keys.py.
        """
        CREATE TABLE api_keys (
            name TEXT PRIMARY KEY,
            prefix TEXT NOT NULL UNIQUE,
            key_hash TEXT NOT NULL,
            allowed_models TEXT,  -- JSON list of globs; NULL allows every model
            rpm INTEGER,
            max_concurrent INTEGER,
            budget_usd TEXT,  -- exact decimal string, for a key:NAME budget rule
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT
        );
        """,
    ),
    Migration(
        "0006_response_cache",
        # The response cache (cache.py); totals kept by triggers, so bounds cost one row read per
        # put whoever deleted what.
        """
        CREATE TABLE response_cache (
            key TEXT NOT NULL PRIMARY KEY,
            kind TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            body BLOB NOT NULL,
            meta TEXT NOT NULL,
            size INTEGER NOT NULL,  -- bytes of body + meta
            checksum TEXT NOT NULL,  -- blake2b of body and meta
            created REAL NOT NULL,  -- seconds since the epoch
            last_used REAL NOT NULL
        );
        CREATE INDEX response_cache_lru ON response_cache (last_used);
        CREATE INDEX response_cache_created ON response_cache (created);
        CREATE TABLE response_cache_totals (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            entries INTEGER NOT NULL,
            bytes INTEGER NOT NULL
        );
        INSERT INTO response_cache_totals (id, entries, bytes) VALUES (1, 0, 0);
        CREATE TRIGGER response_cache_added AFTER INSERT ON response_cache BEGIN
            UPDATE response_cache_totals SET entries = entries + 1, bytes = bytes + NEW.size;
        END;
        CREATE TRIGGER response_cache_removed AFTER DELETE ON response_cache BEGIN
            UPDATE response_cache_totals SET entries = entries - 1, bytes = bytes - OLD.size;
        END;
        CREATE TRIGGER response_cache_resized AFTER UPDATE OF size ON response_cache BEGIN
            UPDATE response_cache_totals SET bytes = bytes - OLD.size + NEW.size;
        END;
        """,
    ),
    Migration(
        "0007_ledger_kinds_and_budget_closures",
        # A crash never un-spends: a dead process's reservation is booked as 'orphaned', and an
        # operator corrects it with a new 'correction' row (history is never rewritten). A rule
        # an upstream overran stays closed for the rest of its period.
        """
        ALTER TABLE ledger ADD COLUMN kind TEXT NOT NULL DEFAULT 'call';  -- call|orphaned|correction
        ALTER TABLE ledger ADD COLUMN note TEXT;  -- why a correction was made
        CREATE TABLE budget_closures (
            rule TEXT NOT NULL,
            period_start INTEGER NOT NULL,  -- as in budget_usage
            ts INTEGER NOT NULL,
            request_id TEXT,
            reason TEXT NOT NULL,
            PRIMARY KEY (rule, period_start)
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        "0008_semantic_cache",
        # The semantic cache (semantic_cache.py): one vector per stored chat answer, looked up by
        # the exact hash of everything in the request but the last user message.
        """
        CREATE TABLE semantic_cache (
            id INTEGER PRIMARY KEY,
            scope TEXT NOT NULL,  -- sha256 of the request without the last user message's text
            answer_key TEXT NOT NULL,  -- the response_cache row that holds the answer
            model TEXT NOT NULL,  -- the embedding model that made the vector
            vector BLOB NOT NULL,  -- float32, little-endian, L2-normalised
            created REAL NOT NULL,  -- seconds since the epoch
            last_used REAL NOT NULL
        );
        CREATE INDEX semantic_cache_scope ON semantic_cache (scope);
        CREATE INDEX semantic_cache_lru ON semantic_cache (last_used);
        """,
    ),
    Migration(
        "0009_stored_responses",
        # /v1/responses answers kept for previous_response_id and GET /v1/responses/{id}; a
        # scope is a key's name ('' when keys are off), so a key finds only its own.
        """
        CREATE TABLE stored_responses (
            id TEXT NOT NULL PRIMARY KEY,
            scope TEXT NOT NULL,
            created REAL NOT NULL,  -- seconds since the epoch
            expires REAL NOT NULL,
            response TEXT NOT NULL,  -- the response object, JSON
            input_items TEXT NOT NULL,  -- this request's input items, JSON
            messages TEXT NOT NULL,  -- the conversation so far in chat form, JSON
            size INTEGER NOT NULL  -- bytes of the three JSON texts
        );
        CREATE INDEX stored_responses_created ON stored_responses (created);
        CREATE INDEX stored_responses_expires ON stored_responses (expires);
        """,
    ),
]
