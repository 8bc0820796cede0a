"""Subcommands that talk to a running gateway: status, chat, transcribe and speak.

The gateway is ``--server`` (default the config's address); ``--api-key`` or
``HOOSH_EDGE_API_KEY`` is sent as a bearer key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hoosh_edge.config import Config


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
