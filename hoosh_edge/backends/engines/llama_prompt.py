"""A chat request made ready for llama.cpp: template-ready messages, the prompt, sampling.

Decisions, so the API layer can document them:

- ``max_tokens`` larger than what is left of the context is clamped to fit (``finish_reason``
  "length" when that is reached); ``max_tokens`` None means "up to the context". A prompt that
  alone fills the context raises ``ContextLengthExceeded`` (param "messages").
- ``tools``, ``tool_choice`` and ``parallel_tool_calls``: ``llama_tools`` (how tools are shown,
  the grammar of a call). Image or audio content parts and custom tools raise ``InvalidRequest``
  marked ``fallback_ok`` so the router may send the request to a target that can serve it.
- Text content parts are joined with newlines; a "developer" message is given to the template as
  "system". ``response_format`` json_object / json_schema constrain sampling with a grammar
  (``llama_schema`` lists the JSON-schema keywords it enforces; any other is a 400).
- A chat template that refuses the messages (``raise_exception``) is a 400 (param "messages").
- Sampling knobs left unset use llama.cpp's defaults (temperature 0.8, top_p 0.95, top_k 40,
  min_p 0.05). No ``logit_bias``: llama-cpp-python's logit processors are ~10x slower.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from hoosh_edge.backends.engines import llama_tools
from hoosh_edge.backends.engines.llama_tools import ToolPlan
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
    knows_tools: bool = False  # the chat template reads ``tools``
    writes_calls: bool = False  # ... and itself asks for <tool_call> blocks

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
    tools: ToolPlan | None = None  # the calls the answer may hold
    free_text: bool = False  # "auto" without response_format: a text answer needs no grammar


@dataclass
class Shaped:
    """What a request asks of the answer, checked before the model is waited for."""

    tools: ToolPlan | None
    grammar: str | None  # GBNF text


def shape(req: dict[str, Any]) -> Shaped:
    """The request's tool plan and answer grammar (raises InvalidRequest)."""
    p = llama_tools.plan(req)
    return Shaped(p, llama_tools.grammar_text(p, req.get("response_format")))


def loaded(llm: Any, n_ctx: int) -> LoadedLlama:
    """A loaded Llama with its own chat template (ChatML when it has none) and end tokens."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llm.token_eos(), llm.token_bos()

    def text(tok: int) -> str:
        return llm.detokenize([tok], special=True).decode("utf-8", "replace") if tok >= 0 else ""

    template = llm.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
    formatter = Jinja2ChatFormatter(template=template, eos_token=text(eos), bos_token=text(bos))
    knows = re.search(r"\btools\b", template) is not None
    return LoadedLlama(llm, formatter, n_ctx, frozenset({eos} if eos >= 0 else ()),
                       knows_tools=knows, writes_calls=knows and "<tool_call>" in template)  # fmt: skip


def prepare(m: LoadedLlama, messages: list[dict[str, Any]], req: dict[str, Any],
            shaped: Shaped | None = None) -> Prepared:  # fmt: skip
    """The prompt tokens, token budget, stop strings and sampling of one request."""
    shaped = shaped or shape(req)
    prompt = prompt_tokens(m, messages, shaped.tools)
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
        "grammar": compiled(m, shaped.grammar, "tools" if shaped.tools else "response_format"),
    }
    seed = req.get("seed")
    # Unseeded requests must differ from each other, so never reuse the model's last seed.
    seed = random.getrandbits(31) if seed is None else int(seed) & 0xFFFFFFFF
    top = int(req.get("top_logprobs") or 0) if req.get("logprobs") else None
    plain = (req.get("response_format") or {}).get("type", "text") == "text"
    free = shaped.tools is not None and shaped.tools.mode == "auto" and plain
    return Prepared(prompt, min(max_tokens or room, room), stops, sampling, seed,
                     client_stops, top, shaped.tools, free)  # fmt: skip


def prompt_tokens(m: LoadedLlama, messages: list[dict[str, Any]],
                  tools: ToolPlan | None = None) -> list[int]:  # fmt: skip
    """Tokens of the prompt the chat template makes of ``messages`` (and the tools shown)."""
    shown, specs = llama_tools.for_template(messages, tools, m.knows_tools, m.writes_calls)
    try:
        prompt = m.formatter(messages=shown, tools=specs).prompt
    except Exception as e:  # noqa: BLE001 - templates raise what they like (raise_exception)
        raise InvalidRequest(f"The model's chat template refused the messages: {e}",
                             param="messages") from e  # fmt: skip
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
        item = {"role": "system" if role == "developer" else role, "content": content or ""}
        for key in ("tool_calls", "tool_call_id", "name"):
            if msg.get(key) is not None:
                item[key] = msg[key]
        out.append(item)
    if not out:
        raise InvalidRequest("messages must not be empty.", param="messages")
    return out


def compiled(m: LoadedLlama, text: str | None, param: str = "response_format") -> Any:
    """A LlamaGrammar for ``text``, parsed once here so a bad one is a 400, not a crash."""
    if text is None:
        return None
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar

    probe = llama_cpp.llama_sampler_init_grammar(m.llm._model.vocab, text.encode(), b"root")
    if not probe:  # llama.cpp gives NULL for a grammar it cannot parse; adding it would crash
        raise InvalidRequest("The schema made a grammar llama.cpp cannot parse.", param=param)
    llama_cpp.llama_sampler_free(probe)
    return LlamaGrammar.from_string(text, verbose=False)
