"""The response cache: keys, policy, TTL, LRU bounds, integrity, durability, chat replay."""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import gevent
import pytest

from hoosh_edge.books.cache import (
    CachePolicy,
    ResponseCache,
    canonical_json,
    chat_key,
    speech_key,
    transcription_key,
)
from hoosh_edge.books.db import DB_FILENAME, Database
from hoosh_edge.doors.common import cache_directives as directives
from hoosh_edge.formats.openai import join_chunks
from hoosh_edge.formats.openai_replay import ChatRecorder, replay_chunks

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """A clock that moves only when told."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds


@pytest.fixture
def database(books_db):
    """Each test on both engines: this box's file and the fleet's PostgreSQL (shared = true)."""
    return books_db


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_cache(db: Database, clock: Clock, **policy: Any) -> ResponseCache:
    return ResponseCache(db, CachePolicy(**policy), clock=clock)


def meta(model: str = "qwen", provider: str = "local") -> dict[str, Any]:
    return {"provider": provider, "model": model, "content_type": "audio/wav"}


COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "qwen2.5-0.5b",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there."},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}  # fmt: skip


# ---- keys ----------------------------------------------------------------------------------------

BASE = {
    "model": "fast",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "temperature": 0,
}

CHANGES_ANSWER = {
    "messages": [{"role": "user", "content": "Hi!"}],
    "temperature": 0.5,
    "top_p": 0.9,
    "max_tokens": 16,
    "max_completion_tokens": 17,
    "stop": ["\n"],
    "seed": 7,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "required",
    "response_format": {"type": "json_object"},
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "n": 2,
    "logit_bias": {"50256": -100},
}


@pytest.mark.parametrize("field", sorted(CHANGES_ANSWER))
def test_each_answer_changing_field_changes_the_chat_key(field: str) -> None:
    changed = {**BASE, field: CHANGES_ANSWER[field]}
    assert chat_key("local", "qwen", changed) != chat_key("local", "qwen", BASE)


def test_the_resolved_target_is_part_of_the_chat_key() -> None:
    key = chat_key("local", "qwen", BASE)
    assert chat_key("openai", "qwen", BASE) != key
    assert chat_key("local", "qwen-7b", BASE) != key
    # The alias the client used is not: two aliases of one target share answers.
    assert chat_key("local", "qwen", {**BASE, "model": "other-alias"}) == key


def test_framing_and_caller_fields_do_not_change_the_chat_key() -> None:
    key = chat_key("local", "qwen", BASE)
    same = [
        {**BASE, "user": "alice"},
        {**BASE, "stream": True, "stream_options": {"include_usage": True}},
        {**BASE, "temperature": 0.0},
        {**BASE, "n": 1},
        {**BASE, "presence_penalty": 0, "frequency_penalty": 0.0},
        {**BASE, "seed": None, "stop": None},
        dict(reversed(list(BASE.items()))),
        json.loads(json.dumps(BASE, indent=4, sort_keys=True)),
        {**BASE, "messages": [dict(reversed(list(m.items()))) for m in BASE["messages"]]},
    ]
    for req in same:
        assert chat_key("local", "qwen", req) == key, req


def test_token_limit_and_stop_are_normalized() -> None:
    k = lambda **kw: chat_key("local", "qwen", {**BASE, **kw})  # noqa: E731
    assert (
        k(max_tokens=10) == k(max_completion_tokens=10) == k(max_tokens=5, max_completion_tokens=10)
    )
    assert k(max_tokens=10) != k(max_tokens=11)
    assert k(stop="END") == k(stop=["END"]) == k(stop=["END", "END"])
    assert k(stop=["a", "b"]) == k(stop=["b", "a"])
    assert k(stop=[]) == k()


def test_whitespace_inside_messages_does_change_the_key() -> None:
    spaced = {**BASE, "messages": [{"role": "user", "content": "Hi "}]}
    plain = {**BASE, "messages": [{"role": "user", "content": "Hi"}]}
    assert chat_key("local", "qwen", spaced) != chat_key("local", "qwen", plain)


def test_canonical_json_is_compact_sorted_and_number_normalized() -> None:
    assert canonical_json({"b": 1.0, "a": [2.50, True, None]}) == '{"a":[2.5,true,null],"b":1}'
    with pytest.raises(TypeError):
        canonical_json({"a": object()})


def test_speech_key_changes_with_each_input() -> None:
    args = ("local", "amy", "tts-1", "Hello", "mp3", 1.0)
    key = speech_key(*args)
    assert speech_key("local", "amy", "tts-1", "Hello", "mp3", 1) == key
    for i, other in enumerate(("openai", "ryan", "tts-1-hd", "Hello!", "wav", 1.25)):
        changed = list(args)
        changed[i] = other
        assert speech_key(*changed) != key, other


def test_transcription_key_changes_with_each_input() -> None:
    params = {"language": "en", "prompt": None, "response_format": "json", "translate": False}
    key = transcription_key("local", "whisper-1", "ab" * 32, params)
    assert transcription_key("local", "whisper-1", "AB" * 32, {**params, "temperature": 0.0}) == key
    assert transcription_key("local", "whisper-1", "cd" * 32, params) != key
    assert transcription_key("local", "tiny.en", "ab" * 32, params) != key
    for name, value in [("language", "de"), ("prompt", "names"), ("response_format", "srt"),
                        ("translate", True), ("temperature", 0.2)]:  # fmt: skip
        assert transcription_key("local", "whisper-1", "ab" * 32, {**params, name: value}) != key


# ---- policy and directives -----------------------------------------------------------------------


def test_policy_defaults_and_config_pairs() -> None:
    assert CachePolicy.from_config(()) == CachePolicy(True, 86400, 10_000, 256 * 1024 * 1024, False)
    p = CachePolicy.from_config((("ttl_s", 60), ("max_bytes", "64MiB"), ("max_entries", 5)))
    assert (p.ttl_s, p.max_bytes, p.max_entries) == (60, 64 * 1024 * 1024, 5)
    assert CachePolicy.from_config({"max_bytes": "1.5 GB"}).max_bytes == 1_500_000_000


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"ttl": 5}, "'ttl'"),
        ({"enabled": "yes"}, "enabled"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": "1h"}, "ttl_s"),
        ({"max_entries": 0}, "max_entries"),
        ({"max_entries": 2.5}, "max_entries"),
        ({"max_bytes": "lots"}, "max_bytes"),
        ({"max_bytes": True}, "max_bytes"),
        ({"cache_nondeterministic": 1}, "cache_nondeterministic"),
    ],
)
def test_policy_errors_name_the_setting(raw: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        CachePolicy.from_config(raw)


def test_chat_cacheability() -> None:
    p = CachePolicy()
    assert p.chat_cacheable({"temperature": 0})
    assert p.chat_cacheable({"temperature": 0.9, "seed": 1})
    assert not p.chat_cacheable({"temperature": 0.7})
    assert not p.chat_cacheable({})  # providers default to temperature 1
    assert CachePolicy(cache_nondeterministic=True).chat_cacheable({"temperature": 1})
    assert not CachePolicy(enabled=False).chat_cacheable({"temperature": 0})
    assert p.speech_cacheable() and p.transcription_cacheable(0.0)
    assert not p.transcription_cacheable(0.4)
    assert not CachePolicy(enabled=False).speech_cacheable()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (True, True)),
        ("", (True, True)),
        ("no-cache", (False, True)),
        ("no-store", (True, False)),
        ("No-Cache, NO-STORE", (False, False)),
        ("max-age=0", (False, True)),
        ("max-age=60", (True, True)),
        ("private, no-store ", (True, False)),
        ("no-transform", (True, True)),
    ],
)
def test_cache_control_directives(header: str | None, expected: tuple[bool, bool]) -> None:
    assert directives(header) == expected


# ---- store ---------------------------------------------------------------------------------------


def test_miss_then_hit_and_stats(database: Database, clock: Clock) -> None:
    cache = make_cache(database, clock)
    assert cache.get("k1") is None
    assert cache.put("k1", "speech", b"RIFF....", meta())
    entry = cache.get("k1")
    assert entry is not None
    assert (entry.kind, entry.body, entry.meta["model"], entry.created) == (
        "speech", b"RIFF....", "qwen", clock.now)  # fmt: skip
    s = cache.stats()
    assert (s["entries"], s["hits"], s["misses"], s["hit_rate"]) == (1, 1, 1, 0.5)
    assert s["bytes"] == len(b"RIFF....") + len(json.dumps(meta(), separators=(",", ":")))
    assert s["by_kind"] == {"speech": {"entries": 1, "bytes": s["bytes"]}}


def test_overwrite_keeps_totals_exact(database: Database, clock: Clock) -> None:
    cache = make_cache(database, clock)
    cache.put("k", "speech", b"x" * 100, {})
    cache.put("k", "speech", b"y" * 40, {})
    cache.put("j", "speech", b"z" * 10, {})
    assert cache.get("k").body == b"y" * 40
    with database.read() as r:
        real = r.execute("SELECT COUNT(*), SUM(size) FROM response_cache").fetchone()
    s = cache.stats()
    assert (s["entries"], s["bytes"]) == tuple(real) == (2, 40 + 2 + 10 + 2)


def test_disabled_cache_neither_serves_nor_stores(database: Database, clock: Clock) -> None:
    make_cache(database, clock).put("k", "speech", b"a", {})
    off = make_cache(database, clock, enabled=False)
    assert off.get("k") is None
    assert not off.put("j", "speech", b"b", {})
    assert off.stats()["entries"] == 1


def test_put_refuses_bad_kind_and_body(database: Database, clock: Clock) -> None:
    cache = make_cache(database, clock)
    with pytest.raises(ValueError, match="kind"):
        cache.put("k", "image", b"", {})
    with pytest.raises(TypeError, match="bytes"):
        cache.put("k", "speech", "text", {})  # type: ignore[arg-type]


def test_ttl_expiry_with_a_frozen_clock(database: Database, clock: Clock) -> None:
    cache = make_cache(database, clock, ttl_s=100)
    cache.put("old", "speech", b"a", {})
    clock.tick(99.9)
    assert cache.get("old") is not None
    clock.tick(0.1)
    assert cache.get("old") is None
    assert cache.stats()["expired"] == 1
    cache.put("new", "speech", b"b", {})  # a put sweeps expired rows
    s = cache.stats()
    assert (s["entries"], s["expired"]) == (1, 0)


@pytest.mark.parametrize("touch_interval_s", [0.0, 3600.0])
def test_lru_eviction_by_entries(database: Database, clock: Clock, touch_interval_s: float) -> None:
    cache = ResponseCache(database, CachePolicy(max_entries=3), clock=clock,
                          touch_interval_s=touch_interval_s)  # fmt: skip
    for key in ("a", "b", "c"):
        cache.put(key, "speech", key.encode(), {})
        clock.tick()
    assert cache.get("a") is not None  # a is now more recent than b and c
    clock.tick()
    cache.put("d", "speech", b"d", {})
    assert cache.get("b") is None
    for key in ("c", "d"):
        clock.tick()
        assert cache.get(key) is not None
    clock.tick()
    cache.put("e", "speech", b"e", {})  # a's hit is now the oldest use
    assert [k for k in "abcde" if cache.get(k)] == ["c", "d", "e"]
    assert cache.stats()["evictions"] == 2


def test_lru_eviction_by_bytes(database: Database, clock: Clock) -> None:
    cache = make_cache(database, clock, max_bytes=3 * 102)  # each entry: 100 body + 2 meta
    for key in ("a", "b", "c"):
        cache.put(key, "speech", b"x" * 100, {})
        clock.tick()
    cache.get("a")
    cache.get("b")
    clock.tick()
    cache.put("big", "speech", b"y" * 150, {})  # needs two slots: c, then a go
    assert [k for k in ("a", "b", "c", "big") if cache.get(k)] == ["b", "big"]
    assert cache.stats()["bytes"] == 102 + 152
    assert not cache.put("huge", "speech", b"z" * 400, {})  # never fits: not stored at all
    assert cache.get("b") is not None


def test_hits_are_recorded_in_batches(database: Database, clock: Clock) -> None:
    cache = ResponseCache(database, CachePolicy(), clock=clock, touch_interval_s=60)
    cache.put("k", "speech", b"a", {})
    created = clock.now

    def last_used() -> float:
        with database.read() as r:
            return r.execute("SELECT last_used FROM response_cache WHERE key='k'").fetchone()[0]

    clock.tick(10)
    cache.get("k")
    assert last_used() == created  # held in memory: no write transaction for this hit
    clock.tick(55)
    cache.get("k")
    assert last_used() == clock.now  # a minute since the last flush: written out
    clock.tick(1)
    cache.get("k")
    cache.flush()
    assert last_used() == clock.now


def test_entries_survive_reopening(tmp_path: Path, clock: Clock) -> None:
    db = Database.open(tmp_path)
    make_cache(db, clock).put("k", "transcription", b'{"text":"hi"}', meta("whisper-1"))
    db.close()
    db = Database.open(tmp_path)
    entry = make_cache(db, clock).get("k")
    assert entry is not None and entry.body == b'{"text":"hi"}'
    db.close()


CHILD = textwrap.dedent(
    """
    import sys
    from hoosh_edge.books.cache import ResponseCache
    from hoosh_edge.books.db import Database
    cache = ResponseCache(Database.open(sys.argv[1]))
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        key = f"key-{i}"
        assert cache.put(key, "speech", key.encode() * 50, {"provider": "local", "model": "amy"})
        print(key, flush=True)
    """
)


def test_every_entry_stored_before_kill_9_survives(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "ready"
        printed = [child.stdout.readline().strip() for _ in range(200)]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        # Keys still in the pipe were printed after their put returned, so they count too.
        printed += [line for line in child.stdout.read().splitlines() if line.startswith("key-")]
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    db = Database.open(tmp_path)
    cache = ResponseCache(db)
    with db.read() as r:
        assert r.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    missing = [k for k in printed if (e := cache.get(k)) is None or e.body != k.encode() * 50]
    assert not missing and len(printed) >= 200
    db.close()


TAMPERING = {
    "flipped body byte": "UPDATE response_cache SET body = X'00' || substr(body, 2)",
    "bad JSON meta": "UPDATE response_cache SET meta = '{bad'",
    "text body": "UPDATE response_cache SET body = CAST(body AS TEXT)",
    "unknown kind": "UPDATE response_cache SET kind = 'image'",
    "text created": "UPDATE response_cache SET created = 'yesterday'",
    "wrong checksum": "UPDATE response_cache SET checksum = 'abc'",
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_a_corrupt_entry_is_dropped_not_served(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    db = Database.open(tmp_path)
    cache = make_cache(db, clock)
    cache.put("k", "speech", b"RIFF-audio", meta())
    cache.put("other", "speech", b"fine", meta())
    raw = sqlite3.connect(tmp_path / DB_FILENAME)
    with raw:
        raw.execute(TAMPERING[how] + " WHERE key = 'k'")
    raw.close()
    with caplog.at_level(logging.WARNING, logger="hoosh_edge.books.cache"):
        assert cache.get("k") is None
    assert "dropped" in caplog.text
    s = cache.stats()
    assert (s["entries"], s["dropped"]) == (1, 1)
    assert cache.get("other").body == b"fine"
    db.close()


def test_a_chat_body_that_is_no_completion_is_dropped(database: Database, clock: Clock) -> None:
    cache = make_cache(database, clock)
    cache.put("k", "chat", b'{"choices": []}', {})  # put() trusts its caller; get() still checks
    assert cache.get("k") is None and cache.stats()["dropped"] == 1


def test_clear_everything_or_one_model(database: Database, clock: Clock) -> None:
    cache = make_cache(database, clock)
    cache.put("a", "speech", b"1", meta("amy", "local"))
    cache.put("b", "speech", b"2", meta("amy", "local"))
    cache.put("c", "chat", b"3", meta("gpt-4o-mini", "openai"))
    cache.put("d", "chat", b"4", meta("qwen", "local"))
    assert cache.clear("nothing") == 0
    assert cache.clear("amy") == 2
    assert cache.clear("openai/gpt-4o-mini") == 1
    assert cache.clear() == 1
    assert cache.stats()["entries"] == 0 and cache.stats()["bytes"] == 0


# ---- chat: stored completions, replay, streams -------------------------------------------------


def stream_of(content: list[str], calls: list[tuple[str, str, list[str]]], finish: str,
              usage: dict | None) -> list[dict]:  # fmt: skip
    """Chunks as an OpenAI-compatible upstream sends them."""
    ch = lambda delta, f=None: {"model": "m", "choices": [{"index": 0, "delta": delta,  # noqa: E731
                                                          "finish_reason": f}]}  # fmt: skip
    out = [ch({"role": "assistant", "content": ""})] if content else [ch({"role": "assistant"})]
    out += [ch({"content": piece}) for piece in content]
    for i, (call_id, name, parts) in enumerate(calls):
        out.append(ch({"tool_calls": [{"index": i, "id": call_id, "type": "function",
                                       "function": {"name": name, "arguments": ""}}]}))  # fmt: skip
        out += [ch({"tool_calls": [{"index": i, "function": {"arguments": p}}]}) for p in parts]
    out.append(ch({}, finish))
    if usage:
        out.append({"model": "m", "choices": [], "usage": usage})
    return out


USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


@pytest.mark.parametrize(
    ("content", "calls", "finish", "usage"),
    [
        (["Hel", "lo", " world"], [], "stop", USAGE),
        (
            [],
            [("call_1", "get_weather", ['{"city"', ': "Oslo"}']), ("call_2", "get_time", ["{}"])],
            "tool_calls",
            USAGE,
        ),  # fmt: skip
        (["Let me check."], [("call_9", "lookup", ['{"q": "x"}'])], "tool_calls", None),
        (["x" * 1500], [], "length", USAGE),
        (["naïve ☃ 日本"], [], "stop", USAGE),
    ],
)
def test_join_and_replay_round_trip(content, calls, finish, usage) -> None:
    joined = join_chunks(stream_of(content, calls, finish, usage))
    replayed = replay_chunks(joined, piece_chars=512)
    assert join_chunks(replayed) == joined
    assert replayed[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c for c in replayed if c["choices"] and c["choices"][0]["finish_reason"]][0][
        "choices"][0]["finish_reason"] == finish  # fmt: skip
    assert (replayed[-1].get("usage") == usage) if usage else ("usage" not in replayed[-1])
    if len(content) == 1 and len(content[0]) == 1500:
        assert sum("content" in c["choices"][0]["delta"] for c in replayed if c["choices"]) == 3


def test_logprobs_and_the_matched_stop_survive_join_and_replay() -> None:
    """A cached answer gives back its token logprobs and which stop string ended it."""
    lp = [{"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []}
          for t in ("Hi", " there")]  # fmt: skip
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                      "finish_reason": None, "logprobs": {"content": lp[:1], "refusal": None}}]},
        {"choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": None,
                      "logprobs": {"content": lp[1:], "refusal": None}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "."}]},
    ]  # fmt: skip
    joined = join_chunks(chunks)
    choice = joined["choices"][0]
    assert choice["logprobs"]["content"] == lp and choice["stop_reason"] == "."
    assert join_chunks(replay_chunks(joined)) == joined


def test_a_streamed_answer_serves_a_plain_request_and_back(
    database: Database, clock: Clock
) -> None:
    cache = make_cache(database, clock)
    recorder = ChatRecorder()
    for chunk in stream_of(["Hi", " there"], [], "stop", USAGE):
        recorder.add(chunk)
    assert cache.put_chat("s", recorder.completion(), provider="local", model="m")
    doc = cache.get_chat("s")
    assert doc["choices"][0]["message"]["content"] == "Hi there" and doc["usage"] == USAGE
    assert cache.get("s").meta == {"provider": "local", "model": "m",
                                   "content_type": "application/json", "usage": USAGE}  # fmt: skip

    assert cache.put_chat("p", copy.deepcopy(COMPLETION), provider="local", model="qwen")
    stored = cache.get_chat("p")
    assert "id" not in stored and "created" not in stored  # per request: stamped on each hit

    paid = copy.deepcopy(COMPLETION)
    paid["usage"]["cost_usd"] = "0.000120"
    assert cache.put_chat("c", paid, provider="openai", model="gpt-4o-mini")
    assert cache.get_chat("c")["usage"] == COMPLETION["usage"]  # a hit is not billed again
    assert cache.get("c").meta["usage"] == COMPLETION["usage"]
    assert join_chunks(replay_chunks(stored))["choices"][0]["message"] == (
        COMPLETION["choices"][0]["message"])  # fmt: skip


def test_unfinished_or_failed_answers_are_never_stored(database: Database, clock: Clock) -> None:
    cache = make_cache(database, clock)
    cut = ChatRecorder()
    for chunk in stream_of(["Hal", "f an answ"], [], "stop", None)[:-1]:  # no finish chunk
        cut.add(chunk)
    assert cut.completion() is None
    assert not cache.put_chat("k", cut.completion(), provider="local", model="m")

    errored = ChatRecorder()
    for chunk in stream_of(["Hi"], [], "stop", None):
        errored.add(chunk)
    errored.add({"error": {"message": "upstream died", "type": "upstream_error"}})
    assert errored.completion() is None

    left = ChatRecorder()
    for chunk in stream_of(["Hi"], [], "stop", None):
        left.add(chunk)
    left.fail()  # the client went away before [DONE]
    assert left.completion() is None

    assert not cache.put_chat("k", {"error": {"message": "no"}}, provider="local", model="m")
    unfinished = copy.deepcopy(COMPLETION)
    unfinished["choices"][0]["finish_reason"] = None
    assert not cache.put_chat("k", unfinished, provider="local", model="m")
    assert cache.stats()["entries"] == 0


# ---- single flight -------------------------------------------------------------------------------


def test_identical_concurrent_requests_compute_once(database: Database, clock: Clock) -> None:
    cache = make_cache(database, clock)
    computed: list[int] = []
    served: list[tuple[int, bytes, bool]] = []

    def request(i: int) -> None:
        with cache.inflight("k") as flight:
            entry = cache.get("k")
            if entry is None:
                computed.append(i)
                gevent.sleep(0.05)  # the model at work; the others must wait, not compute
                cache.put("k", "speech", b"answer", {})
                served.append((i, b"answer", flight.waited))
            else:
                served.append((i, entry.body, flight.waited))

    gevent.joinall([gevent.spawn(request, i) for i in range(6)], raise_error=True)
    assert computed == [0]
    assert sorted(served) == [(0, b"answer", False)] + [(i, b"answer", True) for i in range(1, 6)]
    assert cache._flights == {}  # nothing left behind


def test_a_failed_leader_lets_the_next_request_compute(database: Database, clock: Clock) -> None:
    cache = make_cache(database, clock)
    computed: list[int] = []

    def request(i: int) -> None:
        try:
            with cache.inflight("k"):
                if cache.get("k") is None:
                    computed.append(i)
                    gevent.sleep(0.01)
                    if i == 0:
                        raise RuntimeError("upstream failed")
                    cache.put("k", "speech", b"ok", {})
        except RuntimeError:
            pass

    gevent.joinall([gevent.spawn(request, i) for i in range(4)], raise_error=True)
    assert computed == [0, 1]
    assert cache._flights == {}


def test_a_waiter_killed_while_waiting_leaves_nothing_behind(
    database: Database, clock: Clock
) -> None:
    cache = make_cache(database, clock)
    leader = cache.inflight("k").acquire()
    waiter = gevent.spawn(lambda: cache.inflight("k").acquire())
    gevent.sleep(0.01)
    assert not waiter.dead  # parked behind the leader
    waiter.kill()
    leader.release()
    leader.release()  # twice is harmless
    assert cache._flights == {}
    with cache.inflight("k") as flight:
        assert not flight.waited
