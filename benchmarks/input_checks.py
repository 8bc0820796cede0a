"""JSON body checks (depth, lone surrogates, int64): what they add to ``json.loads``, in process.

    .venv/bin/python benchmarks/input_checks.py

Most bodies skip the walk entirely (no ``\\ud8..`` escape, no 19-digit integer, few brackets); a
body of many small objects is walked once, iteratively.
"""

from __future__ import annotations

import json
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hoosh_edge.doors.bodies import parse_json  # noqa: E402


def _cut(data: bytes, size: int, sep: bytes, tail: bytes) -> bytes:
    """``data`` cut to about ``size`` bytes at a separator, closed with ``tail``."""
    return data[:size].rsplit(sep, 1)[0] + tail


def cases() -> dict[str, bytes]:
    msg = {"role": "user", "content": "hi there, how are you"}
    return {
        "chat, 3 messages": json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "hello " * 20}] * 3}
        ).encode(),
        "chat, emoji escapes": json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "🦙 " * 50}]}
        ).encode(),
        "1 MB, one string": json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "x" * 1_000_000}]}
        ).encode(),
        "1 MB, 20k messages": _cut(
            json.dumps({"model": "m", "messages": [msg] * 20000}).encode(), 1_000_000, b"},", b"}]}"
        ),
        "1 MB, 200k ints": _cut(
            json.dumps({"x": list(range(200_000))}).encode(), 1_000_000, b",", b"]}"
        ),
    }


def main() -> None:
    print(f"{'body':22s} {'bytes':>9s} {'json.loads':>12s} {'parse_json':>12s}")
    for name, data in cases().items():
        n = 5 if len(data) > 10_000 else 2000
        base = min(timeit.repeat(lambda d=data: json.loads(d), number=n, repeat=5)) / n
        ours = min(timeit.repeat(lambda d=data: parse_json(d), number=n, repeat=5)) / n
        print(f"{name:22s} {len(data):9d} {base * 1000:9.3f} ms {ours * 1000:9.3f} ms")


if __name__ == "__main__":
    main()
