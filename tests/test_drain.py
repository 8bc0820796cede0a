"""SIGTERM drains a real gateway process: answers and streams in flight on the main port and on
the [ollama] second listener finish within server.drain_timeout_s, new connections are refused,
the process exits 0; a request still running past the drain time is cut and the process exits."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from typing import Any

import pytest
import requests

from hoosh_edge.config import ConfigError, parse_config
from tests.conftest import openai_provider_toml
from tests.fake_openai import FakeOpenAI


def provider_toml(fake: FakeOpenAI) -> str:
    # A read timeout well past the slow answers below: the drain is what is tested, not this.
    return openai_provider_toml(fake, timeout_s=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refuses(port: int) -> bool:
    """Whether a new TCP connection to ``port`` is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except Exception as e:  # noqa: BLE001 - the test reads it
            box["error"] = e
        box["at"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_sigterm_lets_slow_answers_and_streams_finish_on_both_ports(gateway_factory):
    words = "one two three four five six seven eight"
    with FakeOpenAI(words_delay_s=0.4) as fake:  # the stream: ~12 chunks, 0.4 s apart
        ollama_port = free_port()
        gw = gateway_factory(f"[server]\ndrain_timeout_s = 8\n[ollama]\nport = {ollama_port}\n"
                             + provider_toml(fake))  # fmt: skip
        main_port = int(gw.url.rsplit(":", 1)[1])
        wait_for(lambda: not refuses(ollama_port), 5, "the Ollama listener never opened")
        fake.script("slow", 4.0)  # the plain answer comes 4 s after it was asked
        plain, plain_box = in_thread(lambda: requests.post(
            gw.url + "/v1/chat/completions", timeout=30,
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}]}))  # fmt: skip
        wait_for(lambda: len(fake.chat_requests) == 1, 5, "the slow request never went upstream")
        got: list[dict[str, Any]] = []

        def stream() -> int:
            with requests.post(f"http://127.0.0.1:{ollama_port}/api/chat", stream=True, timeout=30,
                               json={"model": "gpt-4o-mini", "stream": True,
                                     "messages": [{"role": "user", "content": words}]}) as r:  # fmt: skip
                for line in r.iter_lines():
                    got.append(json.loads(line))
                return r.status_code

        streamed, stream_box = in_thread(stream)
        wait_for(lambda: got, 10, "the stream never began")
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses(main_port) and refuses(ollama_port), 2,
                 "new connections were still accepted after SIGTERM")  # fmt: skip
        plain.join(20)
        streamed.join(20)
        code = gw.proc.wait(20)
        exited = time.monotonic()

    assert "error" not in plain_box, plain_box
    answer = plain_box["result"]
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "Echo: slow"
    # It needed the drain: it ended seconds after the signal, not within gevent's 1 s default.
    assert plain_box["at"] - signalled > 2.5
    assert "error" not in stream_box, stream_box
    assert stream_box["result"] == 200
    assert stream_box["at"] - signalled > 2.5
    assert got[-1]["done"] is True and got[-1]["done_reason"] == "stop"
    assert "".join(x["message"]["content"] for x in got) == f"Echo: {words}"
    assert code == 0
    assert exited - max(plain_box["at"], stream_box["at"]) < 3  # and it did not wait for more


def test_requests_past_the_drain_time_are_cut_and_the_process_exits(gateway_factory):
    """Past the drain time a plain answer gets a 503 shutting_down and a stream one final error
    event; the cloud call cut in flight is booked at its reservation; the process exits 0."""
    with FakeOpenAI(words_delay_s=1.0) as fake:  # the stream: ~10 s
        gw = gateway_factory("[server]\ndrain_timeout_s = 1.5\n" + provider_toml(fake))
        fake.script("slow", 20)  # the plain answer: 20 s
        plain, plain_box = in_thread(lambda: requests.post(
            gw.url + "/v1/chat/completions", timeout=30,
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}]}))  # fmt: skip
        wait_for(lambda: len(fake.chat_requests) == 1, 5, "the slow request never went upstream")
        got: list[bytes] = []

        def stream() -> None:
            body = {"model": "gpt-4o-mini", "stream": True,
                    "messages": [{"role": "user", "content": "a b c d e f g"}]}  # fmt: skip
            with requests.post(gw.url + "/v1/chat/completions", json=body, stream=True,
                               timeout=30) as r:  # fmt: skip
                got.extend(line for line in r.iter_lines() if line)

        streamed, stream_box = in_thread(stream)
        wait_for(lambda: got, 10, "the stream never began")
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(10)
        exited = time.monotonic()
        plain.join(10)
        streamed.join(10)

    assert code == 0
    assert 1.4 < exited - signalled < 4.5  # the drain time, a second for the cut, then out
    cut = plain_box["result"]
    assert cut.status_code == 503 and cut.json()["error"]["code"] == "shutting_down"
    assert cut.headers["Connection"] == "close"
    assert "error" not in stream_box, stream_box
    assert b"data: [DONE]" not in got  # the client never saw the end, and is told why
    last = json.loads(got[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "shutting_down", got[-3:]
    assert "still running are cut" in gw.log
    conn = sqlite3.connect(gw.tmp / "data" / "hoosh-edge.db")
    try:
        rows = conn.execute("SELECT kind, cost_micro_usd FROM ledger WHERE provider = 'fake'"
                            ).fetchall()  # fmt: skip
    finally:
        conn.close()
    # Neither call is free in the books: the upstream had both when they were cut.
    assert len(rows) == 2 and all(cost > 0 for _, cost in rows), rows


def test_a_second_signal_ends_the_drain_at_once(gateway_factory, fake_openai):
    gw = gateway_factory("[server]\ndrain_timeout_s = 30\n" + provider_toml(fake_openai))
    fake_openai.script("slow", 20)
    plain, box = in_thread(lambda: requests.post(
        gw.url + "/v1/chat/completions", timeout=30,
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}]}))  # fmt: skip
    wait_for(lambda: len(fake_openai.chat_requests) == 1, 5, "the request never went upstream")
    gw.proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert gw.proc.poll() is None  # draining: 30 s allowed
    again = time.monotonic()
    gw.proc.send_signal(signal.SIGINT)  # Ctrl-C twice
    assert gw.proc.wait(5) == 0 and time.monotonic() - again < 3
    plain.join(5)
    assert box["result"].status_code == 503


def test_drain_timeout_is_positive_seconds():
    assert parse_config({}, src="t.toml", env={}).server.drain_timeout_s == 10.0
    got = parse_config({"server": {"drain_timeout_s": 2.5}}, src="t.toml", env={})
    assert got.server.drain_timeout_s == 2.5
    for value in (0, -1, "ten", float("inf")):
        with pytest.raises(ConfigError, match="drain_timeout_s"):
            parse_config({"server": {"drain_timeout_s": value}}, src="t.toml", env={})
