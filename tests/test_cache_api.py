"""The response cache through the gateway: hits, misses, bypass, streams, restarts, budgets."""

from __future__ import annotations

import io
import json
import sqlite3
import threading

import numpy as np
import requests
import soundfile as sf

from tests.conftest import GatewayProcess, openai_provider_toml

PRICED = """
[pricing."gpt-4o-mini"]
input_usd_per_mtok = 1
output_usd_per_mtok = 1
"""


def chat(gw, stream=False, headers=None, **extra):
    body = {"model": "gpt-4o-mini", "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": "cache me"}], **extra}  # fmt: skip
    return requests.post(gw.url + "/v1/chat/completions", json=body, headers=headers,
                         timeout=20, stream=stream)  # fmt: skip


def stream_text(r) -> tuple[str, list[dict]]:
    docs = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith(b"data: {")]
    return "".join(
        d["choices"][0]["delta"].get("content") or "" for d in docs if d.get("choices")
    ), docs


def ledger_count(gw) -> int:
    conn = sqlite3.connect(gw.tmp / "data" / "hoosh-edge.db")
    try:
        return conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
    finally:
        conn.close()


def test_hit_miss_bypass_and_budget_untouched_on_hit(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai) + PRICED)
    first = chat(gw)
    assert first.headers["X-Hoosh-Cache"] == "MISS"
    second = chat(gw)
    assert second.headers["X-Hoosh-Cache"] == "HIT"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"]["prompt_tokens"] == first.json()["usage"]["prompt_tokens"]
    assert second.json()["usage"]["cost_usd"] == 0 and second.headers["X-Hoosh-Cost-USD"] == "0"
    assert second.json()["id"] != first.json()["id"]
    assert len(fake_openai.chat_requests) == 1
    assert ledger_count(gw) == 1  # the hit did not touch the books
    # Not deterministic: never cached.
    hot = chat(gw, temperature=0.9)
    assert hot.headers["X-Hoosh-Cache"] == "BYPASS"
    # no-cache skips the lookup (and stores again); no-store leaves nothing behind.
    assert chat(gw, headers={"Cache-Control": "no-cache"}).headers["X-Hoosh-Cache"] == "BYPASS"
    assert len(fake_openai.chat_requests) == 3
    chat(gw, headers={"Cache-Control": "no-store"}, seed=7)
    assert chat(gw, seed=7).headers["X-Hoosh-Cache"] == "MISS"
    # Fields that change the answer change the key; user and stream do not.
    assert chat(gw, max_tokens=3).headers["X-Hoosh-Cache"] == "MISS"
    assert chat(gw, user="someone").headers["X-Hoosh-Cache"] == "HIT"


def test_stream_and_non_stream_share_entries(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    plain = chat(gw).json()["choices"][0]["message"]["content"]
    r = chat(gw, stream=True, stream_options={"include_usage": True})
    assert r.headers["X-Hoosh-Cache"] == "HIT"
    text, docs = stream_text(r)
    assert text == plain and len({d["id"] for d in docs}) == 1
    assert docs[-1]["usage"]["cost_usd"] == 0
    # And the other way: stored from a stream, served to a plain request.
    r = chat(gw, stream=True, seed=42)
    assert r.headers["X-Hoosh-Cache"] == "MISS"
    text, _ = stream_text(r)
    hit = chat(gw, seed=42)
    assert hit.headers["X-Hoosh-Cache"] == "HIT"
    assert hit.json()["choices"][0]["message"]["content"] == text


def test_cut_stream_and_errors_are_never_stored(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("cut", 3)
    stream_text(chat(gw, stream=True))
    assert chat(gw).headers["X-Hoosh-Cache"] == "MISS"
    fake_openai.script("status", 400, message="no")
    assert chat(gw, seed=1).status_code == 400
    assert chat(gw, seed=1).headers["X-Hoosh-Cache"] == "MISS"


def test_survives_a_restart_and_admin_clears_it(fake_openai, tmp_path):
    cfg = openai_provider_toml(fake_openai)
    with GatewayProcess(cfg, tmp_path) as gw:
        chat(gw)
    with GatewayProcess(cfg, tmp_path) as gw:
        assert chat(gw).headers["X-Hoosh-Cache"] == "HIT"
        stats = requests.get(gw.url + "/admin/cache", timeout=5).json()
        assert stats["entries"] == 1 and stats["hits"] == 1
        assert requests.delete(gw.url + "/admin/cache", timeout=5).json()["deleted"] == 1
        assert chat(gw).headers["X-Hoosh-Cache"] == "MISS"


def test_identical_concurrent_requests_make_one_upstream_call(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai))
    fake_openai.script("slow", 0.5)
    results = []

    def one():
        results.append(chat(gw, seed=99))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results)
    assert sorted(r.headers["X-Hoosh-Cache"] for r in results) == ["HIT"] * 4 + ["MISS"]
    assert len(fake_openai.chat_requests) == 1


def test_cloud_speech_and_transcription_are_cached(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai, models='["tts-1", "whisper-1"]'))
    body = {
        "model": "tts-1",
        "voice": "alloy",
        "input": "Doors are closing.",
        "response_format": "mp3",
    }
    a = requests.post(gw.url + "/v1/audio/speech", json=body, timeout=10)
    b = requests.post(gw.url + "/v1/audio/speech", json=body, timeout=10)
    assert a.status_code == 200 and a.headers["X-Hoosh-Provider"] == "fake"
    assert (a.headers["X-Hoosh-Cache"], b.headers["X-Hoosh-Cache"]) == ("MISS", "HIT")
    assert a.content == b.content and a.content.startswith(b"ID3")
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000, dtype=np.float32), 16000, format="WAV")
    got = []
    for _ in range(2):
        got.append(
            requests.post(
                gw.url + "/v1/audio/transcriptions",
                data={"model": "whisper-1"},
                files={"file": ("a.wav", buf.getvalue(), "audio/wav")},
                timeout=10,
            )
        )
    assert [r.json()["text"] for r in got] == ["cloud transcript"] * 2
    assert [r.headers["X-Hoosh-Cache"] for r in got] == ["MISS", "HIT"]
    assert (
        len([r for r in fake_openai.requests if r["path"].endswith("/audio/transcriptions")]) == 1
    )
