"""The Anthropic translation composes: what the door takes in, the provider gives back out.

A request an Anthropic client sends to /v1/messages becomes an OpenAI chat request (the door's
half), which the Anthropic provider turns into the body it would send to Anthropic. Everything the
OpenAI shape can hold must arrive unchanged. What it cannot hold is listed, and normalised in the
expected value, never in the code under test: thinking blocks of earlier turns, top_k, the
interleaving of text and tool_use inside one assistant turn (OpenAI keeps one text and the calls),
a system prompt's block boundaries, a tool_result's block boundaries, and turn boundaries between
consecutive turns of the same role.

Streams: Anthropic events -> OpenAI chunks (provider) -> Anthropic events (door) keep the text, the
tool calls, the stop reason and the token counts; and the other way round, OpenAI chunks ->
Anthropic events -> OpenAI chunks keep the joined completion.
"""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hoosh_edge.errors import HooshError
from hoosh_edge.formats.anthropic_request import to_chat_request, to_messages_request
from hoosh_edge.formats.anthropic_response import to_chat_completion, to_message
from hoosh_edge.formats.anthropic_stream import StreamEvents, StreamTranslator
from hoosh_edge.formats.openai import join_chunks, validate_chat_request
from tests import fuzzing

# Pure functions, no server: many more examples than the suite's fuzz budget, still in seconds.
MANY = settings(max_examples=300, deadline=None)

text = st.text(min_size=1, max_size=40)
names = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=24)
ids = names.map(lambda s: f"toolu_{s}")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)  # fmt: skip
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

text_block = st.builds(lambda t: {"type": "text", "text": t}, text)
image_block = st.one_of(
    st.builds(lambda mt, data: {"type": "image", "source": {"type": "base64", "media_type": mt,
                                                           "data": data}},
              st.sampled_from(["image/jpeg", "image/png", "image/gif", "image/webp"]),
              st.text(string.ascii_letters + string.digits + "+/=", min_size=4, max_size=40)),
    st.builds(lambda path: {"type": "image", "source": {"type": "url",
                                                        "url": f"https://example.com/{path}.png"}},
              names),
)  # fmt: skip
tool_result = st.builds(
    lambda tid, content: {"type": "tool_result", "tool_use_id": tid, "content": content},
    ids, st.text(max_size=30) | st.lists(text_block, min_size=1, max_size=3),
)  # fmt: skip
tool_use = st.builds(lambda tid, name, args: {"type": "tool_use", "id": tid, "name": name,
                                              "input": args}, ids, names, json_objects)  # fmt: skip
thinking = st.builds(lambda t: {"type": "thinking", "thinking": t, "signature": "sig"}, text)

# Anthropic wants a user turn's tool_result blocks first, then what the user says.
user_turn = st.one_of(
    text,
    st.builds(lambda results, rest: results + rest, st.lists(tool_result, max_size=2),
              st.lists(text_block | image_block, max_size=3)).filter(bool),
).map(lambda content: {"role": "user", "content": content})  # fmt: skip
assistant_turn = st.one_of(
    text,
    st.builds(lambda th, texts, calls: th + texts + calls, st.lists(thinking, max_size=1),
              st.lists(text_block, max_size=2), st.lists(tool_use, max_size=3))
    .filter(lambda blocks: any(b["type"] != "thinking" for b in blocks)),
).map(lambda content: {"role": "assistant", "content": content})  # fmt: skip

tool_defs = st.lists(
    st.builds(lambda name, desc, props: {
        "name": name, **({"description": desc} if desc else {}),
        "input_schema": {"type": "object", "properties": props}},
        names, st.text(max_size=20), st.dictionaries(names, st.just({"type": "string"}), max_size=3)),
    min_size=1, max_size=3, unique_by=lambda t: t["name"],
)  # fmt: skip
tool_choices = st.one_of(
    st.builds(lambda kind, solo: {"type": kind, **({"disable_parallel_tool_use": True} if solo
                                                  else {})},
              st.sampled_from(["auto", "any"]), st.booleans()),
    st.just({"type": "none"}),
)  # fmt: skip


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A Messages request the real API accepts, in every shape the door translates."""
    body: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": draw(st.integers(1, 64_000)),
        "messages": draw(st.lists(user_turn | assistant_turn, min_size=1, max_size=6)),
    }
    if draw(st.booleans()):
        body["system"] = draw(text | st.lists(text_block, min_size=1, max_size=3))
    for key, values in (
        ("temperature", st.floats(0, 1)),
        ("top_p", st.floats(0, 1)),
        ("top_k", st.integers(1, 500)),
        ("stop_sequences", st.lists(text, min_size=1, max_size=4)),
        ("metadata", st.builds(lambda u: {"user_id": u}, names)),
        ("stream", st.booleans()),
    ):
        if draw(st.booleans()):
            body[key] = draw(values)
    if draw(st.booleans()):
        body["tools"] = draw(tool_defs)
        if draw(st.booleans()):
            pick = st.sampled_from([t["name"] for t in body["tools"]])
            body["tool_choice"] = draw(
                tool_choices | pick.map(lambda n: {"type": "tool", "name": n})
            )
    return body


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _expected_turn(turn: dict[str, Any]) -> list[dict[str, Any]]:
    """A turn's blocks as the OpenAI shape can carry them (see the module docstring)."""
    out = []
    for b in _blocks(turn["content"]):
        if b["type"] == "tool_result" and isinstance(b["content"], list):
            b = {**b, "content": "\n".join(part["text"] for part in b["content"])}
        if b["type"] != "thinking":
            out.append(b)
    if turn["role"] == "assistant":
        joined = "".join(b["text"] for b in out if b["type"] == "text")
        out = [{"type": "text", "text": joined}] * bool(joined) + [
            b for b in out if b["type"] == "tool_use"
        ]
    return out


def expected_upstream(body: dict[str, Any]) -> dict[str, Any]:
    """What the provider should send to Anthropic for the request a client sent the door."""
    messages: list[dict[str, Any]] = []
    for turn in body["messages"]:
        blocks = _expected_turn(turn)
        if messages and messages[-1]["role"] == turn["role"]:
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": turn["role"], "content": blocks})
    out: dict[str, Any] = {"model": body["model"], "messages": messages,
                           "max_tokens": body["max_tokens"]}  # fmt: skip
    system = body.get("system")
    if system:
        out["system"] = "\n".join(b["text"] for b in _blocks(system))
    for key in ("temperature", "top_p", "stop_sequences", "metadata", "tools"):
        if key in body:
            out[key] = body[key]
    choice = body.get("tool_choice")
    if "tools" in body and choice:
        out["tool_choice"] = {"type": "none"} if choice["type"] == "none" else choice
    return out


def _canonical(body: dict[str, Any]) -> dict[str, Any]:
    """A sent body with string content as one text block, the one form the API treats alike."""
    return {**body, "messages": [{**m, "content": _blocks(m["content"])} for m in body["messages"]]}


@MANY
@given(anthropic_requests())
def test_a_request_survives_door_then_provider(body):
    chat = to_chat_request(json.loads(json.dumps(body)))
    sent = to_messages_request(chat["model"], chat)
    assert _canonical(sent) == expected_upstream(body)
    assert chat.get("stream", False) == body.get("stream", False)


# ---- answers ------------------------------------------------------------------------------------

# The two stop reasons OpenAI has no word for come back as their nearest kin.
STOP_AFTER_ROUND_TRIP = {"pause_turn": "end_turn", "model_context_window_exceeded": "max_tokens"}
stop_reasons = st.sampled_from(["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal",
                                "pause_turn", "model_context_window_exceeded"])  # fmt: skip


@st.composite
def anthropic_messages(draw: st.DrawFn) -> dict[str, Any]:
    """An Anthropic answer: text, thinking and tool_use blocks, a stop reason and usage."""
    content = draw(st.lists(text_block | tool_use | thinking, max_size=5))
    reason = draw(stop_reasons)
    return {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": content, "stop_reason": reason,
        "stop_sequence": draw(text) if reason == "stop_sequence" else None,
        "usage": {k: draw(st.integers(0, 10**6)) for k in (
            "input_tokens", "output_tokens", "cache_creation_input_tokens",
            "cache_read_input_tokens")},
    }  # fmt: skip


def _pieces(draw: st.DrawFn, s: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(s) - 1)), max_size=4)))
    return [s[a:b] for a, b in zip([0, *cuts], [*cuts, len(s)], strict=True) if s[a:b]]


def anthropic_events(draw: st.DrawFn, msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The events Anthropic streams for ``msg``, cut at random places, with pings between."""
    u = msg["usage"]
    head = {**msg, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**u, "output_tokens": 1}}  # fmt: skip
    out: list[dict[str, Any]] = [{"type": "message_start", "message": head}]
    for i, b in enumerate(msg["content"]):
        if b["type"] == "tool_use":
            start, kind, field, body = {**b, "input": {}}, "input_json_delta", "partial_json", \
                json.dumps(b["input"])  # fmt: skip
        else:
            field = b["type"]  # "text" or "thinking"
            start, kind, body = {"type": field, field: ""}, f"{field}_delta", b[field]
        out.append({"type": "content_block_start", "index": i, "content_block": start})
        for piece in _pieces(draw, body):
            out.append({"type": "content_block_delta", "index": i,
                        "delta": {"type": kind, field: piece}})  # fmt: skip
            if draw(st.booleans()):
                out.append({"type": "ping"})
        out.append({"type": "content_block_stop", "index": i})
    out.append({"type": "message_delta", "usage": {"output_tokens": u["output_tokens"]},
                "delta": {"stop_reason": msg["stop_reason"],
                          "stop_sequence": msg["stop_sequence"]}})  # fmt: skip
    out.append({"type": "message_stop"})
    return out


def answer_of(content: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """An answer's content as the OpenAI shape carries it: thinking gone, adjacent texts joined."""
    out: list[tuple[str, Any]] = []
    for b in content:
        if b["type"] == "text" and b["text"]:
            if out and out[-1][0] == "text":
                out[-1] = ("text", out[-1][1] + b["text"])
            else:
                out.append(("text", b["text"]))
        elif b["type"] == "tool_use":
            out.append(("tool_use", (b["id"], b["name"], b["input"])))
    return out


def blocks_of_events(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(content blocks, final message_delta) a client assembles from Anthropic stream events."""
    blocks: dict[int, dict[str, Any]] = {}
    args: dict[int, str] = {}
    final: dict[str, Any] = {}
    for e in events:
        if e["type"] == "content_block_start":
            blocks[e["index"]] = dict(e["content_block"])
        elif e["type"] == "content_block_delta":
            d = e["delta"]
            if d["type"] == "text_delta":
                blocks[e["index"]]["text"] += d["text"]
            elif d["type"] == "input_json_delta":
                args[e["index"]] = args.get(e["index"], "") + d["partial_json"]
        elif e["type"] == "message_delta":
            final = e
    for i, raw in args.items():
        blocks[i]["input"] = json.loads(raw)
    assert [e["type"] for e in events][-1] == "message_stop"
    return [blocks[i] for i in sorted(blocks)], final


@MANY
@given(st.data())
def test_stream_events_to_chunks_and_back(data):
    msg = data.draw(anthropic_messages())
    upstream = anthropic_events(data.draw, msg)
    provider = StreamTranslator("claude-test", "claude")
    chunks = [c for e in upstream for c in provider.feed(e["type"], e)]
    stops = [msg["stop_sequence"]] if msg["stop_sequence"] else []
    door = StreamEvents("msg_2", "claude-test", 0, stops)
    events = door.start() + [e for c in chunks for e in door.chunk(c)] + door.finish()
    content, final = blocks_of_events(events)
    assert answer_of(content) == answer_of(msg["content"])
    reason = msg["stop_reason"]
    assert final["delta"] == {"stop_reason": STOP_AFTER_ROUND_TRIP.get(reason, reason),
                              "stop_sequence": msg["stop_sequence"]}  # fmt: skip
    u = msg["usage"]
    assert final["usage"] == {
        "input_tokens": u["input_tokens"] + u["cache_creation_input_tokens"],  # OpenAI: one count
        "output_tokens": u["output_tokens"],
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u["cache_read_input_tokens"],
    }
    # Not streamed, a chat.completion holds one text and then the calls: the order within goes.
    back = to_message(to_chat_completion(msg, "claude-test"), "msg_2", stops)
    texts = [b for b in msg["content"] if b["type"] == "text"]
    calls = [b for b in msg["content"] if b["type"] == "tool_use"]
    assert answer_of(back["content"]) == answer_of(texts + calls)
    assert (back["stop_reason"], back["stop_sequence"]) == tuple(final["delta"].values())


@st.composite
def openai_chunks(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A backend's chat stream: text, then tool calls whose arguments arrive in pieces."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "c", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in _pieces(draw, draw(st.text(max_size=60)))]
    for n, (tid, name, args) in enumerate(draw(st.lists(st.tuples(ids, names, json_objects),
                                                        max_size=3))):  # fmt: skip
        out.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": n,
                            "id": tid,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        out += [chunk({"tool_calls": [{"index": n, "function": {"arguments": p}}]})
                for p in _pieces(draw, json.dumps(args))]  # fmt: skip
    out.append(chunk({}, draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))))
    usage = {"prompt_tokens": draw(st.integers(0, 10**6)),
             "completion_tokens": draw(st.integers(0, 10**6))}  # fmt: skip
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return [*out, {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage}]


@MANY
@given(openai_chunks())
def test_chunks_to_stream_events_and_back(chunks):
    door = StreamEvents("msg_3", "m", 0, [])
    events = door.start() + [e for c in chunks for e in door.chunk(c)] + door.finish()
    provider = StreamTranslator("m", "claude")
    again = [c for e in events for c in provider.feed(e["type"], e)]
    want, got = join_chunks(chunks), join_chunks(again)
    assert got["choices"][0]["message"] == want["choices"][0]["message"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    assert got["usage"] == want["usage"]
    assert provider.done


# ---- hostile input ------------------------------------------------------------------------------

LOTS = settings(max_examples=600, deadline=None)


def _relay(body: Any) -> None:
    """Door then provider, as for an Anthropic client of an Anthropic upstream."""
    chat = to_chat_request(body)
    to_messages_request(chat["model"], chat)


@LOTS
@given(fuzzing.broken(fuzzing.messages_request))
def test_a_broken_messages_request_is_refused_cleanly_on_either_side(case):
    body, _ = case
    try:
        _relay(body)
    except HooshError as e:
        assert e.status == 400, e  # the client's fault, whichever half noticed it


@LOTS
@given(fuzzing.broken(fuzzing.chat_request))
def test_every_chat_request_the_openai_door_accepts_the_provider_sends_or_refuses(case):
    body, _ = case
    try:
        req = validate_chat_request(body)
    except HooshError:
        return  # refused at the door: no provider sees it
    try:
        to_messages_request("claude-test", req)
    except HooshError as e:
        assert e.status == 400, e


@LOTS
@given(fuzzing.json_values, fuzzing.json_values)
def test_any_finish_reason_a_backend_sends_gives_an_anthropic_stop_reason(finish, sequence):
    choice = {"index": 0, "delta": {"content": "x"}, "finish_reason": finish,
              "stop_reason": sequence}  # fmt: skip
    door = StreamEvents("msg_4", "m", 0, ["END"])
    events = door.chunk({"choices": [choice]}) + door.finish()
    reasons = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"}
    assert events[-2]["delta"]["stop_reason"] in reasons
    message = to_message({"choices": [{**choice, "message": {"content": "x"}}]}, "msg_4", ["END"])
    assert message["stop_reason"] in reasons
