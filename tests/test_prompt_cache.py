"""Saved prompt states: the store's bounds and files, and llama.cpp answers that reuse them."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import require, require_module

require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")

import synth_gguf  # noqa: E402

from hoosh_edge.backends.engines.llama import LlamaEngine  # noqa: E402
from hoosh_edge.backends.engines.pool import ModelPool  # noqa: E402
from hoosh_edge.books.prompt_states import SUFFIX, PromptStateStore  # noqa: E402
from hoosh_edge.errors import InsufficientMemory  # noqa: E402

MiB = 1 << 20


def blob(n: int, fill: int = 7) -> bytearray:
    return bytearray([fill]) * n


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*" + SUFFIX))


# -- the store ----------------------------------------------------------------------------------


def test_lookup_finds_the_longest_shared_prefix_in_its_own_space():
    store = PromptStateStore(None, ram_bytes=MiB)
    store.put("m", [1, 2, 3, 4], blob(10))
    store.put("m", [1, 2, 9], blob(10))
    store.put("other", [1, 2, 3, 4, 5, 6], blob(10))
    n, e = store.lookup("m", [1, 2, 3, 4, 5])
    assert n == 4 and list(e.tokens) == [1, 2, 3, 4]
    n, e = store.lookup("m", [1, 2, 9, 9])
    assert n == 3 and list(e.tokens) == [1, 2, 9]
    assert store.lookup("m", [5, 5]) == (0, None)
    assert store.lookup("nobody", [1, 2]) == (0, None)


def test_a_longer_turn_supersedes_the_entries_it_extends():
    store = PromptStateStore(None, ram_bytes=MiB)
    store.put("m", [1, 2], blob(10))
    store.put("m", [1, 2, 3], blob(10))
    store.put("m", [1, 7], blob(10))  # another conversation sharing one token: kept
    assert store.stats()["entries"] == 2
    store.put("m", [1, 2, 3, 4, 5], blob(10))
    assert sorted(len(e.tokens) for e in store._entries) == [2, 5]


def test_ram_is_bounded_least_recently_used_first():
    store = PromptStateStore(None, ram_bytes=3000)
    for i in range(5):
        store.put("m", [i, 1, 2], blob(1000))
    assert store.stats()["ram_bytes"] == 3000
    assert store.lookup("m", [0, 1, 2]) == (0, None)  # the oldest left
    _, e = store.lookup("m", [2, 1, 2])
    assert store.load(e) is not None  # using it makes it the newest
    store.put("m", [9, 1, 2], blob(1000))
    assert store.lookup("m", [2, 1, 2])[0] == 3 and store.lookup("m", [3, 1, 2]) == (0, None)
    assert store.put("m", [8], blob(4000)) is None  # bigger than RAM, no disk: not kept


def test_files_outlive_a_restart_and_are_bounded(tmp_path):
    store = PromptStateStore(tmp_path, ram_bytes=MiB, disk_bytes=2500)
    for i in range(3):
        store.put("m", [i, 5, 5, 5], blob(1000, fill=i))
        wait_for(lambda i=i: store.stats()["disk_entries"] == min(i + 1, 2))
    store.close()
    assert len(files(tmp_path)) == 2  # the folder holds at most 2500 bytes of states
    again = PromptStateStore(tmp_path, ram_bytes=MiB, disk_bytes=2500)
    assert again.stats()["ram_entries"] == 0 and again.stats()["disk_entries"] == 2
    n, e = again.lookup("m", [2, 5, 5, 5, 6])
    assert n == 4 and again.load(e) == blob(1000, fill=2)
    assert again.lookup("m", [0, 5, 5, 5]) == (0, None)
    assert again.stats()["hits"] == 1


def test_states_not_marked_persistent_stay_in_ram(tmp_path):
    store = PromptStateStore(tmp_path, ram_bytes=MiB, disk_bytes=MiB)
    store.put("m", [1, 2, 3], blob(100), persist=False)
    store.close()
    assert files(tmp_path) == [] and store.stats()["ram_entries"] == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "header"])
def test_a_damaged_or_foreign_file_is_dropped_and_logged(tmp_path, caplog, damage):
    store = PromptStateStore(tmp_path, ram_bytes=MiB, disk_bytes=MiB)
    store.put("m", [1, 2, 3], blob(5000))
    store.close()
    (path,) = files(tmp_path)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[-10] ^= 0xFF  # found on reading: the checksum
    elif damage == "truncate":
        del raw[-100:]  # found on the scan: the length
    elif damage == "foreign":
        raw[:5] = b"GGUF\x00"
    else:
        raw[30:34] = b"\xff\xff\xff\x7f"  # a header length that lies
    path.write_bytes(bytes(raw))
    (tmp_path / "half-written.tmp").write_bytes(b"x")  # a write a crash cut short
    with caplog.at_level(logging.WARNING, logger="hoosh_edge.books.prompt_states"):
        again = PromptStateStore(tmp_path, ram_bytes=MiB, disk_bytes=MiB)
        n, e = again.lookup("m", [1, 2, 3])
        if e is not None:
            assert again.load(e) is None
    assert not path.exists() and not (tmp_path / "half-written.tmp").exists()
    assert again.stats()["entries"] == 0 and again.stats()["dropped_files"] == 1
    assert "dropping" in caplog.text


def test_the_pool_counts_what_the_cache_may_still_take():
    from hoosh_edge.backends.engines.pool import ModelSlot

    store = PromptStateStore(None, ram_bytes=300 * MiB)
    total = {"bytes": 1000 * MiB}  # what a box would show free without the cache's own RAM
    pool = ModelPool(reserve_bytes=0,
                     mem_available=lambda: total["bytes"] - store.stats()["ram_bytes"])  # fmt: skip
    pool.caches.append(store)

    def slot(key: str, mib: int) -> ModelSlot:
        return pool.register(ModelSlot(key=key, kind="llm", loader=lambda: object(),
                                       estimate_bytes=mib * MiB))  # fmt: skip

    store.put("m", [1, 2, 3], blob(200 * MiB))
    slot("a", 600).ensure_loaded()  # 600 + the 100 the cache may still take fit in 800
    assert store.ram_limit == 300 * MiB
    total["bytes"] = 900 * MiB
    slot("b", 650).ensure_loaded()  # a unloads; then 650 fits in 700, the cache's bound not
    assert not pool.slot("a").loaded and store.ram_room() == 50 * MiB
    assert store.stats()["ram_bytes"] == 200 * MiB  # nothing saved was thrown away
    with pytest.raises(InsufficientMemory) as e:
        slot("c", 800).ensure_loaded()  # b is idle and goes, but 800 never fits in 700
    assert "MiB is available" in e.value.message


# -- llama.cpp answers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synth_gguf.make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf",
                                     n_ctx_train=4096)  # fmt: skip


def engine_with(path: Path, store: PromptStateStore) -> LlamaEngine:
    pool = ModelPool(reserve_bytes=0, mem_available=lambda: None)
    engine = LlamaEngine({"tiny": str(path)}, pool, n_threads=2, n_ctx=2048, states=store)
    engine.preload()
    wait_for(lambda: all(d.value for d in engine._digests.values()))  # hashed: may persist
    return engine


def answer(engine: LlamaEngine, messages: list[dict], **kw) -> tuple[str, dict]:
    chunks = list(engine.chat_stream("tiny", {"messages": messages, "temperature": 0,
                                              "max_tokens": 24, "seed": 5, **kw}))  # fmt: skip
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    engine.pool.slot("tiny")._lock.wait()  # the state is kept before the model is free again
    wait_for(lambda: not engine.pool.slot("tiny").busy)
    return text, chunks[-1]["usage"]


def conversation(name: str) -> list[dict]:
    system = f"You are {name}. " + " ".join(f"Fact {i} about {name}." for i in range(30))
    return [{"role": "system", "content": system}, {"role": "user", "content": "go"}]


def test_conversations_taking_turns_reuse_their_prompts_and_answer_the_same(tiny, tmp_path):
    store = PromptStateStore(tmp_path / "states", ram_bytes=64 * MiB, disk_bytes=64 * MiB)
    engine = engine_with(tiny, store)
    a, b = conversation("Ada"), conversation("Bob")
    first_a, ua = answer(engine, a)
    assert ua["prompt_tokens_details"]["cached_tokens"] == 0
    answer(engine, b)  # the live context now holds Bob
    a2 = a + [{"role": "assistant", "content": first_a}, {"role": "user", "content": "more"}]
    warm, u2 = answer(engine, a2)
    reused = u2["prompt_tokens_details"]["cached_tokens"]
    assert ua["prompt_tokens"] <= reused < u2["prompt_tokens"]  # Ada's first turn came back
    assert store.stats()["hits"] == 1
    # The same request on a model that never saw Ada gives the same answer.
    fresh = LlamaEngine({"tiny": str(tiny)}, ModelPool(reserve_bytes=0, mem_available=lambda: None),
                        n_threads=2, n_ctx=2048)  # fmt: skip
    cold = list(fresh.chat_stream("tiny", {"messages": a2, "temperature": 0, "max_tokens": 24,
                                           "seed": 5}))  # fmt: skip
    assert warm == "".join(
        c["choices"][0]["delta"].get("content", "") for c in cold if c["choices"]
    )
    assert cold[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_a_restarted_engine_starts_from_the_saved_files(tiny, tmp_path):
    folder = tmp_path / "states"
    store = PromptStateStore(folder, ram_bytes=64 * MiB, disk_bytes=64 * MiB)
    engine = engine_with(tiny, store)
    a = conversation("Cy")
    text, _ = answer(engine, a)
    wait_for(lambda: store.stats()["disk_entries"] == 1)
    store.close()
    engine.pool.slot("tiny").unload()

    store2 = PromptStateStore(folder, ram_bytes=64 * MiB, disk_bytes=64 * MiB)
    engine2 = engine_with(tiny, store2)
    a2 = a + [{"role": "assistant", "content": text}, {"role": "user", "content": "again"}]
    warm, u = answer(engine2, a2)
    assert u["prompt_tokens_details"]["cached_tokens"] > len(a[0]["content"])
    fresh_store = PromptStateStore(None, ram_bytes=0)
    cold, u0 = answer(engine_with(tiny, fresh_store), a2)
    assert warm == cold and u0["prompt_tokens_details"]["cached_tokens"] == 0


def test_a_state_for_other_load_parameters_is_never_restored(tiny, tmp_path):
    folder = tmp_path / "states"
    store = PromptStateStore(folder, ram_bytes=64 * MiB, disk_bytes=64 * MiB)
    engine = engine_with(tiny, store)
    answer(engine, conversation("Di"))
    wait_for(lambda: store.stats()["disk_entries"] == 1)
    store.close()
    pool = ModelPool(reserve_bytes=0, mem_available=lambda: None)
    store2 = PromptStateStore(folder, ram_bytes=64 * MiB, disk_bytes=64 * MiB)
    other = LlamaEngine({"tiny": str(tiny)}, pool, n_threads=2, n_ctx=1024, states=store2)
    other.preload()
    wait_for(lambda: all(d.value for d in other._digests.values()))
    chunks = list(other.chat_stream("tiny", {"messages": conversation("Di"), "max_tokens": 4}))
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert store2.stats()["hits"] == 0


def test_a_client_that_leaves_mid_answer_still_leaves_its_prompt_behind(tiny, tmp_path):
    store = PromptStateStore(None, ram_bytes=64 * MiB)
    engine = engine_with(tiny, store)
    messages = conversation("Eve")
    stream = engine.chat_stream("tiny", {"messages": messages, "max_tokens": 500})
    next(stream)
    stream.close()
    assert not engine.pool.slot("tiny").busy
    assert store.stats()["entries"] == 1
    # The next request for the same prompt starts from that state.
    _, u = answer(engine, conversation("Zed"))  # another prompt takes the live context
    _, u = answer(engine, messages)
    assert u["prompt_tokens_details"]["cached_tokens"] == u["prompt_tokens"] - 1
    assert store.stats()["hits"] == 1


# -- through the gateway, on SmolLM2 ------------------------------------------------------------


def smollm2() -> Path:
    p = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    require(p.exists(), "SmolLM2 is missing: run scripts/setup --dev")
    return p


def smollm2_toml(path: Path, cache_mb: int) -> str:
    return f"""
[local.llm]
n_threads = 2
n_ctx = 2048
prompt_cache_mb = {cache_mb}
[local.llm.models]
smollm2 = "{path}"
"""


HOUSE = "You are the voice assistant of a house. " + " ".join(
    f"The {thing} in room {i} is {'on' if i % 2 else 'off'}."
    for i, thing in enumerate(["lamp", "heater", "fan", "blind", "speaker"] * 8)
)


def turn(client, messages: list[dict]) -> tuple[str, int, int]:
    stream = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, seed=3, max_tokens=24, stream=True,
        stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    return text, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens


@pytest.mark.slow
def test_smollm2_turns_and_a_restart_reuse_the_prompt_losslessly(gateway_factory):
    """Restored states answer as the live context they were taken from would have.

    A gateway with the prompt cache serves a conversation taking turns with another one, and a
    restart; a gateway without it serves the same conversation alone, every turn reusing its live
    context (llama-cpp-python's own prefix reuse). Both see the same key/value cache at every
    turn, so the answers must match token for token.
    """
    import openai

    path = smollm2()
    gw = gateway_factory(smollm2_toml(path, 128))
    plain = gateway_factory(smollm2_toml(path, 0).replace("prompt_cache_mb = 0",
                                                          "prompt_cache_mb = 0\nprompt_cache_disk_mb = 0"))  # fmt: skip
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    alone = openai.OpenAI(base_url=plain.url + "/v1", api_key="x", max_retries=0)
    a = [{"role": "system", "content": HOUSE}, {"role": "user", "content": "Is the fan on?"}]
    b = [{"role": "system", "content": "You are a pirate."},
         {"role": "user", "content": "Where is the treasure? " * 20}]  # fmt: skip
    text_a, prompt_a, cached = turn(client, a)
    assert cached == 0 and prompt_a > 300
    assert turn(alone, a)[0] == text_a
    _, prompt_b, cached_b = turn(client, b)  # the live context shares only the template's start
    a2 = a + [{"role": "assistant", "content": text_a}, {"role": "user", "content": "And room 3?"}]
    warm, prompt_a2, cached = turn(client, a2)
    assert prompt_a <= cached < prompt_a2  # Ada's first turn came back from the saved state
    live, _, live_cached = turn(alone, a2)
    assert warm == live and live_cached == cached
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    reused, evaluated = cached_b + cached, prompt_a + prompt_b + prompt_a2 - cached_b - cached
    assert f'hoosh_prompt_tokens_reused_total{{provider="local"}} {float(reused)}' in metrics
    assert f'hoosh_prompt_tokens_evaluated_total{{provider="local"}} {float(evaluated)}' in metrics
    assert "hoosh_prompt_cache_restores 1.0" in metrics
    assert f'"cached_tokens":{cached}' in gw.log  # the access line says what was reused

    gw.stop()  # a restart: the states written to data/prompt-states come back
    gw.start()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    a3 = a2 + [{"role": "assistant", "content": warm}, {"role": "user", "content": "The lamp?"}]
    after, prompt_a3, cached = turn(client, a3)
    assert prompt_a2 <= cached < prompt_a3
    live, _, live_cached = turn(alone, a3)
    assert after == live and live_cached == cached
    shown = requests.get(gw.url + "/admin/status.json", timeout=5).json()["prompt_cache"]
    assert shown["hits"] == 1 and shown["disk_entries"] >= 2 and 0 < shown["ram_bytes"] < 128 * MiB


@pytest.mark.slow
def test_smollm2_a_shared_system_prompt_restored_answers_as_a_fresh_model():
    """A prefix evaluated as a prompt restores to exactly what a fresh model computes."""
    path = smollm2()
    pool = ModelPool(reserve_bytes=0, mem_available=lambda: None)
    store = PromptStateStore(None, ram_bytes=128 * MiB)
    engine = LlamaEngine({"tiny": str(path)}, pool, n_threads=2, n_ctx=2048, states=store)
    fresh_engine = LlamaEngine({"tiny": str(path)}, ModelPool(), n_threads=2, n_ctx=2048)
    other = [{"role": "system", "content": "You are a pirate."},
             {"role": "user", "content": "Arr! " * 40}]  # fmt: skip
    answer(engine, [{"role": "system", "content": HOUSE}, {"role": "user", "content": "Hi"}])
    for question in ("Which lamps are on?", "What is in room 7?", "How many fans are there?"):
        answer(engine, other)  # the house leaves the live context
        ask = [{"role": "system", "content": HOUSE}, {"role": "user", "content": question}]
        warm, u = answer(engine, ask)
        assert u["prompt_tokens_details"]["cached_tokens"] > 300  # the system prompt came back
        chunks = list(fresh_engine.chat_stream("tiny", {"messages": ask, "temperature": 0,
                                                        "max_tokens": 24, "seed": 5}))  # fmt: skip
        fresh_engine.pool.slot("tiny").unload()  # nothing of this prompt stays for the next one
        cold = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert warm == cold, question


def test_files_are_private_and_a_full_disk_is_said_once(tmp_path, caplog, monkeypatch):
    import errno

    from hoosh_edge.books import prompt_states

    folder = tmp_path / "states"
    store = PromptStateStore(folder, ram_bytes=MiB, disk_bytes=MiB)
    store.put("m", [1, 2, 3], blob(100))
    wait_for(lambda: store.stats()["disk_entries"] == 1)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert files(folder)[0].stat().st_mode & 0o777 == 0o600

    def full(*_a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prompt_states.os, "replace", full)  # the disk fills up
    with caplog.at_level(logging.WARNING, logger="hoosh_edge.books.prompt_states"):
        for i in range(3):
            store.put("m", [9, i], blob(100))
        store.close()
    assert caplog.text.count("cannot write") == 1
    assert store.stats()["ram_entries"] == 4 and store.stats()["disk_entries"] == 1
    assert list(folder.glob("*.tmp")) == []  # no half-written file left behind


def test_concurrent_non_ascii_conversations_then_kill_9_keep_their_states(gateway_factory, tiny):
    """Conversations in many scripts at once share one model and one store; a kill -9 (perhaps
    mid-write) costs at most the states not yet on disk, and the next start reuses the rest."""
    from concurrent.futures import ThreadPoolExecutor

    gw = gateway_factory(f"""
[local.llm]
n_threads = 2
n_ctx = 2048
max_queue = 16
[local.llm.models]
tiny = "{tiny}"
""")  # fmt: skip
    names = [
        "Grüße aus Köln",
        "東京の天気",
        "Привет, мир",
        "مرحبا بالعالم",
        "🙂 emoji 🚀",
        "Ελληνικά",
    ]
    talks = {n: [{"role": "system", "content": f"{n}. " * 40},
                 {"role": "user", "content": f"{n}?"}] for n in names}  # fmt: skip

    def turn(name: str) -> dict:
        body = {"model": "tiny", "messages": talks[name], "max_tokens": 12, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        r = requests.post(gw.url + "/v1/chat/completions", json=body, stream=True, timeout=120)
        assert r.status_code == 200, r.text
        lines = [x for x in r.iter_lines() if x.startswith(b"data: {")]
        chunks = [json.loads(x[6:]) for x in lines]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c["choices"])  # fmt: skip
        talks[name] = talks[name] + [{"role": "assistant", "content": text},
                                     {"role": "user", "content": f"{name}!"}]  # fmt: skip
        return chunks[-1]["usage"]

    with ThreadPoolExecutor(len(names)) as pool:
        first = list(pool.map(turn, names))
        second = list(pool.map(turn, names))
    assert all(
        u["prompt_tokens_details"]["cached_tokens"] == 0 or u["prompt_tokens"] for u in first
    )
    # Each conversation's second turn starts from its own first turn, whoever ran in between.
    for u0, u in zip(first, second, strict=True):
        assert u["prompt_tokens_details"]["cached_tokens"] >= u0["prompt_tokens"], (u0, u)
    gw.kill9()
    gw.start()
    third = [turn(n) for n in names]
    restored = [u for u in third if u["prompt_tokens_details"]["cached_tokens"] > 40]
    assert len(restored) >= len(names) - 1  # at most the last write can have been cut short
    assert not gw.log_problems()
