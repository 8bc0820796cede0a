"""CPU per call of the Anthropic translation alone, part by part (no HTTP, no gateway).

    python benchmarks/anthropic_translation.py [--pieces 6] [--rounds 5] [--calls 2000]

One streamed call through /v1/messages to an Anthropic upstream takes every part: the door's
request translation, the provider's, the provider's stream (Anthropic events -> chunks), the door's
(chunks -> Anthropic events) and its SSE framing. JSON decoding of the upstream's events is shown
beside them for scale. Each figure is the best of ``--rounds``, in microseconds of process CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hoosh_edge.doors.anthropic_messages import frame  # noqa: E402
from hoosh_edge.formats.anthropic_request import to_chat_request, to_messages_request  # noqa: E402
from hoosh_edge.formats.anthropic_stream import StreamEvents, StreamTranslator  # noqa: E402
from tests.fake_anthropic import message, message_events  # noqa: E402

REQUEST = {
    "model": "claude-x",
    "max_tokens": 256,
    "system": "Be brief.",
    "stream": True,
    "messages": [{"role": "user", "content": "Tell me about Paris in three sentences."}],
}


def best_us(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """The best per-call CPU time of ``fn`` over ``rounds`` runs of ``calls`` calls."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t0) / calls * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pieces", type=int, default=6, help="characters per streamed text delta")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    answer = message("Paris is the capital of France. " * 8)
    raw = [data for _, data in message_events(answer, piece=args.pieces)]
    events = [json.loads(data) for data in raw]
    chat = to_chat_request(REQUEST)

    def provider() -> list[dict]:
        t = StreamTranslator("claude-x", "claude")
        return [c for e in events for c in t.feed(e["type"], e)]

    chunks = provider()

    def door() -> list[dict]:
        d = StreamEvents("msg_1", "claude-x", 10, [])
        return d.start() + [e for c in chunks for e in d.chunk(c)] + d.finish()

    out = door()
    parts = {
        "door request (to_chat_request)": lambda: to_chat_request(REQUEST),
        "provider request (to_messages_request)": lambda: to_messages_request("claude-x", chat),
        f"provider stream ({len(events)} events -> {len(chunks)} chunks)": provider,
        f"door stream ({len(chunks)} chunks -> {len(out)} events)": door,
        f"door SSE framing ({len(out)} events)": lambda: [frame(e) for e in out],
        f"for scale: json.loads of {len(raw)} upstream events": lambda: [
            json.loads(r) for r in raw
        ],
    }
    for name, fn in parts.items():
        print(f"{best_us(fn, args.calls, args.rounds):8.1f} us  {name}")


if __name__ == "__main__":
    main()
