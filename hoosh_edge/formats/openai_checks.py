"""Is an upstream's chat answer in the shape OpenAI's API documents? (Before anything reads it.)

An OpenAI-compatible server may be anything on the LAN. A chunk or completion in a shape the API
never sends is named here, so the provider can skip the chunk or refuse the answer as an upstream
error, instead of the pipeline failing on it later.
"""

from __future__ import annotations

from typing import Any


def _delta_problem(delta: Any, where: str) -> str | None:
    if not isinstance(delta, dict):
        return f"{where} is not an object"
    content = delta.get("content")
    if content is not None and not isinstance(content, str):
        return f"{where}.content is not a string"
    calls = delta.get("tool_calls")
    if calls is None:
        return None
    if not isinstance(calls, list):
        return f"{where}.tool_calls is not a list"
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            return f"{where}.tool_calls[{i}] is not an object"
        fn = call.get("function")
        if fn is not None and not isinstance(fn, dict):
            return f"{where}.tool_calls[{i}].function is not an object"
        if (
            fn is not None
            and fn.get("arguments") is not None
            and not isinstance(fn["arguments"], str)
        ):
            return f"{where}.tool_calls[{i}].function.arguments is not a string"
    return None


def _choices_problem(doc: dict[str, Any], field: str) -> str | None:
    choices = doc.get("choices")
    if choices is None:
        return None
    if not isinstance(choices, list):
        return "'choices' is not a list"
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            return f"choices[{i}] is not an object"
        finish = choice.get("finish_reason")
        if finish is not None and not isinstance(finish, str):
            return f"choices[{i}].finish_reason is not a string"
        if field in choice or field == "message":
            problem = _delta_problem(choice.get(field), f"choices[{i}].{field}")
            if problem:
                return problem
    return None


def _usage_problem(doc: dict[str, Any]) -> str | None:
    usage = doc.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return "'usage' is not an object"
    return None


def chunk_problem(chunk: dict[str, Any]) -> str | None:
    """What is wrong with a ``chat.completion.chunk``, or None."""
    return _choices_problem(chunk, "delta") or _usage_problem(chunk)


def completion_problem(doc: dict[str, Any]) -> str | None:
    """What is wrong with a ``chat.completion``, or None."""
    if not isinstance(doc.get("choices"), list) or not doc["choices"]:
        return "no 'choices'"
    return _choices_problem(doc, "message") or _usage_problem(doc)
