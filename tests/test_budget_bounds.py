"""Hard limits that hold: against the harshest legal upstream, a usd block rule is never crossed.

The fake upstream bills one token per UTF-8 byte of everything it tokenizes plus OpenAI's
documented overhead, and writes every token it is allowed. Through the real gateway, hundreds of
concurrent calls in mixed scripts, with several messages and tools, streamed and not, naming no
``max_tokens``, must never make it bill past the limit; and the books must equal its bill.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT, GatewayProcess, openai_provider_toml
from tests.fake_openai import FakeOpenAI

IN_USD_PER_MTOK, OUT_USD_PER_MTOK = 10, 100
MAX_OUTPUT = 300
PRICED = f"""
[pricing."gpt-4o-mini"]
input_usd_per_mtok = {IN_USD_PER_MTOK}
output_usd_per_mtok = {OUT_USD_PER_MTOK}
max_output_tokens = {MAX_OUTPUT}
"""
# 200 clients at once from one address: above the per-client connection cap's default.
FAST = '\n[server]\ndurability = "normal"\nmax_connections_per_client = 400\n'

TEXTS = [
    "Tell me about the weather in Paris, and whether I need an umbrella tomorrow. ",
    "今日は天気がいいですね。東京の明日の天気を教えてください。雨は降りますか？",
    "🙂🚀🌍👍🏽 👩‍👩‍👧‍👦 🇮🇷 ",
    "Ünïcödé façade — naïve café, Ωμέγα, Привет, مرحبا, שלום, नमस्ते. ",
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "天気を調べる 🌦 — look up the weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "都市 / city"}},
                "required": ["city"],
            },
        },
    }
]


def patient(fake: FakeOpenAI) -> str:
    """The fake as a provider with room for a loaded 2-core box (30 s, not 2 s, per call)."""
    return openai_provider_toml(fake).replace("timeout_s = 2\n", "timeout_s = 30\n")


def cost_micro(prompt: int, completion: int) -> int:
    """What the gateway books for one call: exact, rounded up once to the micro-dollar."""
    return math.ceil(prompt * IN_USD_PER_MTOK + completion * OUT_USD_PER_MTOK)


def body_for(i: int) -> tuple[str, dict[str, Any]]:
    """Call number ``i`` of a round: (path, body), varied in script, shape and streaming."""
    text = TEXTS[i % 4] * (1 + i % 3)
    messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
    if i % 5 == 1:
        messages = [
            {"role": "system", "content": "Réponds brièvement. 簡潔に。"},
            {"role": "user", "content": [{"type": "text", "text": text}]},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "東京"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "晴れ ☀️ 22°C"},
            {"role": "user", "name": "ali", "content": TEXTS[(i + 1) % 4]},
        ]  # fmt: skip
    if i % 10 == 7:
        # Anthropic's door: max_tokens is required there, and the system prompt is separate.
        body = {"model": "gpt-4o-mini", "max_tokens": 120, "system": "Be brief. 简短。",
                "messages": [{"role": "user", "content": text}], "stream": i % 20 == 7}  # fmt: skip
        return "/v1/messages", body
    body = {"model": "gpt-4o-mini", "messages": messages, "stream": i % 2 == 0}
    if i % 3 == 0:
        body["tools"] = TOOLS
    if i % 4 == 0 and body["stream"]:
        body["stream_options"] = {"include_usage": True}
    return "/v1/chat/completions", body


def call(gw: GatewayProcess, path: str, body: dict[str, Any]) -> tuple[int, dict, str]:
    r = requests.post(gw.url + path, json=body, timeout=60, stream=bool(body.get("stream")))
    text = r.text  # reads a stream to its end
    return r.status_code, dict(r.headers), text


def run_round(gw: GatewayProcess, n: int) -> list[tuple[int, dict, str]]:
    """``n`` calls released at once; their (status, headers, body)."""
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        path, body = body_for(i)
        barrier.wait()
        results[i] = call(gw, path, body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def books(gw: GatewayProcess) -> list[sqlite3.Row]:
    conn = sqlite3.connect(gw.tmp / "data" / "hoosh-edge.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM ledger ORDER BY id").fetchall()
    finally:
        conn.close()


def set_limit(gw: GatewayProcess, micro: int) -> None:
    usd = str(Decimal(micro) / 1_000_000)
    rule = {"scope": "cloud", "metric": "usd", "limit": usd, "period": "total", "action": "block"}
    r = requests.patch(gw.url + "/admin/budgets/hard", json={"limit": usd}, timeout=10)
    if r.status_code == 404:
        r = requests.post(gw.url + "/admin/budgets", json={"name": "hard", **rule}, timeout=10)
    assert r.status_code in (200, 201), r.text


@pytest.fixture
def billing_openai():
    with FakeOpenAI(billing=True) as fake:
        yield fake


def test_two_hundred_concurrent_mixed_calls_never_bill_past_the_limit(
    billing_openai, gateway_factory
):
    gw = gateway_factory(patient(billing_openai) + PRICED + FAST)
    fake = billing_openai
    billed_before = 0
    figures = []
    for allowance in (3_000_000, 1_000_000, 300_000):  # $3.00, $1.00, $0.30 per round
        limit = billed_before + allowance
        set_limit(gw, limit)
        calls_before = len(fake.billed)
        results = run_round(gw, 200)
        served = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        for status, _, text in refused:
            assert status == 429, text
            err = json.loads(text)["error"]
            assert err.get("code") == "budget_exceeded" or err.get("type") == "rate_limit_error"
            assert "hard" in err["message"]
        round_bills = fake.billed[calls_before:]
        billed = sum(cost_micro(b["prompt_tokens"], b["completion_tokens"]) for b in fake.billed)
        round_billed = billed - billed_before
        # The one promise: the upstream never billed more than the rule allows.
        assert billed <= limit, (billed, limit)
        assert len(round_bills) == len(served) and served and refused
        # Each answer the client got said what it cost; the books hold exactly the upstream's bill.
        rows = books(gw)
        assert len(rows) == len(fake.billed)
        assert sum(r["cost_micro_usd"] for r in rows) == billed
        assert sorted(r["prompt_tokens"] for r in rows) == sorted(
            b["prompt_tokens"] for b in fake.billed
        )
        # The bound held for every call: no overrun had to close the rule.
        metrics = requests.get(gw.url + "/metrics", timeout=10).text
        assert "hoosh_budget_overrun_total{" not in metrics
        # Not a trivial pass: the round came close to its allowance.
        assert round_billed >= allowance * 0.8, (round_billed, allowance)
        figures.append(
            f"limit ${allowance / 1e6:.2f}: 200 concurrent, {len(served)} served, "
            f"{len(refused)} refused, upstream billed ${round_billed / 1e6:.6f}"
        )
        billed_before = billed
    usage = requests.get(gw.url + "/v1/usage?period=total", timeout=10).json()
    assert Decimal(usage["total_cost_usd"]) * 1_000_000 == billed_before
    print("\n" + "\n".join(figures))
    assert "Traceback" not in gw.log, gw.log[gw.log.find("Traceback") - 300 :][:3000]


def test_the_gateway_sets_and_announces_the_limit_it_can_pay_for(billing_openai, gateway_factory):
    from hoosh_edge.estimate import prompt_tokens

    gw = gateway_factory(openai_provider_toml(billing_openai) + PRICED + FAST)
    fake = billing_openai
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "天気 🌦"}]}
    # No rule: the gateway sends no limit of its own and says none.
    r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and "X-Hoosh-Max-Tokens" not in r.headers
    assert "max_completion_tokens" not in fake.chat_requests[-1]["json"]
    spent = sum(row["cost_micro_usd"] for row in books(gw))

    # Plenty left: the model's own maximum (the price table's max_output_tokens).
    set_limit(gw, spent + 1_000_000)
    r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["X-Hoosh-Max-Tokens"] == str(MAX_OUTPUT)
    assert fake.chat_requests[-1]["json"]["max_completion_tokens"] == MAX_OUTPUT
    spent = sum(row["cost_micro_usd"] for row in books(gw))

    # 10 000 micro-dollars left: the most tokens that fit beside the prompt's bound.
    set_limit(gw, spent + 10_000)
    r = requests.post(gw.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30)
    assert r.status_code == 200 and r.text.rstrip().endswith("[DONE]")
    sent = fake.chat_requests[-1]["json"]
    cap = int(r.headers["X-Hoosh-Max-Tokens"])
    assert sent["max_completion_tokens"] == cap < MAX_OUTPUT
    bound = prompt_tokens(sent)
    assert cost_micro(bound, cap) <= 10_000 < cost_micro(bound, cap + 1)
    spent = sum(row["cost_micro_usd"] for row in books(gw))

    # A client's own limit is kept, and no header claims otherwise.
    set_limit(gw, spent + 1_000_000)
    r = requests.post(gw.url + "/v1/chat/completions", json={**body, "max_tokens": 7}, timeout=30)
    assert r.status_code == 200 and "X-Hoosh-Max-Tokens" not in r.headers
    assert fake.chat_requests[-1]["json"]["max_tokens"] == 7
    spent = sum(row["cost_micro_usd"] for row in books(gw))

    # Too little left for even a small answer: refused as before, nothing sent upstream.
    set_limit(gw, spent + 200)
    calls = len(fake.chat_requests)
    r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    assert len(fake.chat_requests) == calls


def test_an_upstream_billing_past_the_bound_is_booked_warned_and_closes_the_rule(
    billing_openai, gateway_factory
):
    gw = gateway_factory(openai_provider_toml(billing_openai) + PRICED + FAST)
    set_limit(gw, 1_000_000)
    billing_openai.overbill_tokens = 5000  # no tokenizer could count these from the prompt
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200
    request_id = r.headers["X-Request-Id"]
    billed = billing_openai.billed[-1]
    [row] = books(gw)
    # The real figure is committed, not the reservation.
    assert row["prompt_tokens"] == billed["prompt_tokens"]
    assert row["cost_micro_usd"] == cost_micro(billed["prompt_tokens"], billed["completion_tokens"])
    assert row["cost_micro_usd"] < 1_000_000  # far from the limit, yet ...
    time.sleep(0.2)
    assert "billed more than its reservation" in gw.log and request_id in gw.log
    metrics = requests.get(gw.url + "/metrics", timeout=10).text
    assert 'hoosh_budget_overrun_total{rule="hard"} 1' in metrics
    # ... the rule stays closed until its period resets: the bound is not trusted any more.
    billing_openai.overbill_tokens = 0
    calls = len(billing_openai.chat_requests)
    r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 429, r.text
    message = r.json()["error"]["message"]
    assert "closed" in message and request_id in message
    assert len(billing_openai.chat_requests) == calls
    assert "Traceback" not in gw.log


def test_kill_9_mid_load_never_unspends(tmp_path):
    fake = FakeOpenAI(billing=True, words_delay_s=0.05)  # streams in flight when the kill lands
    with fake:
        cfg = patient(fake) + PRICED
        cfg += "\n[[budgets]]\nname = 'hard'\nscope = 'cloud'\nmetric = 'usd'\nlimit = 100\n"
        cfg += "period = 'total'\naction = 'block'\n"
        kills = 0
        for _ in range(3):
            gw = GatewayProcess(cfg, tmp_path).start()
            stop = threading.Event()

            def load(gw: GatewayProcess = gw, stop: threading.Event = stop) -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        call(gw, *body_for(i))
                    except requests.RequestException:
                        return

            threads = [threading.Thread(target=load) for _ in range(8)]
            for t in threads:
                t.start()
            time.sleep(1.5)
            gw.kill9()
            kills += 1
            stop.set()
            for t in threads:
                t.join(30)
        gw = GatewayProcess(cfg, tmp_path).start()  # the restart books what the dead left
        try:
            rows = books(gw)
            booked = sum(r["cost_micro_usd"] for r in rows)
            billed = sum(
                cost_micro(b["prompt_tokens"], b["completion_tokens"]) for b in fake.billed
            )
            orphans = [r for r in rows if r["kind"] == "orphaned"]
            assert orphans, "a kill under load leaves calls in flight"
            assert booked >= billed, (booked, billed)
            usage = requests.get(gw.url + "/v1/usage?period=total", timeout=10).json()
            assert sum(g["orphaned"] for g in usage["data"]) == len(orphans)
            status = requests.get(gw.url + "/admin/status.json", timeout=10).json()
            assert status["orphans"]["orphaned"] == len(orphans)
            print(f"\n{kills} kills: upstream billed ${billed / 1e6:.6f}, books ${booked / 1e6:.6f}, "
                  f"{len(orphans)} orphaned entries")  # fmt: skip
        finally:
            gw.stop()


def test_audio_is_reserved_and_billed_by_decoded_seconds_and_input_characters(
    fake_openai, gateway_factory
):
    import io

    import numpy as np
    import soundfile as sf

    rules = "".join(
        f"\n[[budgets]]\nname = '{n}'\nscope = 'cloud'\nmetric = '{m}'\nlimit = {v}\n"
        "period = 'total'\naction = 'block'\n"
        for n, m, v in (("stt", "audio_seconds", 5), ("tts", "characters", 45), ("usd", "usd", 1))
    )
    gw = gateway_factory(openai_provider_toml(fake_openai, models='["tts-1", "whisper-1"]') + rules)

    def transcribe(seconds: float) -> requests.Response:
        buf = io.BytesIO()
        sf.write(buf, np.zeros(int(16000 * seconds), dtype=np.float32), 16000, format="WAV")
        files = {"file": ("a.wav", buf.getvalue(), "audio/wav")}
        return requests.post(gw.url + "/v1/audio/transcriptions", data={"model": "whisper-1"},
                             files=files, timeout=30)  # fmt: skip

    # 1.3 s and 1.2 s of audio are two started seconds each: 4 of 5; a third cannot fit.
    assert transcribe(1.3).status_code == 200 and transcribe(1.2).status_code == 200
    uploads = len([r for r in fake_openai.requests if r["path"].endswith("/transcriptions")])
    refused = transcribe(1.1)
    assert refused.status_code == 429 and "stt" in refused.json()["error"]["message"]
    assert (
        len([r for r in fake_openai.requests if r["path"].endswith("/transcriptions")]) == uploads
    )

    def speak(text: str) -> requests.Response:
        body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "mp3"}
        return requests.post(gw.url + "/v1/audio/speech", json=body, timeout=30)

    first, second = "扉が閉まります。Doors close.", "Mind the gap 🚇 please"
    assert speak(first).status_code == 200 and speak(second).status_code == 200
    over = speak("One more, please.")  # 20 + 21 + 17 > 45
    assert over.status_code == 429 and "tts" in over.json()["error"]["message"]
    rows = [dict(r) for r in books(gw)]
    assert [r["audio_ms"] for r in rows[:2]] == [2000, 2000]
    assert [r["characters"] for r in rows[2:]] == [len(first), len(second)]
    # whisper-1 at $0.006 a minute: 2 s is 200 micro-dollars; tts-1 at $15 per million characters.
    assert [r["cost_micro_usd"] for r in rows] == [200, 200, 15 * len(first), 15 * len(second)]
    assert "Traceback" not in gw.log


def hoosh(*args: str, config: Any) -> subprocess.CompletedProcess:
    """``hoosh-edge ARGS --config CONFIG``, this checkout's code, as the operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "hoosh_edge", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env,
                          cwd=Path(config).parent)  # fmt: skip


def test_an_orphan_is_booked_at_its_reservation_and_the_operator_corrects_it(tmp_path):
    fake = FakeOpenAI(billing=True, words_delay_s=1.0)  # a stream that takes seconds
    with fake:
        cfg = patient(fake) + PRICED
        cfg += "\n[[budgets]]\nname = 'hard'\nscope = 'cloud'\nmetric = 'usd'\nlimit = 1\n"
        cfg += "period = 'total'\naction = 'block'\n"
        gw = GatewayProcess(cfg, tmp_path).start()
        body = {"model": "gpt-4o-mini", "stream": True,
                "messages": [{"role": "user", "content": "Tell me a long story 📖"}]}  # fmt: skip
        r = requests.post(gw.url + "/v1/chat/completions", json=body, stream=True, timeout=30)
        request_id = r.headers["X-Request-Id"]
        deadline = time.monotonic() + 10
        while not fake.billed and time.monotonic() < deadline:
            time.sleep(0.02)
        gw.kill9()  # the upstream has billed the call; the gateway never committed it
        r.close()
        gw = GatewayProcess(cfg, tmp_path).start()
        try:
            [row] = books(gw)
            billed = cost_micro(
                fake.billed[0]["prompt_tokens"], fake.billed[0]["completion_tokens"]
            )
            assert (row["request_id"], row["kind"]) == (request_id, "orphaned")
            assert row["cost_micro_usd"] >= billed  # its reservation: an upper bound of the bill
            status = requests.get(gw.url + "/admin/status.json", timeout=10).json()["orphans"]
            assert status["orphaned"] == 1
            assert status["recent_orphans"][0]["request_id"] == request_id

            # The provider's dashboard says what it really cost: append a correction.
            usd = str(Decimal(billed) / 1_000_000)
            done = hoosh("budget", "correct", request_id, "--usd", usd, "--reason",
                         "provider invoice", config=gw.config_path)  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert request_id in done.stdout and "provider invoice" in done.stdout
            rows = books(gw)
            assert dict(rows[0]) == dict(row)  # history is never rewritten
            assert (rows[1]["kind"], rows[1]["note"]) == ("correction", "provider invoice")
            assert sum(r["cost_micro_usd"] for r in rows) == billed
            usage = requests.get(gw.url + "/v1/usage?period=total", timeout=10).json()
            assert Decimal(usage["total_cost_usd"]) * 1_000_000 == billed
            # The rule sees the corrected figure at once.
            rules = requests.get(gw.url + "/admin/budgets", timeout=10).json()["data"]
            assert Decimal(rules[0]["used"]) == Decimal(billed) / 1_000_000, rules

            unknown = hoosh("budget", "correct", "no-such-request", "--usd", "0", "--reason",
                            "typo", config=gw.config_path)  # fmt: skip
            assert unknown.returncode == 1 and "no-such-request" in unknown.stderr
            negative = hoosh("budget", "correct", request_id, "--usd", "-1", "--reason", "x",
                             config=gw.config_path)  # fmt: skip
            assert negative.returncode == 1 and "Traceback" not in negative.stderr
            assert len(books(gw)) == 2
        finally:
            gw.stop()


def test_a_call_that_timed_out_upstream_is_booked_at_its_reservation(fake_openai, gateway_factory):
    gw = gateway_factory(openai_provider_toml(fake_openai) + PRICED + FAST)
    set_limit(gw, 1_000_000)
    fake_openai.script("hang", 4)  # past the provider's 2 s: the upstream had it, and may bill
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 504
    [row] = books(gw)
    # Prompt bound plus the whole completion it was allowed: it cannot have cost more.
    assert row["completion_tokens"] == MAX_OUTPUT
    assert row["cost_micro_usd"] == cost_micro(row["prompt_tokens"], MAX_OUTPUT)
    assert "booked at its reservation" in gw.log and "Traceback" not in gw.log
    # A refused or unreachable upstream billed nothing: that hold is still given back.
    fake_openai.script("status", 500)
    fake_openai.script("status", 500)
    fake_openai.script("status", 500)
    r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 502
    assert len(books(gw)) == 1


def test_an_anthropic_upstream_gets_the_limit_the_budget_set(gateway_factory):
    from tests.fake_anthropic import FakeAnthropic, reply
    from tests.test_anthropic_e2e import anthropic_toml

    with FakeAnthropic() as fake:
        gw = gateway_factory(anthropic_toml(fake) + FAST)
        set_limit(gw, 20_000)  # 2 cents of claude-3-5-haiku ($0.80 / $4 per million)
        body = {"model": "claude-3-5-haiku-latest", "stream": True,
                "messages": [{"role": "system", "content": "简短"},
                             {"role": "user", "content": "Capital of France? 🇫🇷"}]}  # fmt: skip
        fake.script(reply("Paris."))
        r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200 and r.text.rstrip().endswith("[DONE]"), r.text
        sent = fake.bodies[-1]
        cap = int(r.headers["X-Hoosh-Max-Tokens"])
        # Anthropic needs max_tokens; the budget's is sent, below the model's 8192 (20000 / 4).
        assert sent["max_tokens"] == cap and cap < 8192
        assert sent["system"] == "简短"


def test_the_budget_cap_never_exceeds_the_providers_own_limit(billing_openai, gateway_factory):
    toml = openai_provider_toml(billing_openai, extra="max_tokens_limit = 50")
    gw = gateway_factory(toml + PRICED + FAST)
    set_limit(gw, 1_000_000)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.headers["X-Hoosh-Max-Tokens"] == "50"
    assert billing_openai.chat_requests[-1]["json"]["max_completion_tokens"] == 50
    # Less left than 50 tokens cost: the budget's figure, below the provider's.
    spent = sum(row["cost_micro_usd"] for row in books(gw))
    set_limit(gw, spent + 3000)
    r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    cap = int(r.headers["X-Hoosh-Max-Tokens"])
    assert (
        16 <= cap < 50 and billing_openai.chat_requests[-1]["json"]["max_completion_tokens"] == cap
    )


def test_an_image_reserves_its_documented_maximum_or_is_refused(billing_openai, gateway_factory):
    extra = '\n[pricing."vision-x"]\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n'
    gw = gateway_factory(
        openai_provider_toml(billing_openai, models='["gpt-*", "vision-x"]') + PRICED + extra + FAST
    )
    set_limit(gw, 500_000)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "iVBOR" * 100}}
    content = [{"type": "text", "text": "What is this?"}, image]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    # 48169 tokens for the image at $10 a million leave room for this many answer tokens:
    cap = int(r.headers["X-Hoosh-Max-Tokens"])
    assert 16 <= cap < MAX_OUTPUT and cost_micro(48_169, cap) <= 500_000
    calls = len(billing_openai.chat_requests)
    refused = requests.post(gw.url + "/v1/chat/completions", json={**body, "model": "vision-x"},
                            timeout=30)  # fmt: skip
    assert refused.status_code == 429, refused.text
    err = refused.json()["error"]
    assert err["code"] == "price_unknown" and "max_image_tokens" in err["message"]
    assert len(billing_openai.chat_requests) == calls
