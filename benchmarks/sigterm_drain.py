"""What SIGTERM does to a chat answer still being written: how it ends, and when the process exits.

    python benchmarks/sigterm_drain.py [--answer-s 4] [--after-s 0.5] [--root CHECKOUT]

A gateway (``python hoosh_edge.py`` of the checkout ``--root``, default this one, with its default
drain time) and a fake OpenAI upstream on 127.0.0.1 whose answer takes ``--answer-s``; SIGTERM
goes ``--after-s`` into the call. Prints the answer's status and when it ended, and when the
process exited, in seconds from the signal.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._procs import ROOT, spawn_gateway, wait_healthy  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402


def config(fake: FakeOpenAI, tmp: Path) -> str:
    return f"""
[server]
log_level = "warning"
data_dir = "{tmp / "data"}"
models_dir = "{tmp / "no-models"}"
[[providers]]
name = "fake"
type = "openai"
base_url = "{fake.url}"
api_key = "{fake.api_key}"
models = ["gpt-*"]
timeout_s = 60
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answer-s", type=float, default=4.0, help="how long the upstream takes")
    ap.add_argument("--after-s", type=float, default=0.5, help="when SIGTERM comes, into the call")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose gateway to run")
    args = ap.parse_args()
    with FakeOpenAI() as fake, tempfile.TemporaryDirectory() as tmp:
        proc, url = spawn_gateway(config(fake, Path(tmp)), Path(tmp), root=args.root)
        wait_healthy(url)
        fake.script("slow", args.answer_s)
        box: dict[str, Any] = {}

        def ask() -> None:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            try:
                box["status"] = requests.post(url + "/v1/chat/completions", json=body,
                                              timeout=60).status_code  # fmt: skip
            except requests.RequestException as e:
                box["status"] = type(e).__name__
            box["at"] = time.monotonic()

        caller = threading.Thread(target=ask)
        caller.start()
        time.sleep(args.after_s)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        exited = time.monotonic()
        caller.join(60)
    print(f"answer of {args.answer_s:g} s, SIGTERM {args.after_s:g} s into it: "
          f"{box['status']} at +{box['at'] - signalled:.2f} s; "
          f"exit {code} at +{exited - signalled:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
