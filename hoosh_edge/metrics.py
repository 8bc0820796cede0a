"""Counters and histograms in memory, rendered in Prometheus text format at /metrics."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: dict[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


def _fmt_labels(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    items = list(labels) + list(extra)
    if not items:
        return ""

    def esc(v):
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')  # noqa: E731

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in items) + "}"


class Metrics:
    """A small registry: counters, gauges (callbacks) and histograms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._help: dict[str, tuple[str, str]] = {}
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self._gauges: list = []

    def inc(self, name: str, labels: dict[str, str] | None = None, value: float = 1.0,
            help: str = "") -> None:  # fmt: skip
        with self._lock:
            self._help.setdefault(name, ("counter", help))
            self._counters[name][_labels(labels)] += value

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None,
                help: str = "") -> None:  # fmt: skip
        key = _labels(labels)
        with self._lock:
            self._help.setdefault(name, ("histogram", help))
            series = self._hist[name].get(key)
            if series is None:
                series = self._hist[name][key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            for i, bound in enumerate(LATENCY_BUCKETS):
                if value <= bound:
                    series[i] += 1
            series[-2] += 1  # count
            series[-1] += value  # sum

    def gauge_callback(self, fn) -> None:
        """``fn()`` returns [(name, help, [(labels dict, value), ...]), ...] at scrape time."""
        self._gauges.append(fn)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        with self._lock:
            return self._counters.get(name, {}).get(_labels(labels), 0.0)

    def malformed_chunk(self, provider: str) -> None:
        self.inc("hoosh_upstream_malformed_chunks_total", {"provider": provider},
                 help="Stream chunks from upstreams that were not valid JSON and were skipped")  # fmt: skip

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                kind, help_ = self._help.get(name, ("counter", ""))
                out.append(f"# HELP {name} {help_ or name}")
                out.append(f"# TYPE {name} {kind}")
                for labels, v in sorted(series.items()):
                    out.append(f"{name}{_fmt_labels(labels)} {v:g}")
            for name, series in sorted(self._hist.items()):
                _, help_ = self._help.get(name, ("histogram", ""))
                out.append(f"# HELP {name} {help_ or name}")
                out.append(f"# TYPE {name} histogram")
                for labels, s in sorted(series.items()):
                    for i, bound in enumerate(LATENCY_BUCKETS):
                        out.append(
                            f"{name}_bucket{_fmt_labels(labels, [('le', f'{bound:g}')])} {s[i]:g}"
                        )
                    out.append(f"{name}_bucket{_fmt_labels(labels, [('le', '+Inf')])} {s[-2]:g}")
                    out.append(f"{name}_count{_fmt_labels(labels)} {s[-2]:g}")
                    out.append(f"{name}_sum{_fmt_labels(labels)} {s[-1]:g}")
        for fn in self._gauges:
            try:
                gauges = fn()
            except Exception:  # noqa: BLE001 - a broken gauge must not break the scrape
                continue
            for name, help_, samples in gauges:
                out.append(f"# HELP {name} {help_ or name}")
                out.append(f"# TYPE {name} gauge")
                for labels, v in samples:
                    out.append(f"{name}{_fmt_labels(_labels(labels))} {v:g}")
        return "\n".join(out) + "\n"
