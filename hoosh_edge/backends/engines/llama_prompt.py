"""A chat request made ready for llama.cpp: template-ready messages, the prompt, sampling.

Decisions, so the API layer can document them:

- ``max_tokens`` larger than what is left of the context is clamped to fit (``finish_reason``
  "length" when that is reached); ``max_tokens`` None means "up to the context". A prompt that
  alone fills the context raises ``ContextLengthExceeded`` (param "messages").
- ``tools`` are ignored when ``tool_choice`` is absent, "auto" or "none": the model answers in
  text, which is a valid "auto" outcome. ``tool_choice`` "required" or a named function, and image
  or audio content parts, raise ``InvalidRequest`` marked ``fallback_ok`` so the router may send
  the request to a target that can serve it.
- Text content parts are joined with newlines; a "developer" message is given to the template as
  "system". ``response_format`` json_object / json_schema constrain sampling with a grammar.
- Sampling knobs left unset use llama.cpp's defaults (temperature 0.8, top_p 0.95, top_k 40,
  min_p 0.05). No ``logit_bias``: llama-cpp-python's logit processors are ~10x slower.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from hoosh_edge.errors import ContextLengthExceeded, InvalidRequest

# Used when a GGUF carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05}


@dataclass
class LoadedLlama:
    """A loaded model with what every request needs beside it."""

    llm: Any  # llama_cpp.Llama
    formatter: Any  # llama_chat_format.Jinja2ChatFormatter
    n_ctx: int
    stop_ids: frozenset[int]
    states: Any = None  # prompt_cache.PromptStates when the engine keeps prompt states

    def close(self) -> None:
        self.llm.close()


@dataclass
class Prepared:
    """What one generation needs: prompt tokens, the token budget, stops and sampling."""

    prompt: list[int]
    max_tokens: int
    stops: list[str]
    sampling: dict[str, Any]
    seed: int
    client_stops: tuple[str, ...] = ()  # the request's own stop strings (not the model's marker)
    top_logprobs: int | None = None  # None: no logprobs; 0-20: that many alternatives a token


def loaded(llm: Any, n_ctx: int) -> LoadedLlama:
    """A loaded Llama with its own chat template (ChatML when it has none) and end tokens."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llm.token_eos(), llm.token_bos()

    def text(tok: int) -> str:
        return llm.detokenize([tok], special=True).decode("utf-8", "replace") if tok >= 0 else ""

    template = llm.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
    formatter = Jinja2ChatFormatter(template=template, eos_token=text(eos), bos_token=text(bos))
    return LoadedLlama(llm, formatter, n_ctx, frozenset({eos} if eos >= 0 else ()))


def prepare(m: LoadedLlama, messages: list[dict[str, Any]], req: dict[str, Any]) -> Prepared:
    """The prompt tokens, token budget, stop strings and sampling of one request."""
    prompt = prompt_tokens(m, messages)
    room = m.n_ctx - len(prompt)
    if room <= 0:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {m.n_ctx} tokens, but the messages "
            f"take {len(prompt)} tokens. Please shorten the messages.",
            param="messages",
        )
    max_tokens = req.get("max_completion_tokens")
    max_tokens = req.get("max_tokens") if max_tokens is None else max_tokens
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1.", param="max_tokens")
    stop = req.get("stop") or []
    stops = [stop] if isinstance(stop, str) else [s for s in stop if s]
    client_stops = tuple(stops)
    if m.formatter.eos_token:
        stops.append(m.formatter.eos_token)  # some models write their end marker as text
    sampling = {
        "temp": _num(req, "temperature"),
        "top_p": _num(req, "top_p"),
        "top_k": DEFAULTS["top_k"],
        "min_p": DEFAULTS["min_p"],
        "presence_penalty": float(req.get("presence_penalty") or 0.0),
        "frequency_penalty": float(req.get("frequency_penalty") or 0.0),
        "grammar": grammar(req.get("response_format")),
    }
    seed = req.get("seed")
    # Unseeded requests must differ from each other, so never reuse the model's last seed.
    seed = random.getrandbits(31) if seed is None else int(seed) & 0xFFFFFFFF
    top = int(req.get("top_logprobs") or 0) if req.get("logprobs") else None
    return Prepared(prompt, min(max_tokens or room, room), stops, sampling, seed,
                     client_stops, top)  # fmt: skip


def prompt_tokens(m: LoadedLlama, messages: list[dict[str, Any]]) -> list[int]:
    prompt = m.formatter(messages=messages).prompt
    # The template writes its own BOS where the model wants one.
    return m.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)


def _num(req: dict[str, Any], key: str) -> float:
    value = req.get(key)
    return float(DEFAULTS[key] if value is None else value)


def template_messages(req: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: string content, known roles."""
    out = []
    for i, msg in enumerate(req.get("messages") or []):
        content = msg.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    texts.append(str(part.get("text") or ""))
                else:
                    err = InvalidRequest(
                        f"messages[{i}]: content of type '{kind}' is not supported by this "
                        "on-device model; only text is.",
                        param="messages",
                    )
                    err.fallback_ok = True  # a cloud model may take images or audio
                    raise err
            content = "\n".join(texts)
        role = msg.get("role", "user")
        out.append({"role": "system" if role == "developer" else role, "content": content or ""})
    if not out:
        raise InvalidRequest("messages must not be empty.", param="messages")
    return out


def check_tools(req: dict[str, Any]) -> None:
    choice = req.get("tool_choice")
    if req.get("tools") and (choice == "required" or isinstance(choice, dict)):
        err = InvalidRequest(
            "This on-device model cannot call tools; tool_choice must be 'auto' or 'none'.",
            param="tool_choice",
        )
        err.fallback_ok = True
        raise err


def grammar(response_format: dict[str, Any] | None) -> Any:
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if kind == "json_object":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception as e:  # noqa: BLE001 - the converter raises plain errors
            raise InvalidRequest(f"Unsupported JSON schema: {e}", param="response_format") from e
    raise InvalidRequest(f"Unknown response_format type '{kind}'.", param="response_format")
