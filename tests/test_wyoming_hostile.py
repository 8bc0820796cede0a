"""Hostile Wyoming peers, who may connect, and the budget: each bad connection ends alone, with an
``error`` event where the peer still reads, while HTTP and other Wyoming sessions keep serving."""

from __future__ import annotations

import json
import resource
import socket
import time
from types import SimpleNamespace

import pytest
import requests
from wyoming.info import Describe
from wyoming.ping import Ping
from wyoming.tts import Synthesize

from tests.synth_piper import make_voice
from tests.wyoming_peer import (
    access_lines,
    describe,
    exchange,
    raw_exchange,
    read_until_closed,
    run,
    synthesize,
    transcribe_events,
    wyoming_port,
    wyoming_toml,
)


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    return make_voice(str(tmp_path_factory.mktemp("voice")), name="tiny")


def start(gateway_factory, voice: str | None = None, extra: str = "", **wyoming):
    models = f'[local.tts.voices]\ntiny = "{voice}"\n' if voice else ""
    gw = gateway_factory(wyoming_toml(models + extra, **wyoming))
    gw.port = wyoming_port(gw)
    return gw


def header(doc: dict) -> bytes:
    return json.dumps(doc).encode() + b"\n"


@pytest.mark.parametrize(
    "data,code",
    [
        (b"this is not json\n", "bad_json"),
        (b"[1, 2, 3]\n", "bad_json"),
        (header({"data": {}}), "bad_event"),
        (header({"type": "describe", "data": [1]}), "bad_event"),
        (header({"type": "x", "data_length": -1}), "bad_length"),
        (header({"type": "x", "data_length": "9"}), "bad_length"),
        (header({"type": "synthesize", "data_length": 10**12}), "data_too_large"),
        (header({"type": "audio-chunk", "payload_length": 10**12}), "payload_too_large"),
        (header({"type": "synthesize", "data_length": 3}) + b"{]}", "bad_json"),
        (header({"type": "format-disk"}), "unknown_event"),
        (header({"type": "audio-chunk", "payload_length": 4}) + b"\0\0\0\0", "bad_order"),
        (header({"type": "audio-start", "data": {"rate": 16000, "width": 9, "channels": 1}}),
         "bad_data"),
        (header({"type": "synthesize", "data": {"text": 5}}), "bad_data"),
        (b"{" * 100_000, "line_too_long"),  # an endless line
    ],
)  # fmt: skip
def test_garbage_ends_that_connection_with_an_error_event(gateway_factory, data, code):
    gw = start(gateway_factory)
    events, closed = raw_exchange(gw.port, data)
    assert closed and [e["type"] for e in events] == ["error"], events
    assert events[0]["data"]["code"] == code, events
    info, took = describe(gw.port)  # the next peer is served as ever
    assert took < 1.0
    assert requests.get(gw.url + "/health", timeout=5).ok
    assert "Traceback" not in gw.log


def test_a_stalled_peer_times_out_and_a_slow_drip_cannot_keep_a_connection(gateway_factory):
    gw = start(gateway_factory, idle_timeout_s=1, session_timeout_s=3)
    started = time.monotonic()
    events, closed = raw_exchange(
        gw.port, b'{"type": "desc', timeout=10
    )  # half a line, then silence
    assert closed and events[0]["data"]["code"] == "idle_timeout"
    assert 0.9 < time.monotonic() - started < 5
    # A byte every 0.3 s never idles a socket read, but never completes an event in time either.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        started = time.monotonic()
        for byte in b'{"type": "describe"}':
            try:
                s.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.3)
        got, closed = read_until_closed(s, timeout=5)
        assert closed and got[0]["data"]["code"] == "idle_timeout", got
        assert time.monotonic() - started < 3.5  # not the 3 s session timeout plus the drip
    # A peer that keeps sending pings never idles, but the connection's whole life is bounded.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        started = time.monotonic()
        types = []
        while time.monotonic() - started < 8:
            try:
                s.sendall(header({"type": "ping"}))
            except OSError:
                break
            got, closed = read_until_closed(s, timeout=0.5)
            types += [(e["type"], (e.get("data") or {}).get("code")) for e in got]
            if closed:
                break
        assert closed and ("error", "session_timeout") in types and ("pong", None) in types
        assert 2.5 < time.monotonic() - started < 6


def test_a_thousand_idle_connections_leave_http_and_the_next_peers_served(gateway_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    gw = start(gateway_factory, max_connections=50, idle_timeout_s=5)
    socks = []
    try:
        for _ in range(1000):
            socks.append(socket.create_connection(("127.0.0.1", gw.port), timeout=10))
        started = time.monotonic()
        assert requests.get(gw.url + "/health", timeout=5).ok
        assert time.monotonic() - started < 1.0
        # Those past max_connections were told so and closed at once.
        busy = 0
        for s in socks[-100:]:
            events, closed = read_until_closed(s, timeout=2)
            busy += closed and [e["data"]["code"] for e in events] == ["busy"]
        assert busy == 100
        # Accepted in order: the first 50 are open, idle, until idle_timeout_s.
        metrics = requests.get(gw.url + "/metrics", timeout=5).text
        assert "hoosh_wyoming_connections_open 50.0" in metrics
        assert "hoosh_wyoming_connections_max 50.0" in metrics
    finally:
        for s in socks:
            s.close()
    # Once they are gone (or idle past idle_timeout_s), a new peer is served within a second.
    deadline = time.monotonic() + 10
    while True:
        try:
            info, took = describe(gw.port)
            break
        except AssertionError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert took < 1.0 and "Traceback" not in gw.log
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'hoosh_wyoming_connections_total{outcome="busy"}' in metrics


def test_peers_that_vanish_mid_stream_leave_the_next_ones_served(gateway_factory, voice):
    gw = start(gateway_factory, voice)
    # Speech-to-text: audio-start and half the audio, then a reset.
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        events = transcribe_events(b"\x01\x00" * 16000)[:5]
        for e in events:
            from wyoming.event import write_event

            write_event(e, s.makefile("wb"))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # RST on close
        s.close()
    # Text-to-speech: the peer reads one event of a long text, then goes away.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(header({"type": "synthesize", "data": {"text": "Hello there. " * 200}}))
        assert s.recv(10)
    pcm, rate, events = synthesize(gw.port, "Still speaking after all that.")
    assert pcm and events[-1].type == "audio-stop"
    assert requests.get(gw.url + "/health", timeout=5).ok
    assert "Traceback" not in gw.log


def test_audio_longer_than_the_limit_is_refused_while_it_arrives(gateway_factory):
    gw = start(gateway_factory, extra="[local.stt]\nmax_audio_s = 1\n")
    events = run(exchange(gw.port, transcribe_events(bytes(2 * 16000 * 3)), ("error",)))
    assert events[-1].data["code"] == "audio_too_long"


def test_who_may_connect(gateway_factory):
    refused = start(gateway_factory, allow_from=["192.168.1.0/24"])
    events, closed = raw_exchange(refused.port, header({"type": "describe"}), timeout=5)
    assert closed and events == []  # closed at accept: not a byte read or written
    deadline = time.monotonic() + 5
    while "refused a connection from 127.0.0.1" not in refused.log:
        assert time.monotonic() < deadline, refused.log
        time.sleep(0.05)
    assert requests.get(refused.url + "/health", timeout=5).ok  # HTTP is not Wyoming's list
    allowed = start(gateway_factory, allow_from=["127.0.0.0/8", "192.168.1.0/24"])
    info, _ = describe(allowed.port)
    assert info.asr == [] and info.tts == []


def test_a_flood_from_a_refused_peer_is_counted_in_full_and_logged_once(gateway_factory):
    gw = start(gateway_factory, allow_from=["192.168.1.0/24"])
    for _ in range(200):
        _, closed = raw_exchange(gw.port, header({"type": "describe"}), timeout=5)
        assert closed
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'hoosh_wyoming_connections_total{outcome="refused"} 200.0' in metrics
    assert gw.log.count("refused a connection from 127.0.0.1") == 1
    assert "Traceback" not in gw.log


def test_a_refused_peer_is_logged_again_after_a_minute_with_what_was_not_logged(monkeypatch):
    from hoosh_edge.doors import wyoming_tcp

    now = [1000.0]
    monkeypatch.setattr(wyoming_tcp.time, "monotonic", lambda: now[0])
    lines: list[str] = []
    monkeypatch.setattr(wyoming_tcp.log, "warning", lambda msg, *a: lines.append(msg % a))
    door = SimpleNamespace(_refused={})
    refuse = wyoming_tcp.WyomingServer._log_refused
    for _ in range(5):
        refuse(door, "10.0.0.9")
    refuse(door, "10.0.0.7")  # another peer has its own minute
    now[0] += wyoming_tcp.REFUSED_LOG_S + 1
    refuse(door, "10.0.0.9")
    assert lines == [
        "wyoming: refused a connection from 10.0.0.9 (not in wyoming.allow_from)",
        "wyoming: refused a connection from 10.0.0.7 (not in wyoming.allow_from)",
        "wyoming: refused a connection from 10.0.0.9 (not in wyoming.allow_from); 4 more from "
        "it not logged since",
    ]
    for i in range(wyoming_tcp.REFUSED_PEERS + 10):  # a spread of addresses stays bounded
        refuse(door, f"10.1.{i // 256}.{i % 256}")
    assert len(door._refused) <= wyoming_tcp.REFUSED_PEERS


def test_the_budget_refuses_speech_with_an_error_event_that_ends_the_request(
    gateway_factory, voice
):
    rule = ("[[budgets]]\nname = 'speech'\nscope = 'all'\nmetric = 'characters'\nlimit = 40\n"
            "period = 'total'\naction = 'block'\n")  # fmt: skip
    gw = start(gateway_factory, voice, extra=rule)
    first = "Dinner is ready downstairs."  # 27 of 40 characters
    second = "The front door is open."  # 23 more would cross 40
    events = run(exchange(gw.port, [Synthesize(text=first).event(), Synthesize(text=second).event(),
                                    Ping(text="after").event()], ("error",)))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[0] == "audio-start" and kinds.index("audio-stop") < kinds.index("error")
    assert "speech" in events[-1].data["text"] and events[-1].data["code"] == "budget_exceeded"
    # The refused request ends its connection (Home Assistant waits for audio-stop otherwise).
    events, closed = raw_exchange(gw.port, header({"type": "synthesize", "data": {"text": second}})
                                  + header({"type": "ping"}))  # fmt: skip
    assert closed and [e["type"] for e in events] == ["error"]
    assert [x["status"] for x in access_lines(gw, "wyoming:tts", 3)] == [200, 429, 429]


def test_exposure_rule_for_a_wyoming_listener_beyond_loopback():
    from hoosh_edge.config import parse_config
    from hoosh_edge.exposure import StartupError, check_wyoming_exposure, wyoming_peer_allowed

    lan = {"server": {"host": "0.0.0.0", "api_keys": ["k"]}}
    with pytest.raises(StartupError, match="allow_from"):
        check_wyoming_exposure(parse_config({**lan, "wyoming": {"port": 10300}}))
    for ok in ({"allow_from": ["192.168.1.0/24"]}, {"allow_unauthenticated": True}):
        check_wyoming_exposure(parse_config({**lan, "wyoming": {"port": 10300, **ok}}))
    check_wyoming_exposure(parse_config({"wyoming": {"port": 10300}}))  # loopback
    check_wyoming_exposure(parse_config(lan))  # no Wyoming listener
    cfg = parse_config({**lan, "wyoming": {"port": 10300, "allow_from": ["192.168.1.0/24"]}})
    assert wyoming_peer_allowed(cfg, "192.168.1.77")
    assert wyoming_peer_allowed(cfg, "::ffff:192.168.1.77")  # a dual-stack socket's form
    assert not wyoming_peer_allowed(cfg, "192.168.2.1")
    assert not wyoming_peer_allowed(cfg, "not-an-address")


@pytest.mark.parametrize("table,message", [
    ({"port": 70000}, "0-65535"), ({"allow_from": ["lan"]}, "not an address"),
    ({"max_payload_bytes": 0}, ">= 1"), ({"idle_timeout_s": 0}, "> 0"), ({"porrt": 1}, "unknown"),
])  # fmt: skip
def test_bad_wyoming_config_names_the_key(table, message):
    from hoosh_edge.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config({"wyoming": table})


def test_describe_on_a_connection_that_then_idles_still_gets_info(gateway_factory):
    gw = start(gateway_factory, idle_timeout_s=1)
    events = run(exchange(gw.port, [Describe().event()], ("info",), timeout=5))
    assert events[-1].type == "info"


def test_zeroconf_without_its_package_refuses_to_start_before_listening(tmp_path):
    import importlib.util

    from tests.conftest import GatewayProcess

    if importlib.util.find_spec("zeroconf") is not None:
        pytest.skip("the zeroconf package is installed here: its absence cannot be shown")
    gw = GatewayProcess(wyoming_toml(zeroconf=True), tmp_path)
    with pytest.raises(RuntimeError, match="did not start"):
        gw.start(timeout=30)
    assert "pip install 'hoosh-edge[zeroconf]'" in gw.log
    assert "Traceback" not in gw.log


def test_zeroconf_does_not_announce_a_loopback_listener(caplog):
    from hoosh_edge.config import parse_config
    from hoosh_edge.serve.announce import start_announcer

    cfg = parse_config({"wyoming": {"port": 10300, "zeroconf": True}})
    assert start_announcer(cfg, 10300) is None
    assert "no other machine" in caplog.text


def test_a_peer_that_stops_reading_times_out_and_frees_the_voice(gateway_factory, voice):
    gw = start(gateway_factory, voice, idle_timeout_s=1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few chunks
    s.connect(("127.0.0.1", gw.port))
    started = time.monotonic()
    try:
        s.sendall(header({"type": "synthesize", "data": {"text": "Hello there, friend. " * 150}}))
        lines = []
        deadline = time.monotonic() + 20
        while not lines and time.monotonic() < deadline:  # never read: wait for the access line
            time.sleep(0.2)
            lines = access_lines(gw, "wyoming:tts", timeout=0)
        assert lines and lines[0]["status"] == 499, lines
        assert time.monotonic() - started < 15
    finally:
        s.close()
    pcm, _, events = synthesize(gw.port, "The voice is free again.")
    assert pcm and events[-1].type == "audio-stop"
    assert 'outcome="idle_timeout"' in requests.get(gw.url + "/metrics", timeout=5).text


def test_allow_from_changes_on_a_reload(gateway_factory):
    import signal

    gw = start(gateway_factory, allow_from=["192.168.1.0/24"])
    assert raw_exchange(gw.port, header({"type": "describe"}), timeout=5) == ([], True)
    text = gw.config_path.read_text().replace('["192.168.1.0/24"]', '["127.0.0.1"]')
    gw.config_path.write_text(text)
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "config reloaded" not in gw.log:
        assert time.monotonic() < deadline, gw.log
        time.sleep(0.05)
    events, _ = raw_exchange(gw.port, header({"type": "describe"}), timeout=2)
    assert [e["type"] for e in events] == ["info"]


def test_a_taken_wyoming_port_stops_start_up_with_a_clear_message(tmp_path):
    from tests.conftest import GatewayProcess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        cfg = wyoming_toml().replace("port = 0", f"port = {taken.getsockname()[1]}")
        gw = GatewayProcess(cfg, tmp_path)
        with pytest.raises(RuntimeError, match="did not start"):
            gw.start(timeout=30)
    assert "cannot listen on 127.0.0.1" in gw.log and "Traceback" not in gw.log
