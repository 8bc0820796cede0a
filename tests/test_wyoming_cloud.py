"""Wyoming on a box without local speech models: OpenAI's audio API and chat behind it, as the
pipeline routes them, with the configured system prompt and token limit."""

from __future__ import annotations

from wyoming.asr import Transcript
from wyoming.audio import AudioChunk
from wyoming.tts import Synthesize, SynthesizeVoice

from tests.conftest import openai_provider_toml
from tests.wyoming_peer import (
    access_lines,
    describe,
    exchange,
    run,
    transcribe_events,
    wyoming_port,
    wyoming_toml,
)


def start(gateway_factory, fake, **wyoming):
    provider = openai_provider_toml(fake, models='["gpt-*", "tts-1", "whisper-1"]')
    gw = gateway_factory(wyoming_toml(provider, **wyoming))
    gw.port = wyoming_port(gw)
    return gw


def test_describe_offers_the_providers_speech_models(fake_openai, gateway_factory):
    gw = start(gateway_factory, fake_openai, chat_model="gpt-4o-mini")
    info, took = describe(gw.port)
    assert took < 1.0
    assert [m.name for m in info.asr[0].models] == ["whisper-1"]
    voices = [v.name for v in info.tts[0].voices]
    assert "alloy" in voices and "nova" in voices
    assert [m.name for m in info.handle[0].models] == ["gpt-4o-mini"]
    assert fake_openai.requests == []  # describe calls nobody


def test_speech_falls_back_to_openai_audio(fake_openai, gateway_factory):
    gw = start(gateway_factory, fake_openai)
    events = run(exchange(gw.port, [Synthesize(text="Good morning.",
                                               voice=SynthesizeVoice(name="nova")).event()],
                          ("audio-stop", "error")))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[0] == "audio-start" and kinds[-1] == "audio-stop", events
    assert events[0].data["rate"] == 24000  # OpenAI's pcm
    audio = b"".join(AudioChunk.from_event(e).audio for e in events if e.type == "audio-chunk")
    assert len(audio) == 2002  # the fake's 2003 bytes in whole 16-bit samples
    (sent,) = [r["json"] for r in fake_openai.requests if r["path"].endswith("/audio/speech")]
    assert sent["model"] == "tts-1" and sent["voice"] == "nova"
    assert sent["response_format"] == "pcm" and sent["input"] == "Good morning."
    back = run(exchange(gw.port, transcribe_events(bytes(32000)), ("transcript", "error")))
    assert back[-1].type == "transcript" and back[-1].data["text"] == "cloud transcript"
    assert any(r["path"].endswith("/audio/transcriptions") for r in fake_openai.requests)
    lines = access_lines(gw, "wyoming:tts") + access_lines(gw, "wyoming:asr")
    assert [(x["path"], x["provider"], x["status"]) for x in lines] == [
        ("wyoming:tts", "fake", 200), ("wyoming:asr", "fake", 200)]  # fmt: skip


def test_conversation_sends_the_system_prompt_and_the_token_limit(fake_openai, gateway_factory):
    gw = start(gateway_factory, fake_openai, chat_model="gpt-4o-mini",
               system_prompt="You are the kitchen.", max_tokens=50)  # fmt: skip
    ask = Transcript(text="Is the oven on?", context={"conversation_id": "k"})
    (handled,) = run(exchange(gw.port, [ask.event()], ("handled", "not-handled")))
    assert handled.type == "handled" and handled.data["text"] == "Echo: Is the oven on?"
    assert handled.data["context"] == {"conversation_id": "k"}
    (body,) = [r["json"] for r in fake_openai.chat_requests]
    assert body["messages"] == [{"role": "system", "content": "You are the kitchen."},
                                {"role": "user", "content": "Is the oven on?"}]  # fmt: skip
    assert (body.get("max_completion_tokens") or body.get("max_tokens")) == 50


def test_conversation_failures_are_not_handled(fake_openai, gateway_factory):
    gw = start(gateway_factory, fake_openai, chat_model="no-such-model")
    (out,) = run(exchange(gw.port, [Transcript(text="Hi").event()], ("handled", "not-handled")))
    assert out.type == "not-handled" and "no-such-model" in out.data["text"]
    bare = start(gateway_factory, fake_openai)  # no chat_model: no conversation offered
    info, _ = describe(bare.port)
    assert info.handle == []
    (out,) = run(exchange(bare.port, [Transcript(text="Hi").event()], ("not-handled",)))
    assert "wyoming.chat_model" in out.data["text"]


def test_a_conversation_remembers_its_last_turns_per_peer(fake_openai, gateway_factory):
    gw = start(gateway_factory, fake_openai, chat_model="gpt-4o-mini", history_turns=2)

    def turn(text: str, cid: str) -> str:
        ask = Transcript(text=text, context={"conversation_id": cid})
        (out,) = run(exchange(gw.port, [ask.event()], ("handled", "not-handled")))
        return out.data["text"]

    for text in ("one", "two", "three"):
        turn(text, "kitchen")
    turn("elsewhere", "hall")
    bodies = [r["json"]["messages"] for r in fake_openai.chat_requests]
    said = [[m["content"] for m in b[1:]] for b in bodies]  # past the system prompt
    assert said == [
        ["one"],
        ["one", "Echo: one", "two"],
        ["one", "Echo: one", "two", "Echo: two", "three"],
        ["elsewhere"],  # another conversation starts afresh
    ]
    turn("four", "kitchen")  # history_turns = 2: the oldest turn is gone
    last = [m["content"] for m in fake_openai.chat_requests[-1]["json"]["messages"][1:]]
    assert last == ["two", "Echo: two", "three", "Echo: three", "four"]


def test_conversation_memory_bounds():
    from hoosh_edge.pipeline.conversations import ConversationMemory

    now = [0.0]
    mem = ConversationMemory(max_conversations=2, max_turns=1, idle_s=10, clock=lambda: now[0])
    mem.add("10.0.0.1", "a", "hi", "hello")
    assert mem.messages("10.0.0.2", "a") == []  # another peer's conversation is not shared
    assert mem.messages("10.0.0.1", None) == []
    mem.add("10.0.0.1", "b", "x", "y")
    mem.add("10.0.0.1", "c", "x", "y")  # the least recently used ("a") goes
    assert len(mem) == 2 and mem.messages("10.0.0.1", "a") == []
    now[0] = 11
    assert mem.messages("10.0.0.1", "c") == [] and len(mem) == 0  # idle past idle_s
