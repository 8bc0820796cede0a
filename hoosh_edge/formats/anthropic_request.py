"""Anthropic Messages requests <-> OpenAI chat requests.

``to_chat_request`` (for the /v1/messages door) validates an Anthropic request and gives the OpenAI
chat request the pipeline serves. ``to_messages_request`` (for the Anthropic provider) gives the
Anthropic body for an OpenAI chat request: system messages become the top-level ``system``,
``tool`` messages become user ``tool_result`` blocks, consecutive same-role turns are merged.
"""

from __future__ import annotations

from typing import Any

from hoosh_edge.errors import InvalidRequest
from hoosh_edge.formats import anthropic_blocks as blocks
from hoosh_edge.formats import openai as chatfmt
from hoosh_edge.formats.anthropic_blocks import bad

# Anthropic requires max_tokens; OpenAI clients usually leave it out.
DEFAULT_MAX_TOKENS = 4096

# Anthropic tool_choice type <-> OpenAI tool_choice string; one table, read both ways.
TOOL_CHOICES = (("auto", "auto"), ("none", "none"), ("any", "required"))


# ---- Anthropic -> OpenAI (the door) -------------------------------------------------------------


def _user_messages(content: list[Any], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as tool messages first, then one user message."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": blocks.text_of(block, at)})
        elif kind == "image":
            parts.append(blocks.image_part(block, at))
        elif kind == "tool_result":
            tools.append(blocks.tool_message(block, at))
        else:
            raise blocks.unsupported(kind, at, blocks.USER_BLOCKS)
    if not parts:
        return tools
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tools, {"role": "user", "content": parts[0]["text"]}]
    return [*tools, {"role": "user", "content": parts}]


def _assistant_message(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(blocks.text_of(block, at))
        elif kind == "tool_use":
            calls.append(blocks.tool_call(block, at))
        elif kind in blocks.THINKING_BLOCKS:
            continue  # reasoning of an earlier turn: no OpenAI counterpart, and not needed
        else:
            raise blocks.unsupported(kind, at, blocks.ASSISTANT_BLOCKS)
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        msg["tool_calls"] = calls
        msg["content"] = msg["content"] or None
    return msg


def _system_text(system: Any) -> str | None:
    if isinstance(system, list):
        texts = []
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise bad(f"system.{i}: only text blocks are allowed in system", "system")
            texts.append(blocks.text_of(block, f"system.{i}"))
        system = "\n".join(texts)
    if system is not None and not isinstance(system, str):
        raise bad("system: must be a string or a list of text blocks", "system")
    return system


def _chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system := _system_text(body.get("system")):
        out.append({"role": "system", "content": system})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages: Field required (a non-empty list)", "messages")
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            raise bad(f"{where}.role: must be 'user' or 'assistant', got {role!r}", where)
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            if role == "user":
                out.extend(_user_messages(content, where))
            else:
                out.append(_assistant_message(content, where))
        else:
            raise bad(f"{where}.content: must be a string or a list of content blocks", where)
    return out


def _chat_tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if not tools:
        return
    if not isinstance(tools, list):
        raise bad("tools: must be a list", "tools")
    converted = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            kind = tool.get("type") if isinstance(tool, dict) else tool
            raise bad(
                f"tools.{i}: tool type {kind!r} is not supported (only custom tools)", "tools"
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise bad(f"tools.{i}.name: Field required", "tools")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise bad(f"tools.{i}.input_schema: Field required (a JSON schema object)", "tools")
        fn: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if tool.get("description") is not None and not isinstance(tool["description"], str):
            raise bad(f"tools.{i}.description: must be a string", "tools")
        if tool.get("description"):
            fn["description"] = tool["description"]
        converted.append({"type": "function", "function": fn})
    out["tools"] = converted
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if isinstance(kind, str) and (mapped := dict(TOOL_CHOICES).get(kind)) is not None:
        out["tool_choice"] = mapped
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise bad("tool_choice: type must be auto, any, tool (with a name) or none", "tool_choice")
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out["parallel_tool_calls"] = False


def _max_tokens(body: dict[str, Any]) -> int:
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise bad("max_tokens: Field required", "max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad(f"max_tokens: must be an integer of at least 1, got {max_tokens!r}", "max_tokens")
    return max_tokens


def to_chat_request(body: Any) -> dict[str, Any]:
    """An Anthropic Messages request as a validated OpenAI chat request."""
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad("model: Field required", "model")
    max_tokens = _max_tokens(body)
    out: dict[str, Any] = {
        "model": model,
        "messages": _chat_messages(body),
        "max_tokens": max_tokens,
    }
    temperature = body.get("temperature")
    if temperature is not None:
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not (0 <= temperature <= 1)
        ):
            raise bad(f"temperature: must be a number from 0 to 1, got {temperature!r}",
                      "temperature")  # fmt: skip
        out["temperature"] = temperature
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    # top_k is dropped: OpenAI's chat API has no such field and OpenAI itself rejects unknown ones.
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad("stop_sequences: must be a list of strings", "stop_sequences")
        if len(stops) > 4:
            raise bad("stop_sequences: at most 4 are supported here (what every backend accepts)",
                      "stop_sequences")  # fmt: skip
        if stops:
            out["stop"] = stops
    _chat_tools(body, out)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream: must be a boolean", "stream")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # the final usage feeds message_delta
    # Not carried over: thinking (no backend-neutral form), service_tier, container, mcp_servers
    # and cache_control hints: they mean nothing to the other backends.
    return chatfmt.validate_chat_request(out)


# ---- OpenAI -> Anthropic (the provider) ---------------------------------------------------------


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad(f"{where}: content must be a string or a list of parts", "messages")
    out = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                out.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url":
            out.append(blocks.image_block(part, where))
        else:
            raise bad(f"{where}: content part type {kind!r} is not supported for Anthropic",
                      "messages")  # fmt: skip
    return out


def _assistant_blocks(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"type": "text", "text": t} for t in blocks.text_parts(msg.get("content"), where) if t
    ]
    for j, call in enumerate(msg.get("tool_calls") or []):
        out.append(blocks.tool_use_block(call, f"{where}.tool_calls[{j}]"))
    return out


def _messages(messages: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """OpenAI messages -> (system texts, Anthropic messages with same-role turns merged)."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad(f"{where} must be an object", "messages")
        role = msg.get("role")
        if role in ("system", "developer"):
            # Anthropic has one system prompt, outside the turns: hoist them all, in order.
            system.extend(t for t in blocks.text_parts(msg.get("content"), where) if t)
            continue
        if role == "user":
            turn = _user_blocks(msg.get("content"), where)
        elif role == "assistant":
            turn = _assistant_blocks(msg, where)
        elif role == "tool":
            role, turn = "user", [blocks.tool_result_block(msg, where)]
        else:
            raise bad(f"{where}: role {role!r} is not supported for Anthropic", "messages")
        if not turn:
            continue  # Anthropic refuses empty text blocks; an empty turn says nothing anyway
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(turn)
        else:
            out.append({"role": role, "content": turn})
    if not out:
        raise bad("messages hold no user or assistant content", "messages")
    for m in out:
        if len(m["content"]) == 1 and m["content"][0]["type"] == "text":
            m["content"] = m["content"][0]["text"]
    return system, out


def _tool_choice(req: dict[str, Any]) -> dict[str, Any] | None:
    choice = req.get("tool_choice")
    mapped: dict[str, Any] | None = None
    if isinstance(choice, str) and choice in (names := {oa: an for an, oa in TOOL_CHOICES}):
        mapped = {"type": names[choice]}
    elif isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not name:
            raise InvalidRequest("tool_choice must name a function", param="tool_choice")
        mapped = {"type": "tool", "name": name}
    elif choice is not None:
        raise InvalidRequest(f"tool_choice {choice!r} is not supported", param="tool_choice")
    if req.get("parallel_tool_calls") is False and (mapped or {}).get("type") != "none":
        mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
    return mapped


def _tools(req: dict[str, Any]) -> dict[str, Any]:
    tools = req.get("tools")
    if not tools:
        return {}
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise InvalidRequest(f"tools[{i}]: only function tools are supported", param="tools")
        if not fn.get("name"):
            raise InvalidRequest(f"tools[{i}]: function.name is required", param="tools")
        item = {
            "name": fn["name"],
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            item["description"] = fn["description"]
        out.append(item)
    body: dict[str, Any] = {"tools": out}
    if (choice := _tool_choice(req)) is not None:
        body["tool_choice"] = choice
    return body


def to_messages_request(
    model: str, req: dict[str, Any], *, max_tokens_limit: int | None = None
) -> dict[str, Any]:
    """An OpenAI chat request as an Anthropic Messages request body (without ``stream``)."""
    system, messages = _messages(req.get("messages"))
    body: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        body["system"] = system[0] if len(system) == 1 else [
            {"type": "text", "text": t} for t in system
        ]  # fmt: skip
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or DEFAULT_MAX_TOKENS
    if max_tokens_limit:
        max_tokens = min(max_tokens, max_tokens_limit)
    body["max_tokens"] = int(max_tokens)
    if req.get("temperature") is not None:
        # OpenAI's scale is 0-2, Anthropic's 0-1: values above 1 are the most random Anthropic
        # offers, so they are clamped rather than rescaled (0.7 keeps meaning 0.7).
        body["temperature"] = min(float(req["temperature"]), 1.0)
    if req.get("top_p") is not None:
        body["top_p"] = req["top_p"]
    stop = req.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]
        if stops := [s for s in stops if s]:
            body["stop_sequences"] = stops
    if req.get("user"):
        body["metadata"] = {"user_id": str(req["user"])}
    body.update(_tools(req))
    # Left out on purpose, since the Messages API has no equivalent: seed (no deterministic
    # sampling), n (one answer per call), frequency/presence penalties, logit_bias and logprobs.
    # response_format (json_object / json_schema) is dropped too: Anthropic has no JSON mode
    # here, and failing the request would be worse than an answer the prompt already steers.
    return body
