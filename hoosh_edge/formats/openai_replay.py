"""A streamed OpenAI answer kept as one completion, and played back as chunks.

``ChatRecorder`` joins a stream into one ``chat.completion`` only if the stream ended cleanly, so
the cache stores finished answers only; ``replay_chunks`` turns a stored completion back into
chunks, so a streamed request can hit an answer stored by a non-streamed one and vice versa.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hoosh_edge.formats.openai import join_chunks

__all__ = ["ChatRecorder", "replay_chunks"]


class ChatRecorder:
    """Collect one streamed answer's chunks; give its completion only if it ended cleanly."""

    def __init__(self) -> None:
        self._chunks: list[dict[str, Any]] = []
        self._finished = False
        self._failed = False

    def add(self, chunk: dict[str, Any]) -> None:
        """Record a chunk as the client saw it (an error chunk spoils the answer)."""
        if not isinstance(chunk, dict) or "error" in chunk:
            self._failed = True
            return
        self._chunks.append(chunk)
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self._finished = True

    def fail(self) -> None:
        """Mark the answer unusable (the stream broke or the client left)."""
        self._failed = True

    def completion(self) -> dict[str, Any] | None:
        """The joined ``chat.completion``, or None when the stream did not finish cleanly."""
        if self._failed or not self._finished:
            return None
        return join_chunks(self._chunks)


def replay_chunks(doc: Mapping[str, Any], piece_chars: int = 512) -> list[dict[str, Any]]:
    """Turn a stored ``chat.completion`` back into OpenAI chunk dicts (without id/created)."""
    choice = doc["choices"][0]
    msg = choice.get("message") or {}
    model = doc.get("model")

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                            "logprobs": None}]}  # fmt: skip
        if model:
            out["model"] = model
        return out

    chunks = []
    content = msg.get("content")
    first: dict[str, Any] = {"role": "assistant"}
    if isinstance(content, str):
        step = max(1, piece_chars)
        pieces = [content[i : i + step] for i in range(0, len(content), step)] or [""]
        first["content"] = pieces[0]
        chunks.append(chunk(first))
        chunks.extend(chunk({"content": p}) for p in pieces[1:])
    else:
        chunks.append(chunk(first))
    if isinstance(choice.get("logprobs"), dict):
        chunks[0]["choices"][0]["logprobs"] = choice["logprobs"]  # every token's, in one chunk
    if isinstance(msg.get("refusal"), str):
        chunks.append(chunk({"refusal": msg["refusal"]}))
    for i, call in enumerate(msg.get("tool_calls") or ()):
        fn = call.get("function") or {}
        # As a live stream: id, type and name with empty arguments, then the arguments.
        chunks.append(chunk({"tool_calls": [{
            "index": i, "id": call.get("id"), "type": call.get("type") or "function",
            "function": {"name": fn.get("name") or "", "arguments": ""},
        }]}))  # fmt: skip
        if fn.get("arguments"):
            chunks.append(chunk({"tool_calls": [{"index": i,
                                                 "function": {"arguments": fn["arguments"]}}]}))  # fmt: skip
    chunks.append(chunk({}, choice.get("finish_reason") or "stop"))
    if isinstance(choice.get("stop_reason"), str):
        chunks[-1]["choices"][0]["stop_reason"] = choice["stop_reason"]
    if doc.get("usage"):
        tail: dict[str, Any] = {"choices": [], "usage": doc["usage"]}
        if model:
            tail["model"] = model
        chunks.append(tail)
    return chunks
