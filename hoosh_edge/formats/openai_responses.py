"""OpenAI's Responses API request -> the gateway's neutral chat request, and what is refused.

``to_chat(body, history)`` checks a ``POST /v1/responses`` body and returns a ``Translated``: the
chat request the pipeline serves (``instructions`` as the system message, ``history`` from
``previous_response_id`` before this request's own ``input``), the chat messages of the input
alone (kept with a stored response) and the input items with ids (for ``input_items``). What the
gateway does not serve is a 400 naming the parameter: built-in tools, background mode,
reasoning items, conversations, prompt templates, ``include``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from hoosh_edge.errors import InvalidRequest

# What a request may carry; anything else is refused as OpenAI refuses unknown parameters.
_SERVED = {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools",
           "tool_choice", "text", "metadata", "user", "store", "stream", "stream_options",
           "previous_response_id", "parallel_tool_calls", "truncation", "service_tier",
           "prompt_cache_key", "safety_identifier", "background", "include", "reasoning",
           "max_tool_calls", "top_logprobs", "seed"}  # fmt: skip
# Served by OpenAI, refused here with the reason (the closing note lists them too).
_REFUSED = {
    "conversation": "conversations are not served; continue with previous_response_id",
    "prompt": "stored prompt templates are not served",
    "context_management": "context management is not served",
    "prompt_cache_retention": "prompt cache retention is not served",
}
_BUILT_IN = ("web_search", "web_search_preview", "file_search", "computer_use_preview",
             "computer", "code_interpreter", "image_generation", "mcp", "local_shell", "shell",
             "apply_patch", "custom")  # fmt: skip
_CHOICES = ("none", "auto", "required")


@dataclass
class Translated:
    """A Responses request as the pipeline serves it, and what a stored response keeps of it."""

    chat: dict[str, Any]
    messages: list[dict[str, Any]]  # this request's input as chat messages (no instructions)
    items: list[dict[str, Any]]  # this request's input items, each with an id
    store: bool


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: ``resp_…``, ``msg_…``, ``fc_…``."""
    return f"{prefix}_{uuid.uuid4().hex}"


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}': {message}", param=param)


def _obj(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(param, "must be an object.")
    return value


def _str(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise _bad(f"{where}.{key}", "must be a non-empty string.")
    return value


def _refusals(body: dict[str, Any]) -> None:
    for key in body:
        if key in _REFUSED and body[key] is not None:
            raise _bad(key, _REFUSED[key] + ".")
        if key not in _SERVED and key not in _REFUSED:
            raise InvalidRequest(f"Unknown parameter: '{key}'.", param=key)
    if body.get("background"):
        raise _bad("background", "background mode is not served; ask without it.")
    if body.get("include"):
        raise _bad("include", "no extra output data is served (include must be empty).")
    reasoning = body.get("reasoning")
    if reasoning is not None and any(v is not None for v in _obj(reasoning, "reasoning").values()):
        raise _bad("reasoning", "reasoning settings are not served.")
    if body.get("truncation") not in (None, "disabled"):
        raise _bad("truncation", "only 'disabled' is served.")
    if body.get("max_tool_calls") is not None:
        raise _bad("max_tool_calls", "a cap on built-in tool calls is not served.")
    if body.get("top_logprobs") is not None:
        raise _bad("top_logprobs", "log probabilities are not served on /v1/responses.")


def _part(part: Any, role: str, where: str) -> dict[str, Any]:
    """One content part as a chat content part."""
    part = _obj(part, where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text", "must be a string.")
        return {"type": "text", "text": text}
    if kind == "refusal" and role == "assistant":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind == "input_image" and role != "assistant":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _bad(
                f"{where}.image_url", "an image by URL or data URL is served; file_id is not."
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise _bad(f"{where}.type", f"content of type {kind!r} is not served.")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise _bad(f"{where}.role", "must be user, assistant, system or developer.")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise _bad(f"{where}.content", "must be a string or an array of content parts.")
    parts = [_part(p, role, f"{where}.content[{j}]") for j, p in enumerate(content)]
    if role != "user" and any(p["type"] != "text" for p in parts):
        raise _bad(f"{where}.content", f"a {role} message holds text only.")
    if all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def _output_text(value: Any, where: str) -> str:
    """A function_call_output's output: a string, or text parts joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_part(p, "tool", f"{where}[{j}]")["text"] for j, p in enumerate(value)
                       if isinstance(p, dict) and p.get("type") in ("input_text", "output_text"))  # fmt: skip
    raise _bad(where, "must be a string or an array of input_text parts.")


def input_messages(value: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``input`` as chat messages, and as input items with ids."""
    if isinstance(value, str):
        item = {"id": new_id("msg"), "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": value}]}  # fmt: skip
        return [{"role": "user", "content": value}], [item]
    if not isinstance(value, list) or not value:
        raise _bad("input", "must be a string or a non-empty array of input items.")
    messages: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for i, raw in enumerate(value):
        where = f"input[{i}]"
        item = _obj(raw, where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
            content = item["content"]
            if isinstance(content, str):
                content = [{"type": "output_text" if item["role"] == "assistant"
                            else "input_text", "text": content}]  # fmt: skip
            items.append({"id": item.get("id") or new_id("msg"), "type": "message",
                          "role": item["role"], "status": "completed", "content": content})  # fmt: skip
        elif kind == "function_call":
            call_id, name = _str(item, "call_id", where), _str(item, "name", where)
            args = item.get("arguments", "")
            if not isinstance(args, str):
                raise _bad(f"{where}.arguments", "must be a string of JSON.")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
            last = messages[-1] if messages else None
            if (
                last is not None
                and last["role"] == "assistant"
                and not isinstance(last["content"], list)
            ):
                last.setdefault("tool_calls", []).append(call)  # one turn: its text and calls
                last["content"] = last["content"] or None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            items.append({"id": item.get("id") or new_id("fc"), "type": "function_call",
                          "call_id": call_id, "name": name, "arguments": args,
                          "status": "completed"})  # fmt: skip
        elif kind == "function_call_output":
            call_id = _str(item, "call_id", where)
            output = _output_text(item.get("output"), f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
            items.append({"id": item.get("id") or new_id("fco"), "type": "function_call_output",
                          "call_id": call_id, "output": output, "status": "completed"})  # fmt: skip
        elif kind == "reasoning":
            raise _bad(f"{where}.type", "reasoning items are not served.")
        elif kind == "item_reference":
            raise _bad(f"{where}.type", "item references are not served; send the item itself "
                       "or continue with previous_response_id.")  # fmt: skip
        else:
            raise _bad(f"{where}.type", f"input items of type {kind!r} are not served.")
    return messages, items


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "must be an array.")
        out = []
        for i, tool in enumerate(tools):
            tool = _obj(tool, f"tools[{i}]")
            kind = tool.get("type")
            if kind != "function":
                why = "built-in tools are not served" if kind in _BUILT_IN else "unknown tool type"
                raise _bad(f"tools[{i}].type", f"{why} ({kind!r}); only type 'function' is.")
            fn: dict[str, Any] = {"name": _str(tool, "name", f"tools[{i}]")}
            if _str(tool, "description", f"tools[{i}]", required=False) is not None:
                fn["description"] = tool["description"]
            if tool.get("parameters") is not None:
                fn["parameters"] = _obj(tool["parameters"], f"tools[{i}].parameters")
            if tool.get("strict") is not None:
                fn["strict"] = bool(tool["strict"])
            out.append({"type": "function", "function": fn})
        if out:
            chat["tools"] = out
    choice = body.get("tool_choice")
    if choice is None:
        return
    if choice in _CHOICES:
        chat["tool_choice"] = choice
        return
    choice = _obj(choice, "tool_choice")
    if choice.get("type") != "function":
        raise _bad("tool_choice", "only none, auto, required or a function by name is served.")
    chat["tool_choice"] = {"type": "function",
                           "function": {"name": _str(choice, "name", "tool_choice")}}  # fmt: skip


def _text_format(body: dict[str, Any], chat: dict[str, Any]) -> None:
    text = body.get("text")
    if text is None:
        return
    fmt = _obj(text, "text").get("format")
    if fmt is None:
        return
    fmt = _obj(fmt, "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        spec: dict[str, Any] = {"name": _str(fmt, "name", "text.format")}
        spec["schema"] = _obj(fmt.get("schema"), "text.format.schema")
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        chat["response_format"] = {"type": "json_schema", "json_schema": spec}
    else:
        raise _bad("text.format.type", "must be text, json_object or json_schema.")


def check_metadata(value: Any) -> None:
    """OpenAI's bounds: up to 16 string pairs, keys up to 64 and values up to 512 characters."""
    if value is None:
        return
    meta = _obj(value, "metadata")
    if len(meta) > 16:
        raise _bad("metadata", "holds at most 16 pairs.")
    for k, v in meta.items():
        if len(k) > 64 or not isinstance(v, str) or len(v) > 512:
            raise _bad("metadata", "keys are strings up to 64 characters, values up to 512.")


def to_chat(body: Any, history: list[dict[str, Any]] | None = None) -> Translated:
    """Check a Responses request and translate it (raises InvalidRequest naming the param)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    _refusals(body)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model", "is required and must be a non-empty string.")
    if "input" not in body:
        raise _bad("input", "is required.")
    messages, items = input_messages(body["input"])
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad("instructions", "must be a string.")
    check_metadata(body.get("metadata"))
    for key in ("store", "stream", "parallel_tool_calls"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise _bad(key, "must be a boolean.")
    head = [{"role": "system", "content": instructions}] if instructions else []
    chat: dict[str, Any] = {"model": model, "messages": head + list(history or ()) + messages}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]  # checked by the chat validation
    for key in ("temperature", "top_p", "user", "seed", "parallel_tool_calls"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("stream"):
        chat["stream"] = True
    _tools(body, chat)
    _text_format(body, chat)
    return Translated(chat, messages, items, body.get("store") is not False)
