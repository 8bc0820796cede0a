"""The operator's subcommands: keys, budget, cache, status, doctor, chat, transcribe, speak.

Commands that change state (keys, budget, cache) work on the gateway's SQLite file directly —
the running gateway sees the change on its next request. Commands that use a model (chat,
transcribe, speak) and ``status`` talk to a running gateway (``--server``, default the config's
address).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hoosh_edge.config import Config


def _db(config: Config):
    from hoosh_edge.books.db import Database

    return Database.open(Path(config.server.data_dir))


def _server_url(args: argparse.Namespace, config: Config) -> str:
    if getattr(args, "server", None):
        return args.server.rstrip("/")
    host = config.server.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{config.server.port}"


def _headers(args: argparse.Namespace) -> dict[str, str]:
    key = getattr(args, "api_key", None) or os.environ.get("HOOSH_EDGE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


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

    db = _db(config)
    try:
        cache = ResponseCache(db, CachePolicy.from_config(config.cache))
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


# -- talking to a running gateway --------------------------------------------------------------


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    import requests

    url = _server_url(args, config)
    try:
        health = requests.get(url + "/v1/health", headers=_headers(args), timeout=5)
    except requests.RequestException as e:
        print(f"No gateway answers at {url}: {e.__class__.__name__}", file=sys.stderr)
        return 1
    if health.status_code != 200:
        print(
            f"{url}/v1/health answered {health.status_code}: {health.text[:200]}", file=sys.stderr
        )
        return 1
    doc = health.json()
    print(f"gateway {url}: {doc['status']}")
    storage = doc.get("storage")
    if storage:
        extra = f" — {storage['error']}" if storage.get("error") else ""
        waiting = storage.get("pending_usage") or 0
        extra += f" ({waiting} usage record(s) wait in memory)" if waiting else ""
        print(f"  storage {storage['data_dir']}: {storage['state']}{extra}")
    for p in doc["providers"]:
        extra = f" — {p['last_error']}" if p.get("last_error") else ""
        print(f"  provider {p['name']:16} {p['state']}{extra}")
    for m in doc.get("local_models") or ():
        state = "loaded" if m["loaded"] else "not loaded"
        print(f"  model {m['id']:20} {m['kind']:4} {state}, queue {m['queue_depth']}")
    return 0


def cmd_chat(args: argparse.Namespace, config: Config) -> int:
    import requests

    url = _server_url(args, config)
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": " ".join(args.prompt)})
    body = {"model": args.model, "messages": messages, "stream": True}
    try:
        with requests.post(url + "/v1/chat/completions", json=body, headers=_headers(args),
                           stream=True, timeout=(5, 600)) as r:  # fmt: skip
            if r.status_code != 200:
                print(r.json().get("error", {}).get("message", r.text), file=sys.stderr)
                return 1
            for line in r.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    print(f"\n{chunk['error']['message']}", file=sys.stderr)
                    return 1
                for choice in chunk.get("choices") or ():
                    sys.stdout.write((choice.get("delta") or {}).get("content") or "")
                    sys.stdout.flush()
    except requests.RequestException as e:
        print(f"No gateway answers at {url}: {e.__class__.__name__}", file=sys.stderr)
        return 1
    print()
    return 0


def cmd_transcribe(args: argparse.Namespace, config: Config) -> int:
    import requests

    url = _server_url(args, config)
    path = Path(args.file)
    with path.open("rb") as f:
        r = requests.post(url + "/v1/audio/transcriptions", headers=_headers(args), timeout=600,
                          data={"model": args.model, "response_format": args.format},
                          files={"file": (path.name, f, "application/octet-stream")})  # fmt: skip
    if r.status_code != 200:
        print(r.json().get("error", {}).get("message", r.text), file=sys.stderr)
        return 1
    print(r.json()["text"] if args.format == "json" else r.text)
    return 0


def cmd_speak(args: argparse.Namespace, config: Config) -> int:
    import requests

    url = _server_url(args, config)
    fmt = args.format or (Path(args.output).suffix.lstrip(".") or "wav")
    body = {"model": args.model, "voice": args.voice, "input": " ".join(args.text),
            "response_format": fmt}  # fmt: skip
    with requests.post(url + "/v1/audio/speech", json=body, headers=_headers(args), stream=True,
                       timeout=600) as r:  # fmt: skip
        if r.status_code != 200:
            print(r.json().get("error", {}).get("message", r.text), file=sys.stderr)
            return 1
        with open(args.output, "wb") as out:
            for chunk in r.iter_content(65536):
                out.write(chunk)
    print(f"Wrote {args.output} ({os.path.getsize(args.output)} bytes, {fmt}).")
    return 0


# -- doctor -------------------------------------------------------------------------------------


def _recover_command(broken: Path, new: Path) -> str:
    """The best way the installed ``sqlite3`` command has to copy out what a damaged file holds.

    ``.recover`` reads page by page and saves the most, but needs the ``sqlite_dbpage`` table,
    which Debian's build (bookworm, and so Raspberry Pi OS) lacks: there ``.recover`` fails with
    "no such table: sqlite_dbpage". ``.dump`` works everywhere; it ends with ROLLBACK when it met
    damage, which the ``sed`` turns into COMMIT so what it could read is kept.
    """
    recover = f"sqlite3 {broken} .recover | sqlite3 {new}"
    dump = (f"sqlite3 {broken} .dump | sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' "
            f"| sqlite3 {new}")  # fmt: skip
    exe = shutil.which("sqlite3")
    if exe is None:
        return f"{dump}   (first: sudo apt-get install sqlite3)"
    try:
        probe = subprocess.run([exe, ":memory:", "SELECT count(*) FROM sqlite_dbpage"],
                               capture_output=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return dump
    return recover if probe.returncode == 0 and not probe.stderr else dump


def _recovery_steps(path: Path) -> list[str]:
    """How to get a working database back from a damaged one, a line a step."""
    broken = path.with_name(path.name + ".broken")
    new = path.with_name(path.name + ".recovered")
    return [
        "the gateway will not start on it, and nothing has changed it. To recover:",
        "1. stop the service: sudo systemctl stop hoosh-edge",
        f"2. copy it aside (with its -wal file, if there is one): cp -a {path} {broken}",
        "3. as the service user (sudo -u hoosh-edge sh -c '...'), so the new file is its own,",
        "   copy out what SQLite can still read into a new file:",
        f"   {_recover_command(broken, new)}",
        f"   then put it in place: mv {new} {path} (and remove {path}-wal and {path}-shm)",
        f"   or start fresh: mv {path} {broken} (budgets in the config come back; API keys,",
        "   the spend ledger and the cache are lost)",
        "4. check, then start: hoosh-edge doctor && sudo systemctl start hoosh-edge",
    ]


def _doctor_database(data_dir: Path) -> int:
    """Check the database file read-only (``PRAGMA integrity_check``); 1 if it is damaged."""
    from hoosh_edge.books import storage
    from hoosh_edge.books.db import DB_FILENAME

    path = data_dir / DB_FILENAME
    if not path.exists():
        print(f"[--] database {path}: not created yet (the gateway creates it at start)")
        return 0
    try:
        with path.open("rb") as f:
            header = f.read(100)
            size = os.fstat(f.fileno()).st_size
        found = [] if size == 0 else [p for p in [storage.header_problem(header, size)] if p]
        found = found or storage.integrity_problems(path)
    except OSError as e:
        print(f"[!!] database {path}: cannot read it ({e.strerror or e})\n"
              "     fix: make it readable and writable by the user running hoosh-edge")  # fmt: skip
        return 1
    except Exception as e:  # noqa: BLE001 - the doctor reports, never crashes
        found = [f"{type(e).__name__}: {e}"]
    if not found:
        print(f"[ok] database {path}: integrity_check ok")
        return 0
    print(f"[!!] database {path}: damaged ({'; '.join(found[:3])})")
    for line in _recovery_steps(path):
        print(f"     fix: {line}")
    return 1


def cmd_doctor(args: argparse.Namespace, config: Config) -> int:
    """Check what the gateway needs and say what to fix."""
    import importlib.util

    problems = 0

    def report(ok: bool, what: str, fix: str = "") -> None:
        nonlocal problems
        print(f"[{'ok' if ok else '!!'}] {what}" + ("" if ok else f"\n     fix: {fix}"))
        problems += 0 if ok else 1

    report(sys.version_info >= (3, 10), f"Python {sys.version.split()[0]}", "use Python 3.10+")
    for mod, pkg in (("flask", "flask"), ("gevent", "gevent"), ("requests", "requests"),
                     ("sqlite_utils", "sqlite-utils"), ("llama_cpp", "llama-cpp-python"),
                     ("pywhispercpp", "pywhispercpp"), ("onnxruntime", "onnxruntime"),
                     ("piper_phonemize", "piper-phonemize"), ("soundfile", "soundfile"),
                     ("soxr", "soxr")):  # fmt: skip
        found = importlib.util.find_spec(mod) is not None
        report(found, f"package {pkg}", f"pip install '{pkg}' (or scripts/setup)")
    from hoosh_edge.backends import modelstore
    from hoosh_edge.device import mem_available_bytes

    models_dir = Path(config.server.models_dir)
    try:
        results = modelstore.verify(modelstore.load_manifest(), models_dir)
        seen: set[tuple[str, str]] = set()
        for res in results:
            if (res.model_id, res.status) in seen:
                continue
            seen.add((res.model_id, res.status))
            if res.status == "missing":
                print(f"[--] model {res.model_id}: not installed "
                      f"(hoosh-edge models pull {res.model_id})")  # fmt: skip
            else:
                report(res.status == "ok", f"model {res.model_id}: {res.status}",
                       f"hoosh-edge models rm {res.model_id} && hoosh-edge models pull "
                       f"{res.model_id}")  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the doctor reports, never crashes
        report(False, f"model check: {e}", "see models/README.md")
    avail = mem_available_bytes()
    if avail is not None:
        report(avail > 512 * 1024 * 1024, f"free memory {avail // (1024 * 1024)} MiB",
               "stop other programs or use smaller models")  # fmt: skip
    data_dir = Path(config.server.data_dir)
    probe = data_dir if data_dir.exists() else data_dir.parent
    free = shutil.disk_usage(probe if probe.exists() else Path.cwd()).free
    report(free > 1024**3, f"free disk {free // (1024 * 1024)} MiB at {probe}",
           "free some disk space: the database and models live there")  # fmt: skip
    problems += _doctor_database(data_dir)
    report(True, f"config {config.source or '(defaults)'} is valid")
    for w in config.warnings:
        report(False, f"config: {w}", "set the variable or fix the config")
    print("All good." if not problems else f"{problems} problem(s) found.")
    return 0 if not problems else 1
