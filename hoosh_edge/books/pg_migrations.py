"""The shared books' schema in PostgreSQL, as named, append-only migrations.

The same tables as ``migrations.py`` under the same names, in PostgreSQL's dialect, for the
stores a fleet shares: budget rules, ledger, reservations, running totals and closures, API keys.
The response cache lives here only with ``[cache] shared = true``; saved prompt states always stay
in each box's SQLite file. Append, never edit:
``PgDatabase.migrate`` applies each once, under the books' write lock, whichever box starts first.
"""

from __future__ import annotations

from hoosh_edge.books.migrations import Migration

PG_MIGRATIONS: list[Migration] = [
    Migration(
        "0001_budget_rules_and_ledger",
        """
        CREATE TABLE budget_rules (
            name TEXT PRIMARY KEY,
            scope TEXT NOT NULL,
            metric TEXT NOT NULL,
            limit_value BIGINT NOT NULL,
            period TEXT NOT NULL,
            action TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT 'api',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE ledger (
            id BIGSERIAL PRIMARY KEY,
            ts BIGINT NOT NULL,
            request_id TEXT,
            api_key TEXT,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            is_local INTEGER NOT NULL,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            audio_ms BIGINT NOT NULL DEFAULT 0,
            characters BIGINT NOT NULL DEFAULT 0,
            requests BIGINT NOT NULL DEFAULT 1,
            cost_micro_usd BIGINT NOT NULL DEFAULT 0
        );
        CREATE INDEX ledger_ts ON ledger (ts);
        """,
    ),
    Migration(
        "0002_reservations",
        """
        CREATE TABLE reservations (
            id BIGSERIAL PRIMARY KEY,
            ts BIGINT NOT NULL,
            pid INTEGER NOT NULL,
            owner TEXT NOT NULL,  -- the box process (boot id, pid, token); its lease is in boxes
            request_id TEXT,
            api_key TEXT,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            is_local INTEGER NOT NULL,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            audio_ms BIGINT NOT NULL DEFAULT 0,
            characters BIGINT NOT NULL DEFAULT 0,
            requests BIGINT NOT NULL DEFAULT 1,
            cost_micro_usd BIGINT NOT NULL DEFAULT 0
        );
        """,
    ),
    Migration(
        "0003_ledger_request_id_index",
        "CREATE INDEX ledger_request_id ON ledger (request_id);",
    ),
    Migration(
        "0004_budget_usage",
        """
        CREATE TABLE budget_usage (
            rule TEXT NOT NULL,
            period_start BIGINT NOT NULL,
            used BIGINT NOT NULL,
            PRIMARY KEY (rule, period_start)
        );
        """,
    ),
    Migration(
        "0005_api_keys",
        # rowid: the keys' creation order, which SQLite gives every table (keys.py sorts by it).
        """
        CREATE TABLE api_keys (
            rowid BIGSERIAL,
            name TEXT PRIMARY KEY,
            prefix TEXT NOT NULL UNIQUE,
            key_hash TEXT NOT NULL,
            allowed_models TEXT,
            rpm INTEGER,
            max_concurrent INTEGER,
            budget_usd TEXT,
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT
        );
        """,
    ),
    Migration(
        "0006_response_cache",
        # Used only with [cache] shared = true; rowid orders ties in eviction, as in SQLite.
        """
        CREATE TABLE response_cache (
            rowid BIGSERIAL,
            key TEXT NOT NULL PRIMARY KEY,
            kind TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            body BYTEA NOT NULL,
            meta TEXT NOT NULL,
            size BIGINT NOT NULL,
            checksum TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            last_used DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX response_cache_lru ON response_cache (last_used);
        CREATE INDEX response_cache_created ON response_cache (created);
        CREATE TABLE response_cache_totals (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            entries BIGINT NOT NULL,
            bytes BIGINT NOT NULL
        );
        INSERT INTO response_cache_totals (id, entries, bytes) VALUES (1, 0, 0);
        CREATE FUNCTION response_cache_count() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                UPDATE response_cache_totals SET entries = entries + 1, bytes = bytes + NEW.size;
            ELSIF TG_OP = 'DELETE' THEN
                UPDATE response_cache_totals SET entries = entries - 1, bytes = bytes - OLD.size;
            ELSE
                UPDATE response_cache_totals SET bytes = bytes - OLD.size + NEW.size;
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER response_cache_added AFTER INSERT ON response_cache
            FOR EACH ROW EXECUTE FUNCTION response_cache_count();
        CREATE TRIGGER response_cache_removed AFTER DELETE ON response_cache
            FOR EACH ROW EXECUTE FUNCTION response_cache_count();
        CREATE TRIGGER response_cache_resized AFTER UPDATE OF size ON response_cache
            FOR EACH ROW EXECUTE FUNCTION response_cache_count();
        """,
    ),
    Migration(
        "0007_ledger_kinds_and_budget_closures",
        """
        ALTER TABLE ledger ADD COLUMN kind TEXT NOT NULL DEFAULT 'call';
        ALTER TABLE ledger ADD COLUMN note TEXT;
        CREATE TABLE budget_closures (
            rule TEXT NOT NULL,
            period_start BIGINT NOT NULL,
            ts BIGINT NOT NULL,
            request_id TEXT,
            reason TEXT NOT NULL,
            PRIMARY KEY (rule, period_start)
        );
        """,
    ),
    Migration(
        "0100_fleet_boxes",
        # Each running box renews its lease here; reservations of a box whose lease ran out are
        # booked as orphaned by whichever box notices first (fleet.py).
        """
        CREATE TABLE boxes (
            owner TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            started_at BIGINT NOT NULL,  -- microseconds since the epoch, by the server's clock
            seen_at BIGINT NOT NULL
        );
        """,
    ),
]
