"""The least a proxy on the gateway's stack can do: one of three minimal chat proxies.

    python benchmarks/_floor_proxy.py KIND UPSTREAM_BASE DATA_DIR

KIND is ``wsgi`` (gevent's pywsgi and a bare WSGI function), ``flask`` (one Flask route,
``request.get_json()`` and ``jsonify``) or ``flask-sqlite`` (that, plus one durable ledger row
per call: an INSERT on a WAL database with ``synchronous=FULL``, in a gevent ThreadPool of two
threads as the gateway's books pool is). Each forwards ``POST /v1/chat/completions`` to
UPSTREAM_BASE on one keep-alive urllib3 PoolManager and answers with the upstream's JSON. The
process is patched as the gateway's is (``patch_gevent``: sockets, never threads) and listens on a
free loopback port with TCP_NODELAY (``make_listener``), then prints ``listening on URL``, as the
gateway does, for ``benchmarks/floor.py`` to read. No keys, limits, budgets, metrics or logs:
the floor under what the gateway adds.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hoosh_edge.serve.boot import patch_gevent  # noqa: E402

patch_gevent()

import json  # noqa: E402
import sqlite3  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

import gevent.threadpool  # noqa: E402
import urllib3  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from hoosh_edge.serve.server import make_listener  # noqa: E402
from hoosh_edge.workers import native_lock  # noqa: E402

HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
KINDS = ("wsgi", "flask", "flask-sqlite")


def bare_app(http: urllib3.PoolManager, url: str) -> Callable[..., Iterable[bytes]]:
    """A WSGI function that passes the body through and the upstream's bytes back."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        data = http.request("POST", url, body=body, headers=HEADERS, retries=False).data
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])  # fmt: skip
        return [data]

    return app


def ledger(data_dir: Path) -> Callable[[str, int], None]:
    """One durable INSERT per call, run in a two-thread gevent ThreadPool (the books pool's size)."""
    conn = sqlite3.connect(str(data_dir / "floor.db"), isolation_level=None,
                           check_same_thread=False)  # fmt: skip
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS ledger (request_id TEXT, model TEXT, cost_us INTEGER)")
    lock = native_lock()  # one writer at a time on the shared connection, as the gateway's
    pool = gevent.threadpool.ThreadPool(2)

    def insert(request_id: str, cost_us: int) -> None:
        with lock:
            conn.execute(
                "INSERT INTO ledger VALUES (?, ?, ?)", (request_id, "gpt-4o-mini", cost_us)
            )

    return lambda request_id, cost_us: pool.apply(insert, (request_id, cost_us))


def flask_app(http: urllib3.PoolManager, url: str, write: Callable[[str, int], None] | None) -> Any:
    """One Flask route that parses the request, forwards it, and jsonifies the answer."""
    from flask import Flask, jsonify, request

    app = Flask("floor")

    @app.post("/v1/chat/completions")
    def chat() -> Any:
        body = request.get_json()
        resp = http.request("POST", url, body=json.dumps(body).encode(), headers=HEADERS,
                            retries=False)  # fmt: skip
        answer = json.loads(resp.data)
        if write is not None:
            write(uuid.uuid4().hex, 3)
        return jsonify(answer)

    return app


def main() -> None:
    kind, upstream, data_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if kind not in KINDS:
        raise SystemExit(f"KIND is one of {', '.join(KINDS)}")
    http = urllib3.PoolManager(maxsize=64)
    url = upstream.rstrip("/") + "/chat/completions"
    if kind == "wsgi":
        app = bare_app(http, url)
    else:
        app = flask_app(http, url, ledger(data_dir) if kind == "flask-sqlite" else None)
    listener = make_listener("127.0.0.1", 0)
    server = WSGIServer(listener, app, log=None)
    server.start()
    print(f"{kind} listening on http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
