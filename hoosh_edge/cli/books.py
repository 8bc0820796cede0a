"""The books' subcommands: keys, budget and cache, on the gateway's books directly.

The books are the SQLite file in data_dir, or the fleet's PostgreSQL when ``[database]`` names
one (the cache there only with ``[cache] shared = true``).

The running gateway sees a change on its next request; no gateway need be running.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hoosh_edge.config import Config


def _db(config: Config, *, shared: bool = True):
    """The books: the fleet's PostgreSQL when ``[database]`` names one, else the SQLite file."""
    from hoosh_edge.books.db import Database

    cfg = config.database
    if shared and cfg is not None and cfg.url:
        from hoosh_edge.books.fleet import open_shared_books

        return open_shared_books(cfg)
    return Database.open(Path(config.server.data_dir))


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


# -- keys ---------------------------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace, config: Config) -> int:
    from hoosh_edge.books.keys import KeyStore
    from hoosh_edge.books.ledger import SpendLedger

    db = _db(config)
    try:
        store = KeyStore(db)
        if args.action == "create":
            record, secret = store.create(
                args.name,
                allowed_models=args.models or None,
                rpm=args.rpm,
                max_concurrent=args.max_concurrent,
                budget_usd=args.budget,
            )
            if args.budget is not None:
                SpendLedger(db, timezone=config.timezone).create_rule({
                    "name": f"key-{record.name}", "scope": f"key:{record.name}", "metric": "usd",
                    "limit": args.budget, "period": args.budget_period, "action": "block"})  # fmt: skip
            print(f"Created key '{record.name}'. It is shown only this once; store it now:\n")
            print(f"  {secret}\n")
            print("Clients send it as:  Authorization: Bearer <key>")
            return 0
        if args.action == "list":
            rows = [k.to_dict() for k in store.list()]
            _print_table(rows, ["name", "prefix", "kind", "rpm", "max_concurrent", "budget_usd",
                                "created_at", "last_used_at", "revoked_at"])  # fmt: skip
            return 0
        if args.action == "revoke":
            from hoosh_edge.errors import LastKey
            from hoosh_edge.exposure import last_key_message, must_keep_a_key

            # The running gateway re-checks too (it may listen elsewhere than this config says).
            keep = last_key_message(config.server, args.name)
            try:
                revoked = store.revoke(args.name, keep_one=keep if must_keep_a_key(config.server)
                                       else None)  # fmt: skip
            except LastKey as e:
                print(f"Refused: {e.message}", file=sys.stderr)
                return 1
            if revoked:
                print(f"Revoked key '{args.name}'.")
                return 0
            print(f"No active key named '{args.name}'.", file=sys.stderr)
            return 1
    finally:
        db.close()
    return 2


# -- budget -------------------------------------------------------------------------------------


def cmd_budget(args: argparse.Namespace, config: Config) -> int:
    from hoosh_edge.books.ledger import SpendLedger

    db = _db(config)
    try:
        ledger = SpendLedger(db, timezone=config.timezone)
        if args.action == "list":
            # The same read model as /admin/budgets, the status page and /metrics.
            rows = [s.rule.to_dict() | s.figures() for s in ledger.rule_states()]
            _print_table(rows, ["name", "scope", "metric", "limit", "used", "reserved",
                                "remaining", "period", "action", "source"])  # fmt: skip
            return 0
        if args.action == "set":
            fields = {k: v for k, v in (("scope", args.scope), ("metric", args.metric),
                                        ("limit", args.limit), ("period", args.period),
                                        ("action", args.rule_action)) if v is not None}  # fmt: skip
            names = {r.name for r in ledger.list_rules()}
            if args.name in names:
                rule = ledger.update_rule(args.name, fields)
                print(f"Updated budget rule '{rule.name}'.")
            else:
                rule = ledger.create_rule({"name": args.name, "scope": "all", "metric": "usd",
                                           "period": "day", "action": "block", **fields})  # fmt: skip
                print(f"Created budget rule '{rule.name}'.")
            print(json.dumps(rule.to_dict(), indent=2))
            return 0
        if args.action == "rm":
            ledger.delete_rule(args.name)
            print(f"Removed budget rule '{args.name}'.")
            return 0
        if args.action == "correct":
            from hoosh_edge.books.orphans import correct

            if not args.name or args.usd is None or not args.reason:
                print(
                    "hoosh-edge: budget correct REQUEST_ID --usd X --reason TEXT", file=sys.stderr
                )
                return 2
            fixed = correct(ledger, args.name, args.usd, args.reason)
            print(f"Request {fixed['request_id']}: {fixed['was_usd']} -> {fixed['now_usd']} USD "
                  f"(ledger entry {fixed['entry']}, {fixed['delta_usd']}): {fixed['reason']}")  # fmt: skip
            return 0
        if args.action == "usage":
            rows = ledger.usage_summary(args.period or "day", args.group_by)
            _print_table(rows, [args.group_by, "requests", "prompt_tokens", "completion_tokens",
                                "audio_seconds", "characters", "cost_usd", "orphaned"])  # fmt: skip
            return 0
    finally:
        db.close()
    return 2


# -- cache --------------------------------------------------------------------------------------


def cmd_cache(args: argparse.Namespace, config: Config) -> int:
    from hoosh_edge.books.cache import CachePolicy, ResponseCache

    policy = CachePolicy.from_config(config.cache)
    db = _db(config, shared=policy.shared)  # this box's file unless [cache] shared = true
    try:
        cache = ResponseCache(db, policy)
        if args.action == "stats":
            stats = cache.stats()
            for k in (
                "enabled",
                "entries",
                "bytes",
                "expired",
                "max_entries",
                "max_bytes",
                "ttl_s",
            ):
                print(f"{k:12} {stats.get(k)}")
            print("(hit rate is counted by the running gateway: GET /admin/cache)")
            return 0
        if args.action == "clear":
            n = cache.clear(args.model)
            print(f"Removed {n} cached answer(s).")
            return 0
    finally:
        db.close()
    return 2
