"""Anthropic content blocks <-> OpenAI message parts, one block kind at a time, both directions.

Text, image (base64 or URL), tool_use (an OpenAI tool call), tool_result (an OpenAI ``tool``
message). Thinking blocks have no OpenAI counterpart: an earlier turn's reasoning is dropped from a
request, and a streamed thinking block yields no chunk (see ``anthropic_stream``).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from hoosh_edge.errors import InvalidRequest, UpstreamError

# Every content block type of Anthropic's Messages API (ContentBlockParam); the ones a turn can
# carry here are translated, the rest are refused by name rather than dropped or forwarded.
BLOCK_TYPES = (
    "text", "image", "document", "search_result", "thinking", "redacted_thinking", "tool_use",
    "tool_result", "server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
    "code_execution_tool_result", "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result", "tool_search_tool_result", "container_upload",
    "mid_conv_system",
)  # fmt: skip
USER_BLOCKS = ("text", "image", "tool_result")
ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")
THINKING_BLOCKS = ("thinking", "redacted_thinking")

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_DATA_URL = re.compile(r"^data:([^;,]+)((?:;[^;,]*)*),(.*)$", re.DOTALL)


def bad(message: str, param: str | None = None) -> InvalidRequest:
    """A 400 for a request this format cannot carry."""
    return InvalidRequest(message, param=param)


def unsupported(kind: Any, at: str, allowed: tuple[str, ...]) -> InvalidRequest:
    """A block this turn cannot carry: an Anthropic type not translated here, or no type at all."""
    expected = ", ".join(f"'{t}'" for t in allowed)
    if isinstance(kind, str) and kind in BLOCK_TYPES:
        return bad(f"{at}.type: content block type '{kind}' is not supported here; this turn "
                   f"takes {expected}", f"{at}.type")  # fmt: skip
    return bad(f"{at}.type: Input tag {kind!r} found using 'type' does not match any of the "
               f"expected tags: {expected}", f"{at}.type")  # fmt: skip


def tool_id() -> str:
    """A fresh Anthropic-style tool_use id, for a backend that gave its tool call none."""
    return f"toolu_{uuid.uuid4().hex[:24]}"


# ---- Anthropic -> OpenAI ------------------------------------------------------------------------


def text_of(block: dict[str, Any], where: str) -> str:
    """The text of an Anthropic text block."""
    if not isinstance(block.get("text"), str):
        raise bad(f"{where}.text: Field required (a string)", where)
    return block["text"]


def image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block as an OpenAI image_url part (a data: URL for base64 data)."""
    src = block.get("source")
    kind = src.get("type") if isinstance(src, dict) else None
    if (
        kind == "base64"
        and isinstance(src.get("data"), str)
        and isinstance(src.get("media_type"), str)
    ):
        return {
            "type": "image_url",
            "image_url": {"url": f"data:{src['media_type']};base64,{src['data']}"},
        }
    if kind == "url" and isinstance(src.get("url"), str):
        return {"type": "image_url", "image_url": {"url": src["url"]}}
    raise bad(f"{where}.source: only base64 and url image sources are supported", where)


def tool_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A tool_result block as an OpenAI tool message."""
    if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
        raise bad(f"{where}.tool_use_id: Field required", where)
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad(
                    f"{where}.content.{j}: only text is supported inside a tool_result", where
                )
            texts.append(text_of(part, f"{where}.content.{j}"))
        text = "\n".join(texts)
    else:
        raise bad(f"{where}.content: must be a string or a list of text blocks", where)
    if block.get("is_error"):
        text = f"Error: {text}"  # OpenAI tool messages have no error flag; the model reads it
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def tool_call(block: dict[str, Any], at: str) -> dict[str, Any]:
    """A tool_use block (of a request or an answer) as an OpenAI tool call."""
    if not all(isinstance(block.get(k), str) and block[k] for k in ("id", "name")):
        raise bad(f"{at}: a tool_use block needs an id and a name (strings)", at)
    if not isinstance(block.get("input", {}), dict):
        raise bad(f"{at}.input: must be an object", f"{at}.input")
    return {
        "id": block["id"],
        "type": "function",
        "function": {
            "name": block["name"],
            "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
        },
    }


# ---- OpenAI -> Anthropic ------------------------------------------------------------------------


def text_parts(content: Any, where: str) -> list[str]:
    """The texts of a string or a list of text parts (system, tool and assistant content)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise bad(f"{where}: content must be a string or a list of parts", "messages")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise bad(
                f"{where}: only text content parts are allowed here, got {kind!r}", "messages"
            )
        texts.append(str(part.get(part["type"]) or ""))  # "text" or "refusal"
    return texts


def image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    """An OpenAI image_url part as an Anthropic image block (inline base64 or a URL source)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise bad(f"{where}: image_url part without a url", "messages")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    m = _DATA_URL.match(url)
    if not m:
        raise bad(f"{where}: image url must be http(s) or a data: URL", "messages")
    media_type, params, data = m.group(1).lower(), m.group(2).lower(), m.group(3)
    if ";base64" not in params:
        raise bad(f"{where}: data: URL images must be base64-encoded", "messages")
    if media_type not in IMAGE_TYPES:
        raise bad(f"{where}: image type {media_type!r} is not one of {', '.join(IMAGE_TYPES)}",
                  "messages")  # fmt: skip
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def tool_use_block(call: Any, where: str) -> dict[str, Any]:
    """An OpenAI tool call of a request's assistant turn as a tool_use block."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not fn.get("name") or not call.get("id"):
        raise bad(f"{where}: needs an id and function.name", "messages")
    args = fn.get("arguments") or "{}"
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        raise bad(f"{where}: function.arguments is not valid JSON", "messages") from None
    if not isinstance(parsed, dict):
        raise bad(f"{where}: function.arguments must be a JSON object", "messages")
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": parsed}


def tool_result_block(msg: dict[str, Any], where: str) -> dict[str, Any]:
    """An OpenAI tool message as a tool_result block (Anthropic carries it in the user's turn)."""
    if not msg.get("tool_call_id"):
        raise bad(f"{where}: a tool message needs tool_call_id", "messages")
    text = "".join(text_parts(msg.get("content"), where))
    return {"type": "tool_result", "tool_use_id": msg["tool_call_id"], "content": text}


def answer_tool_use(call: dict[str, Any]) -> dict[str, Any]:
    """A backend's tool call (in an answer) as a tool_use block; bad arguments are its fault."""
    fn = call.get("function") or {}
    args = fn.get("arguments") or "{}"
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamError(
            f"The model called {fn.get('name')!r} with arguments that are not "
            f"a JSON object: {str(args)[:200]!r}"
        )
    return {"type": "tool_use", "id": call.get("id") or tool_id(), "name": fn.get("name"),
            "input": parsed}  # fmt: skip
