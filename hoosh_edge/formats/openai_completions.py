"""OpenAI's legacy completions (``/v1/completions``) <-> the gateway's neutral chat form.

A legacy request becomes a chat request whose one user message is the prompt (so estimates,
budgets and the cache see its text) and whose ``legacy`` field says what a backend must do
instead of a chat turn: the raw prompt, the FIM ``suffix``, ``echo`` and ``logprobs``. On-device
models read ``legacy`` and skip the chat template; OpenAI-compatible providers forward it to
their own ``/completions``; a backend without a raw prompt refuses it. Answers and chunks come
back in chat form and are turned into ``text_completion`` objects here.
"""

from __future__ import annotations

from typing import Any

from hoosh_edge.errors import InvalidRequest

LEGACY = "legacy"  # the neutral request's field a raw-prompt backend reads
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_SERVED = {"model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "n", "stream",
           "stream_options", "logprobs", "echo", "stop", "presence_penalty", "frequency_penalty",
           "best_of", "logit_bias", "user", "seed"}  # fmt: skip
_PASSED = ("temperature", "top_p", "stop", "presence_penalty", "frequency_penalty", "user", "seed",
           "stream", "stream_options")  # fmt: skip


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' {message}", param=param)


def prompts_of(body: dict[str, Any]) -> list[str]:
    """The prompt(s): a string or an array of strings (token arrays are refused)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        raise _bad("prompt", "as token ids is not served; send the text.")
    raise _bad("prompt", "must be a string or a non-empty array of strings.")


def check(body: Any) -> list[str]:
    """Check a legacy request (the chat validation checks the shared fields); its prompts."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    for key in body:
        if key not in _SERVED:
            raise InvalidRequest(f"Unknown parameter: '{key}'.", param=key)
    prompts = prompts_of(body)
    for key in ("n", "best_of"):
        if body.get(key) not in (None, 1):
            raise _bad(key, "other than 1 is not served.")
    if body.get("logit_bias"):
        raise _bad("logit_bias", "is not served.")
    if body.get("suffix") is not None and not isinstance(body["suffix"], str):
        raise _bad("suffix", "must be a string.")
    if body.get("echo") is not None and not isinstance(body["echo"], bool):
        raise _bad("echo", "must be a boolean.")
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= 5):  # fmt: skip
        raise _bad("logprobs", "must be an integer from 0 to 5.")
    if logprobs is not None and body.get("echo"):
        raise _bad("echo", "with logprobs (the prompt's own log probabilities) is not served.")
    if len(prompts) > 1 and body.get("stream"):
        raise _bad("prompt", "may hold one prompt when streaming.")
    return prompts


def to_chat(body: dict[str, Any], prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chat request for one prompt of a checked legacy request, and its ``legacy`` field
    (added once the chat validation has passed: chat clients may not send one)."""
    chat: dict[str, Any] = {
        "model": body.get("model"),
        "messages": [{"role": "user", "content": prompt}],
    }
    for key in _PASSED:
        if body.get(key) is not None:
            chat[key] = body[key]
    max_tokens = body.get("max_tokens")
    chat["max_tokens"] = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    legacy: dict[str, Any] = {"prompt": prompt, "echo": bool(body.get("echo"))}
    if body.get("suffix") is not None:
        legacy["suffix"] = body["suffix"]
    if body.get("logprobs") is not None:
        legacy["logprobs"] = body["logprobs"]
        chat["logprobs"] = True
        chat["top_logprobs"] = body["logprobs"]
    return chat, legacy


def legacy_logprobs(value: Any, offset: int) -> dict[str, Any] | None:
    """Chat logprobs (``{"content": [entries]}``) in the legacy shape; legacy ones as they are."""
    if not isinstance(value, dict):
        return None
    if "tokens" in value:
        return value  # an upstream's own legacy logprobs
    tokens, logps, tops, offsets = [], [], [], []
    for entry in value.get("content") or ():
        tokens.append(entry["token"])
        logps.append(entry["logprob"])
        tops.append({t["token"]: t["logprob"] for t in entry.get("top_logprobs") or ()})
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": tokens, "token_logprobs": logps, "top_logprobs": tops,
            "text_offset": offsets}  # fmt: skip


def choice_of(doc: dict[str, Any], index: int, echo: str) -> dict[str, Any]:
    """Choice 0 of a chat completion as a legacy choice (``echo``: the prompt, or "")."""
    choice = (doc.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    return {"text": echo + text, "index": index,
            "logprobs": legacy_logprobs(choice.get("logprobs"), len(echo)),
            "finish_reason": choice.get("finish_reason") or "stop"}  # fmt: skip


class ChunkText:
    """Chat chunks -> legacy stream chunks' choices, keeping the text offset for logprobs."""

    def __init__(self, echo: str) -> None:
        self.echo = echo
        self.offset = 0

    def choices(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content") or ""
            if self.echo:
                text, self.echo = self.echo + text, ""
            if not text and not choice.get("finish_reason"):
                continue
            logprobs = legacy_logprobs(choice.get("logprobs"), self.offset)
            self.offset += len(text)
            out.append({"text": text, "index": 0, "logprobs": logprobs,
                        "finish_reason": choice.get("finish_reason")})  # fmt: skip
        return out


# ---- the cloud side: a legacy upstream's answers in chat form ---------------------------------


def upstream_body(model: str, req: dict[str, Any]) -> dict[str, Any]:
    """The ``/completions`` body for an OpenAI-compatible upstream, from the neutral request."""
    legacy = req[LEGACY]
    body: dict[str, Any] = {"model": model, "prompt": legacy["prompt"]}
    for key in ("temperature", "top_p", "stop", "presence_penalty", "frequency_penalty", "user",
                "seed"):  # fmt: skip
        if req.get(key) is not None:
            body[key] = req[key]
    limit = req.get("max_tokens", req.get("max_completion_tokens"))
    if limit is not None:
        body["max_tokens"] = limit
    for key in ("suffix", "logprobs"):
        if key in legacy:
            body[key] = legacy[key]
    return body


def chat_from_legacy(doc: Any, *, chunk: bool) -> dict[str, Any] | None:
    """An upstream text_completion (or one of its chunks) as a chat completion (or chunk);
    None for a shape the API never sends."""
    if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list):
        return None
    choices = []
    for c in doc["choices"]:
        if not isinstance(c, dict) or not isinstance(c.get("text") or "", str):
            return None
        text = c.get("text") or ""
        body = {"delta": {"content": text}} if chunk else {
            "message": {"role": "assistant", "content": text}}  # fmt: skip
        choices.append({"index": c.get("index", 0), **body, "logprobs": c.get("logprobs"),
                        "finish_reason": c.get("finish_reason")})  # fmt: skip
    out = {k: v for k, v in doc.items() if k in ("id", "model", "created", "usage")}
    out["choices"] = choices
    return out
