"""Where a gateway's CPU goes, per layer, from a py-spy profile in its raw (collapsed) format.

    .venv/bin/python benchmarks/layers.py PROFILE.txt [--top 25]

``benchmarks/overhead.py --profile PREFIX`` writes such profiles (``py-spy record --gil``: only
samples where the GIL is held, i.e. Python running, not waiting). Each sample is given to the
deepest frame that belongs to a layer below; then the functions with the most samples of their
own, and the most samples in total (themselves and what they called).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

# Checked from the innermost frame outwards: the first frame that matches names the layer.
LAYERS = [
    ("SQLite and the ledger", r"books/(ledger|db|spend|storage|pending)\.py|sqlite"),
    ("keys and auth", r"books/keys\.py|exposure\.py"),
    ("metrics", r"prometheus_client|hoosh_edge/metrics\.py|pipeline/record\.py"),
    (
        "provider HTTP client",
        r"requests/|urllib3/|http/client|providers/(http|direct|openai_compat)",
    ),
    ("JSON", r"json/|flask/json"),
    ("logging and the access line", r"logging/|log_access"),
    ("header parsing", r"serve/headers\.py|email/"),
    ("pipeline, formats, doors", r"hoosh_edge/(pipeline|formats|doors)/|estimate\.py|pricing\.py"),
    ("app.py hooks", r"hoosh_edge/app\.py|doors/browser\.py"),
    (
        "thread hop (run_books)",
        r"hoosh_edge/(threads|workers)\.py|gevent/threadpool|gevent/_threading",
    ),
    ("Flask and werkzeug", r"flask/|werkzeug/"),
    ("gevent WSGI server and hub", r"gevent/|serve/connections\.py"),
]
_RULES = [(name, re.compile(rx)) for name, rx in LAYERS]


def summarize(path: Path, top: int = 25) -> str:
    """The per-layer shares, then the top functions by own and by total samples."""
    layer: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    n = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        n += k
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += k
        for f in set(frames):
            total[f] += k
        hit = next((name for f in reversed(frames) for name, rx in _RULES if rx.search(f)), None)
        layer[hit or "other"] += k
    if not n:
        return f"{path}: no samples"
    out = [f"{path}: {n} samples with the GIL held", "per layer:"]
    out += [f"  {100 * v / n:5.1f}%  {k}" for k, v in layer.most_common()]
    out.append("most samples of their own:")
    out += [f"  {100 * v / n:5.1f}%  {k}" for k, v in own.most_common(top)]
    out.append("most samples in total:")
    out += [f"  {100 * v / n:5.1f}%  {k}" for k, v in total.most_common(top)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    print(summarize(args.profile, args.top))


if __name__ == "__main__":
    main()
