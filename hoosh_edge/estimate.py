"""The one token estimate of the gateway: an upper bound of what an upstream can bill.

Every path that reserves budget or has to guess a count (a provider that sent no usage, a stream
cut before its usage chunk) asks this module, so the reservation and the guess never disagree.

The bound rests on one fact: a byte-level BPE tokenizer (tiktoken, Claude's, Llama's, every one
the providers use) never makes more tokens than the UTF-8 bytes it is given, because every token
covers at least one byte. So the prompt is at most

    the UTF-8 bytes of everything the upstream tokenizes
      (each message's role, name and text parts, tool calls with their arguments, tool and function
      schemas, ``response_format`` schemas, Anthropic's ``system``)
    + PER_MESSAGE_TOKENS for each message   (chat-template markers: OpenAI documents 3-4)
    + PER_TOOL_TOKENS for each tool          (the framing the provider wraps a schema in)
    + TOOLS_PROMPT_TOKENS once with tools    (Anthropic documents a tool-use system prompt of
                                              at most 346 tokens; OpenAI's is smaller)
    + PER_REQUEST_TOKENS                     (reply priming: OpenAI documents 3)
    + the documented maximum of each image   (``Price.max_image_tokens``; unknown -> unbounded)

Schemas and tool-call arguments are counted in the widest JSON spelling (``", "``/``": "``
separators, non-ASCII unescaped or escaped, whichever is longer), so a provider that re-renders
them cannot exceed the count. Audio parts have no documented maximum: a prompt with one is
unbounded, and a usd or tokens rule refuses it rather than guess.

The completion is bounded by the ``max_tokens`` the gateway itself sends, never estimated.
"""

from __future__ import annotations

import json
from typing import Any

PER_REQUEST_TOKENS = 16
PER_MESSAGE_TOKENS = 8
PER_TOOL_TOKENS = 16
TOOLS_PROMPT_TOKENS = 512
# Completion tokens reserved when neither the client nor the price table names a limit.
DEFAULT_MAX_TOKENS = 4096
# The smallest answer worth paying for: a call that cannot afford this many tokens is refused.
MIN_ANSWER_TOKENS = 16

_IMAGE_PARTS = ("image_url", "image", "input_image")
_AUDIO_PARTS = ("input_audio", "audio", "file")


def text_tokens(text: str) -> int:
    """At most as many tokens as UTF-8 bytes."""
    return len(text.encode("utf-8", "surrogatepass"))


def json_tokens(value: Any) -> int:
    """A bound for a JSON value as any provider may render it: its widest spelling in bytes."""
    try:
        wide = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
        escaped = json.dumps(value, ensure_ascii=True, separators=(", ", ": "))
    except (TypeError, ValueError):
        wide = escaped = str(value)
    return max(text_tokens(wide), len(escaped))


def _arguments_tokens(arguments: Any) -> int:
    """Tool-call arguments: the string as sent, or re-rendered from its JSON, whichever is more."""
    if not isinstance(arguments, str):
        return json_tokens(arguments)
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return text_tokens(arguments)
    return max(text_tokens(arguments), json_tokens(parsed))


class Unbounded(Exception):
    """The prompt holds a part whose token count has no known maximum."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _part_tokens(part: Any, image_max: int | None) -> int:
    if isinstance(part, str):
        return text_tokens(part)
    if not isinstance(part, dict):
        return json_tokens(part)
    kind = part.get("type")
    if kind in _IMAGE_PARTS:
        if image_max is None:
            raise Unbounded("an image")
        return image_max
    if kind in _AUDIO_PARTS:
        raise Unbounded("an audio or file part")
    total = 0
    for key, value in part.items():
        if key == "type":
            continue
        total += text_tokens(value) if isinstance(value, str) else json_tokens(value)
    return total


def _content_tokens(content: Any, image_max: int | None) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        return sum(_part_tokens(p, image_max) for p in content)
    return json_tokens(content)


def message_tokens(message: Any, image_max: int | None = None) -> int:
    """One message: role, name, content parts and tool calls, plus its template overhead."""
    if not isinstance(message, dict):
        return PER_MESSAGE_TOKENS + json_tokens(message)
    total = PER_MESSAGE_TOKENS
    for key, value in message.items():
        if key == "content":
            total += _content_tokens(value, image_max)
        elif key == "tool_calls" and isinstance(value, list):
            for call in value:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    total += PER_TOOL_TOKENS + text_tokens(str(call.get("id") or ""))
                    total += text_tokens(str(fn.get("name") or ""))
                    total += _arguments_tokens(fn.get("arguments") or "")
                else:
                    total += PER_TOOL_TOKENS + json_tokens(call)
        elif key == "function_call" and isinstance(value, dict):
            total += text_tokens(str(value.get("name") or ""))
            total += _arguments_tokens(value.get("arguments") or "")
        elif isinstance(value, str):
            total += text_tokens(value)  # role, name, tool_call_id, refusal ...
        elif value is not None:
            total += json_tokens(value)
    return total


def prompt_tokens(req: dict[str, Any], *, image_max_tokens: int | None = None) -> int:
    """An upper bound of the prompt tokens of an OpenAI-form chat request, as any upstream counts.

    ``system`` (Anthropic's form) is counted too. Raises ``Unbounded`` for a part with no known
    maximum (an image when ``image_max_tokens`` is None, any audio).
    """
    total = PER_REQUEST_TOKENS
    system = req.get("system")
    if system is not None:
        total += PER_MESSAGE_TOKENS + _content_tokens(system, image_max_tokens)
    for message in req.get("messages") or ():
        total += message_tokens(message, image_max_tokens)
    tools = [t for t in (req.get("tools") or ()) if t is not None]
    functions = [f for f in (req.get("functions") or ()) if f is not None]
    if tools or functions:
        total += TOOLS_PROMPT_TOKENS
    for tool in [*tools, *functions]:
        total += PER_TOOL_TOKENS + json_tokens(tool)
    for field in ("response_format", "tool_choice", "function_call"):
        value = req.get(field)
        if isinstance(value, dict):
            total += json_tokens(value)
        elif isinstance(value, str) and field == "tool_choice":
            total += text_tokens(value)
    return total


def prompt_text_tokens(req: dict[str, Any]) -> int:
    """The prompt bound with images counted as nothing: for display only, never for money."""
    try:
        return prompt_tokens(req, image_max_tokens=0)
    except Unbounded:
        return prompt_tokens(_without_media(req), image_max_tokens=0)


def _without_media(req: dict[str, Any]) -> dict[str, Any]:
    messages = []
    for m in req.get("messages") or ():
        if isinstance(m, dict) and isinstance(m.get("content"), list):
            parts = [p for p in m["content"]
                     if not (isinstance(p, dict) and p.get("type") in _AUDIO_PARTS)]  # fmt: skip
            m = {**m, "content": parts}
        messages.append(m)
    return {**req, "messages": messages}
