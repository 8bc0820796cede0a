"""Inference and the books on separate threads, and the watchdog, through the real gateway."""

from __future__ import annotations

import io
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.conftest import openai_provider_toml
from tests.synth_whisper import make_synthetic_whisper

PAID = """
[[budgets]]
name = "cloud-day"
scope = "cloud"
metric = "usd"
limit = 5.00
period = "day"
action = "block"
"""


def chat(gw, timeout: float = 30) -> requests.Response:
    body = {"model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": f"hi {time.monotonic()}"}]}  # fmt: skip
    return requests.post(gw.url + "/v1/chat/completions", json=body, timeout=timeout)


def health(gw) -> dict:
    return requests.get(gw.url + "/v1/health", timeout=5).json()


def wait_for(predicate, within_s: float, what: str):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {within_s} s: {what}")


def ogg(seconds: float, freq: float) -> bytes:
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * freq * t), rate, format="OGG")
    return buf.getvalue()


def transcribe(gw, data: bytes, model: str) -> int:
    r = requests.post(gw.url + "/v1/audio/transcriptions", data={"model": model},
                      headers={"Cache-Control": "no-cache, no-store"},
                      files={"file": ("a.ogg", data, "audio/ogg")}, timeout=300)  # fmt: skip
    return r.status_code


def ledger_rows(gw) -> list[sqlite3.Row]:
    conn = sqlite3.connect(gw.tmp / "data" / "hoosh-edge.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM ledger WHERE is_local = 0").fetchall()
    finally:
        conn.close()


def test_paid_cloud_call_answers_while_every_inference_thread_is_busy(
    gateway_factory, fake_openai, tmp_path
):
    models = [f"ears{i}" for i in range(3)]
    stt = "\n".join(f'{m} = "{make_synthetic_whisper(tmp_path / f"{m}.bin", seed=i)}"'
                    for i, m in enumerate(models))  # fmt: skip
    gw = gateway_factory(f"""
[server]
inference_threads = 2
books_threads = 1
[local.stt]
max_queue = 16
[local.stt.models]
{stt}
""" + openai_provider_toml(fake_openai) + PAID)  # fmt: skip
    for m in models:  # load every model first: the slow part below is transcription itself
        assert transcribe(gw, ogg(0.5, 300), m) == 200
    # Three models, two threads: two minute-long transcriptions run, the rest wait for a thread.
    with ThreadPoolExecutor(6) as ex:
        jobs = [ex.submit(transcribe, gw, ogg(60, 200 + 50 * i), models[i % 3]) for i in range(6)]
        busy = wait_for(
            lambda: (h := health(gw))["workers"]["inference"]["busy"] == 2
            and h["workers"]["inference"]["queued"] >= 1 and h,
            30, "both inference threads busy and a job queued",
        )  # fmt: skip
        threads_per_model = {m["id"]: m["threads"] for m in busy["local_models"]}
        assert sum(threads_per_model.values()) == 2, threads_per_model
        assert busy["workers"]["books"]["busy"] == 0

        started = time.monotonic()
        r = chat(gw)
        took = time.monotonic() - started
        after = health(gw)["workers"]["inference"]
        assert r.status_code == 200, r.text
        assert after["busy"] == 2, after  # still full while the paid call went through
        assert not any(j.done() for j in jobs[-2:]), "the slow jobs ended before the paid call"
        assert took < 2.0, f"a paid call waited {took:.2f} s behind the models"
        rows = ledger_rows(gw)
        assert len(rows) == 1 and rows[0]["provider"] == "fake"
        assert Decimal(r.headers["X-Hoosh-Cost-USD"]) * 1_000_000 == rows[0]["cost_micro_usd"] > 0
        print(f"paid cloud call with both inference threads busy: {took * 1000:.0f} ms")
        assert [j.result() for j in jobs] == [200] * 6
    assert "Traceback" not in gw.log


@pytest.fixture
def stuck_gw(gateway_factory, fake_openai):
    return gateway_factory("""
[server]
books_threads = 1
stuck_job_s = 1
""" + openai_provider_toml(fake_openai) + PAID)  # fmt: skip


def test_stuck_books_job_is_logged_once_with_its_stack_counted_and_shown(stuck_gw):
    gw = stuck_gw
    assert chat(gw).status_code == 200  # the database exists, the pools have run
    # Another process holds the database's write lock: the next reservation waits inside SQLite.
    holder = sqlite3.connect(gw.tmp / "data" / "hoosh-edge.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    answers: list[requests.Response] = []
    callers = [threading.Thread(target=lambda: answers.append(chat(gw))) for _ in range(2)]
    try:
        for t in callers:
            t.start()
        seen = wait_for(lambda: (h := health(gw))["workers"]["books"]["stuck"] == 1 and h,
                        6, "the waiting reservation reported stuck")  # fmt: skip
        books = seen["workers"]["books"]
        assert seen["status"] == "degraded"
        assert books["busy"] == 1 and books["queued"] == 1, books  # one thread: the other waits
        assert books["stuck_jobs"][0]["label"] == "SpendLedger.reserve"
        assert seen["workers"]["inference"]["stuck"] == 0
        # The watchdog looks a few times a second; /v1/health counts at the moment it is asked.
        metrics = wait_for(lambda: (m := requests.get(gw.url + "/metrics", timeout=5).text)
                           and 'hoosh_stuck_jobs_total{pool="books"} 1' in m and m,
                           2, "the stuck job counted")  # fmt: skip
        assert 'hoosh_stuck_jobs{pool="books"} 1' in metrics
        assert 'hoosh_pool_threads_busy{pool="books"} 1' in metrics
        assert 'hoosh_pool_jobs_queued{pool="books"} 1' in metrics
        assert len(answers) == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for t in callers:
        t.join(30)
    assert [r.status_code for r in answers] == [200, 200]
    after = wait_for(lambda: (h := health(gw))["workers"]["books"]["busy"] == 0 and h, 5, "idle")
    assert after["workers"]["books"]["stuck"] == 0 and after["status"] == "ok"
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'hoosh_stuck_jobs{pool="books"} 0' in metrics
    assert 'hoosh_stuck_jobs_total{pool="books"} 1' in metrics  # each stuck job counted once
    reports = re.findall(r"stuck job in the books pool: SpendLedger\.reserve", gw.log)
    assert len(reports) == 1, gw.log
    stack = gw.log.split("stuck job in the books pool", 1)[1]
    assert "in reserve" in stack and "hoosh_edge/books/db.py" in stack and "in write" in stack
    assert "Traceback" not in gw.log


def test_errors_raised_in_pool_threads_reach_the_client_and_leave_no_traceback(
    gateway_factory, fake_openai, tmp_path
):
    whisper = make_synthetic_whisper(tmp_path / "ears.bin")
    gw = gateway_factory(f"""
[local.stt.models]
ears = "{whisper}"
[[budgets]]
name = "nothing"
scope = "cloud"
metric = "usd"
limit = 0.000001
period = "day"
action = "block"
""" + openai_provider_toml(fake_openai))  # fmt: skip
    refused = chat(gw)  # the reservation, in a books thread, raises BudgetExceeded
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    garbage = requests.post(gw.url + "/v1/audio/transcriptions", data={"model": "ears"},
                            files={"file": ("a.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" * 9,
                                            "audio/wav")}, timeout=30)  # fmt: skip
    assert garbage.status_code == 400 and garbage.json()["error"]["param"] == "file"
    assert requests.get(gw.url + "/health", timeout=5).ok
    assert "Traceback" not in gw.log and "failed with" not in gw.log, gw.log
