"""Counters, latency histograms and scrape-time gauges in a per-gateway prometheus_client registry.

Callers name a metric where they count it (``metrics.inc("hoosh_requests_total", {...})``); the
facade creates the prometheus_client metric on first use with that call's label names. Each
Gateway has its own ``CollectorRegistry``: tests and reloads build several in one process, and
the library's global registry would refuse the second set of names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("hoosh_edge")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# What /metrics serves: generate_latest writes the Prometheus text format 0.0.4.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# A ``*_created`` series per counter and histogram doubles the page and no dashboard here reads
# them; the switch is process-wide and read at scrape time, so it holds for every registry.
disable_created_metrics()

Labels = tuple[tuple[str, str], ...]
GaugeSamples = list[tuple[str, str, list[tuple[dict[str, str], float]]]]
GaugeFn = Callable[[], GaugeSamples]


def _key(labels: dict[str, str] | None) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in (labels or {}).items()))


class ScrapeGauges(Collector):
    """Gauges computed at scrape time by callbacks, one family per gauge name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fns: list[GaugeFn] = []

    def add(self, fn: GaugeFn) -> None:
        """Call ``fn`` at every scrape."""
        with self._lock:
            self._fns.append(fn)

    def collect(self) -> Iterable[Metric]:
        """Every callback's gauges; a callback that fails is left out of this scrape only."""
        with self._lock:
            fns = list(self._fns)
        for fn in fns:
            try:
                families = [self._family(*gauge) for gauge in fn()]
            except Exception as e:  # noqa: BLE001 - a broken gauge must not break the scrape
                log.warning("metrics: gauge %s failed: %s: %s",
                            getattr(fn, "__qualname__", fn), type(e).__name__, e)  # fmt: skip
                continue
            yield from families

    @staticmethod
    def _family(name: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> Metric:
        family = Metric(name, help_ or name, "gauge")
        for labels, value in samples:
            family.add_sample(name, dict(_key(labels)), float(value))
        return family


class Metrics:
    """The gateway's metrics: a small facade over one prometheus_client registry."""

    content_type = CONTENT_TYPE

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()  # guards creating metrics and children, not counting
        self._metrics: dict[str, Counter | Histogram] = {}
        self._children: dict[tuple[str, Labels], Any] = {}
        self._gauges = ScrapeGauges()
        self.registry.register(self._gauges)

    def _child(self, kind: type, name: str, labels: dict[str, str] | None, help_: str) -> Any:
        """The labelled child of metric ``name``, created on first use."""
        key = (name, _key(labels))
        child = self._children.get(key)
        if child is not None:
            return child
        with self._lock:
            child = self._children.get(key)
            if child is not None:
                return child
            metric = self._metrics.get(name)
            names = [k for k, _ in key[1]]
            if metric is None:
                metric = self._metrics[name] = self._new(kind, name, names, help_)
            elif not isinstance(metric, kind):
                raise ValueError(
                    f"metric {name} is a {type(metric).__name__}, not a {kind.__name__}"
                )
            child = metric.labels(**dict(key[1])) if names else metric
            self._children[key] = child
            return child

    def _new(self, kind: type, name: str, labelnames: list[str], help_: str) -> Any:
        if kind is Counter:
            if not name.endswith("_total"):
                # prometheus_client would expose it as NAME_total: a different name than asked.
                raise ValueError(f"counter {name} must end in _total")
            return Counter(name, help_ or name, labelnames, registry=self.registry)
        return Histogram(name, help_ or name, labelnames, buckets=LATENCY_BUCKETS,
                         registry=self.registry)  # fmt: skip

    def inc(self, name: str, labels: dict[str, str] | None = None, value: float = 1.0,
            help: str = "") -> None:  # fmt: skip
        """Add ``value`` to counter ``name`` (which ends in ``_total``)."""
        self._child(Counter, name, labels, help).inc(value)

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None,
                help: str = "") -> None:  # fmt: skip
        """Record ``value`` (seconds) in histogram ``name`` with the latency buckets."""
        self._child(Histogram, name, labels, help).observe(value)

    def gauge_callback(self, fn: GaugeFn) -> None:
        """``fn()`` returns [(name, help, [(labels dict, value), ...]), ...] at scrape time."""
        self._gauges.add(fn)

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every series of counter ``name`` with its value, read from the registry."""
        metric = self._metrics.get(name)
        if not isinstance(metric, Counter):
            return []
        return [(s.labels, s.value) for fam in metric.collect() for s in fam.samples
                if s.name == name]  # fmt: skip

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The value of one counter series (0 when it was never counted)."""
        child = self._children.get((name, _key(labels)))
        if not isinstance(child, Counter):
            return 0.0
        # A labelled child collects only its own series, so this does not walk the others.
        return next(s.value for fam in child.collect() for s in fam.samples if s.name == name)

    def malformed_chunk(self, provider: str) -> None:
        self.inc("hoosh_upstream_malformed_chunks_total", {"provider": provider},
                 help="Stream chunks from upstreams that were not valid JSON and were skipped")  # fmt: skip

    def render(self) -> str:
        """The registry in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry).decode()
