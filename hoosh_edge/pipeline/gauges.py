"""Gauges read at scrape time: models, queues, budgets, storage, cache, device."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hoosh_edge import device
from hoosh_edge.errors import StorageUnavailable

if TYPE_CHECKING:
    from hoosh_edge.gateway import Gateway

Gauge = tuple[str, str, list[tuple[dict[str, str], float]]]


def gateway_gauges(gw: Gateway) -> list[Gauge]:
    """Every gauge of one gateway, from the same read models the status page uses."""
    out: list[Gauge] = []
    status = gw.pool.status()
    out.append(
        (
            "hoosh_model_loaded",
            "1 when the on-device model is in memory",
            [({"model": m["id"], "kind": m["kind"]}, float(m["loaded"])) for m in status],
        )
    )
    out.append(
        (
            "hoosh_model_memory_bytes",
            "Estimated memory of each loaded model",
            [({"model": m["id"]}, m["estimate_bytes"] if m["loaded"] else 0) for m in status],
        )
    )
    out.append(
        (
            "hoosh_model_queue_depth",
            "Requests waiting for each model",
            [({"model": m["id"]}, m["queue_depth"]) for m in status],
        )
    )
    samples = []
    try:
        states = gw.ledger.rule_states()
    except StorageUnavailable:
        states = []  # the shared books' server is away: the scrape goes on without them
    for state in states:
        rule = state.rule
        samples.append(
            (
                {"rule": rule.name, "metric": rule.metric, "unit": rule.unit},
                float(rule.format_amount(state.remaining)),
            )
        )
    out.append(("hoosh_budget_remaining", "What each budget rule has left this period", samples))
    out.append(
        (
            "hoosh_storage_writable",
            "1 while the data folder takes writes, 0 after a write failed",
            [({}, 1.0 if gw.db.state.ok and gw.ledger.db.state.ok else 0.0)],
        )
    )
    books = gw.accountant.pending.report()
    out.append(
        (
            "hoosh_usage_pending",
            "Usage records waiting in memory for the disk",
            [({}, books["pending_usage"])],
        )
    )
    out.append(
        (
            "hoosh_usage_dropped",
            "Usage records lost because the disk was full",
            [({}, books["dropped_usage"])],
        )
    )
    if gw.prompt_states is not None:
        ps = gw.prompt_states.stats()
        out.append(("hoosh_prompt_cache_bytes", "Bytes of saved prompt states",
                    [({"where": "ram"}, ps["ram_bytes"]), ({"where": "disk"}, ps["disk_bytes"])]))  # fmt: skip
        out.append(("hoosh_prompt_cache_entries", "Saved prompt states", [({}, ps["entries"])]))
        out.append(("hoosh_prompt_cache_restores", "Saved prompt states restored since start",
                    [({}, ps["hits"])]))  # fmt: skip
        out.append(("hoosh_prompt_cache_lookups", "Generations that looked for a saved state",
                    [({}, ps["lookups"])]))  # fmt: skip
    st = gw.cache.stats()
    out.append(
        ("hoosh_cache_entries", "Answers in the response cache", [({}, st.get("entries", 0))])
    )
    out.append(("hoosh_cache_bytes", "Bytes in the response cache", [({}, st.get("bytes", 0))]))
    temp = device.cpu_temperature_c()
    if temp is not None:
        out.append(("hoosh_device_cpu_temperature_celsius", "Hottest thermal zone", [({}, temp)]))
    avail = device.mem_available_bytes()
    if avail is not None:
        out.append(
            (
                "hoosh_device_memory_available_bytes",
                "MemAvailable, or less when a cgroup memory limit is nearer",
                [({}, avail)],
            )
        )
    return out  # fmt: skip
