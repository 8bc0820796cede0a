"""Raw-prompt generation for legacy completions: the prompt as it came, no chat template.

``prepare_raw`` builds the same ``Prepared`` as a chat turn (token budget, stops, sampling) from
the neutral request's ``legacy`` field: the prompt tokenized with the model's own BOS rule, or,
with a ``suffix``, the fill-in-the-middle prompt ``<PRE> prompt <SUF> suffix <MID>`` built from
the FIM tokens the GGUF names. A model without them refuses a suffix with a 400.
"""

from __future__ import annotations

from typing import Any

from hoosh_edge.backends.engines.llama_prompt import LoadedLlama, Prepared, Shaped, prepare
from hoosh_edge.errors import ContextLengthExceeded, InvalidRequest


def fim_tokens(llm: Any) -> tuple[int, int, int] | None:
    """The model's FIM prefix, suffix and middle tokens, or None when the GGUF has none."""
    import llama_cpp

    vocab = llm._model.vocab
    found = (llama_cpp.llama_vocab_fim_pre(vocab), llama_cpp.llama_vocab_fim_suf(vocab),
             llama_cpp.llama_vocab_fim_mid(vocab))  # fmt: skip
    return found if all(t >= 0 for t in found) else None


def raw_prompt(m: LoadedLlama, legacy: dict[str, Any]) -> list[int]:
    """The prompt tokens of a legacy request."""
    llm = m.llm
    prompt = legacy["prompt"].encode("utf-8")
    suffix = legacy.get("suffix")
    if suffix is None:
        # add_bos: llama.cpp adds the BOS only where the model's vocabulary asks for one.
        return llm.tokenize(prompt, add_bos=True, special=False)
    fim = fim_tokens(llm)
    if fim is None:
        raise InvalidRequest("'suffix' (fill in the middle) needs a model whose GGUF names FIM "
                             "tokens; this model has none.", param="suffix")  # fmt: skip
    pre, suf, mid = fim
    body = llm.tokenize(prompt, add_bos=False, special=False)
    tail = llm.tokenize(suffix.encode("utf-8"), add_bos=False, special=False)
    return [pre, *body, suf, *tail, mid]


def prepare_raw(m: LoadedLlama, legacy: dict[str, Any], req: dict[str, Any],
                shaped: Shaped | None = None) -> Prepared:  # fmt: skip
    """``Prepared`` for a raw prompt: the chat preparation's limits and sampling, its tokens."""
    prompt = raw_prompt(m, legacy)
    if not prompt:
        raise InvalidRequest("'prompt' must not be empty.", param="prompt")
    if len(prompt) >= m.n_ctx:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {m.n_ctx} tokens, but the prompt takes "
            f"{len(prompt)} tokens. Please shorten the prompt.",
            param="prompt",
        )
    # The chat preparation of an empty turn gives the stops, sampling and seed of the request;
    # the token budget is then cut to the room the real prompt leaves.
    prep = prepare(m, [{"role": "user", "content": ""}], req, shaped)
    room = m.n_ctx - len(prompt)
    prep.prompt = prompt
    asked = req.get("max_tokens", req.get("max_completion_tokens"))
    prep.max_tokens = min(asked or room, room)
    return prep
