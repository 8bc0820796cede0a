"""/metrics as Prometheus reads it, the status page's counts against it, and the facade itself."""

from __future__ import annotations

import threading

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from hoosh_edge.doors.status import request_totals
from hoosh_edge.metrics import LATENCY_BUCKETS, Metrics
from tests.conftest import openai_provider_toml

CHAT = "/v1/chat/completions"


def families(text: str) -> dict[tuple[str, str], dict[str, list]]:
    """{(family name, type): {sample name: [(labels, value), ...]}} from an exposition."""
    out: dict[tuple[str, str], dict[str, list]] = {}
    for fam in text_string_to_metric_families(text):
        by_sample = out.setdefault((fam.name, fam.type), {})
        for s in fam.samples:
            by_sample.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics_parse_as_prometheus_and_the_status_counts_match(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        assert requests.post(gw.url + CHAT, json=body, timeout=20).status_code == 200
    bad = requests.post(gw.url + CHAT, json={"model": "gpt-4o-mini"}, timeout=20)
    assert bad.status_code == 400
    requests.get(gw.url + "/v1/health", timeout=5)
    r = requests.get(gw.url + "/metrics", timeout=5)
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = families(r.text)

    requests_ = fams[("hoosh_requests", "counter")]["hoosh_requests_total"]
    by = {(lb["route"], lb["status"]): v for lb, v in requests_}
    assert by[(CHAT, "200")] == 3 and by[(CHAT, "400")] == 1
    assert by[("/v1/health", "200")] == 1
    tokens = fams[("hoosh_tokens_in", "counter")]["hoosh_tokens_in_total"]
    assert [lb for lb, _ in tokens] == [{"provider": "fake"}]

    hist = fams[("hoosh_request_duration_seconds", "histogram")]
    chat_buckets = [(lb["le"], v) for lb, v in hist["hoosh_request_duration_seconds_bucket"]
                    if lb["route"] == CHAT]  # fmt: skip
    assert [float(le) for le, _ in chat_buckets] == [*LATENCY_BUCKETS, float("inf")]
    assert chat_buckets[-1][1] == 4  # every chat request, whatever its status
    counts = dict((lb["route"], v) for lb, v in hist["hoosh_request_duration_seconds_count"])
    assert counts[CHAT] == 4

    for name in ("hoosh_connections_open", "hoosh_connections_max", "hoosh_pool_threads"):
        assert (name, "gauge") in fams, name
    assert fams[("hoosh_connections_max", "gauge")]["hoosh_connections_max"][0][1] > 0
    names = {s for sample_names in fams.values() for s in sample_names}
    assert not [n for n in names if n.endswith("_created") or n.endswith("_total_total")]
    type_lines = [ln.split()[2] for ln in r.text.splitlines() if ln.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines))  # one TYPE line per name, as Prometheus wants

    snap = requests.get(gw.url + "/admin/status.json", timeout=5).json()["requests"]
    v1 = [(lb["status"], v) for lb, v in requests_ if lb["route"].startswith("/v1/")]
    assert snap["total"] == sum(v for _, v in v1) == 5
    for cls in ("2xx", "4xx", "5xx"):
        assert snap["by_class"][cls] == sum(v for st, v in v1 if st[0] == cls[0]), cls


def test_status_counts_read_the_registry():
    m = Metrics()
    for route, status, n in ((CHAT, "200", 4), (CHAT, "503", 2), ("/v1/models", "401", 1),
                             ("/admin/status.json", "200", 9)):  # fmt: skip
        m.inc("hoosh_requests_total", {"route": route, "status": status}, n)
    assert request_totals(m) == {"total": 7, "by_class": {"2xx": 4, "4xx": 1, "5xx": 2}}
    assert (
        m.registry.get_sample_value("hoosh_requests_total", {"route": CHAT, "status": "503"}) == 2
    )
    assert m.value("hoosh_requests_total", {"status": "503", "route": CHAT}) == 2
    assert m.value("hoosh_requests_total", {"route": CHAT, "status": "418"}) == 0


def test_counting_from_many_threads_loses_nothing():
    m = Metrics()
    start = threading.Barrier(8)

    def work(i: int) -> None:
        start.wait()
        for _ in range(5000):
            m.inc("hoosh_requests_total", {"route": f"/v1/r{i % 2}", "status": "200"})
            m.observe("hoosh_request_duration_seconds", 0.02, {"route": "/v1/r"})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.value("hoosh_requests_total", {"route": "/v1/r0", "status": "200"}) == 20000
    assert m.value("hoosh_requests_total", {"route": "/v1/r1", "status": "200"}) == 20000
    count = "hoosh_request_duration_seconds_count"
    assert m.registry.get_sample_value(count, {"route": "/v1/r"}) == 40000


def test_each_gateway_has_its_own_registry_and_a_broken_gauge_skips_only_itself():
    a, b = Metrics(), Metrics()
    a.inc("hoosh_cache_total", {"result": "hit"})
    b.inc("hoosh_cache_total", {"result": "hit"}, 5)  # same name, no clash: separate registries
    assert a.value("hoosh_cache_total", {"result": "hit"}) == 1
    a.gauge_callback(lambda: 1 / 0)
    a.gauge_callback(lambda: [("hoosh_connections_open", "open", [({}, 3)])])
    fams = families(a.render())
    assert fams[("hoosh_connections_open", "gauge")]["hoosh_connections_open"] == [({}, 3.0)]
    assert ("hoosh_connections_open", "gauge") not in families(b.render())


def test_misnamed_or_mistyped_metrics_are_refused():
    m = Metrics()
    with pytest.raises(ValueError, match="must end in _total"):
        m.inc("hoosh_requests", {"route": "/v1/x"})  # would be exposed as hoosh_requests_total
    m.observe("hoosh_request_duration_seconds", 0.1, {"route": "/v1/x"})
    with pytest.raises(ValueError, match="is a Histogram"):
        m.inc("hoosh_request_duration_seconds", {"route": "/v1/y"})
