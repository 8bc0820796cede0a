"""Grammar-constrained sampling that checks one token, not the whole vocabulary.

llama-cpp-python puts the grammar first in its sampler chain, so every token of a constrained
answer checks the whole vocabulary (49k tokens for SmolLM2) against the grammar: more time than
the model itself takes. llama.cpp's own tools (``common_sampler``) sample without the grammar
first and check only the token drawn; only a token the grammar refuses makes them resample with
the grammar over the whole vocabulary. ``GrammarChecked`` does the same, as the sampler that
``Llama.generate`` calls (``sampled_with``); the answers are those the grammar allows, as before.

Greedy sampling (temperature 0, no penalties) is an argmax over the logits (``Greedy``).
llama.cpp's greedy sampler first copies the whole vocabulary into a candidate array: 100-200 us a
token for SmolLM2's 49k, against about 10 us for numpy's argmax, on a path where a token takes
12-15 ms. Both pick the first of equal maxima, so the tokens are the same (tested).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from typing import Any

import numpy as np


def is_greedy(sampling: dict[str, Any]) -> bool:
    """Temperature 0 and no penalty: the token is the highest logit, whatever the other knobs."""
    return (
        sampling.get("temp") == 0.0
        and sampling.get("repeat_penalty", 1.0) == 1.0
        and not sampling.get("presence_penalty")
        and not sampling.get("frequency_penalty")
        and sampling.get("logits_processor") is None
    )


class Greedy:
    """The first token of the highest logit (what llama.cpp's greedy sampler returns)."""

    def __init__(self, llm: Any) -> None:
        import llama_cpp

        self._logits = llama_cpp.llama_get_logits_ith
        self._n_vocab = llm.n_vocab()

    def sample(self, ctx: Any, idx: int = -1) -> int:
        row = np.ctypeslib.as_array(self._logits(ctx.ctx, idx), shape=(self._n_vocab,))
        return int(np.argmax(row))

    def close(self) -> None:
        pass  # holds nothing of llama.cpp's


class GrammarChecked:
    """Sample freely, keep the token if the grammar allows it, else resample under the grammar."""

    def __init__(self, llm: Any, sampling: dict[str, Any]) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaTokenDataArray

        grammar = sampling["grammar"]
        free = {k: v for k, v in sampling.items() if k != "grammar"}
        self._lib = llama_cpp
        self._chain = type(llm)._init_sampler(llm, **free)  # the same knobs, no grammar
        self._greedy = Greedy(llm) if is_greedy(free) else None
        self._grammar = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode(), grammar._root.encode()
        )
        if not self._grammar:
            raise ValueError("llama.cpp could not parse the grammar")
        self._n_vocab = llm.n_vocab()
        self._all = LlamaTokenDataArray(n_vocab=self._n_vocab)
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self._one, llama_cpp.llama_token_data_p), size=1, selected=-1,
            sorted=False,
        )  # fmt: skip
        self.resampled = 0  # tokens the grammar refused (a measure of how often it steers)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        """The next token (called by ``Llama.sample`` in place of its own chain)."""
        lib = self._lib
        if self._greedy is not None:
            tok = self._greedy.sample(ctx, idx)
        else:
            tok = lib.llama_sampler_sample(self._chain.sampler, ctx.ctx, idx)
        if not self._allowed(tok):
            self.resampled += 1
            ptr = lib.llama_get_logits_ith(ctx.ctx, idx)
            self._all.copy_logits(np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)))
            cand = ctypes.byref(self._all.candidates)
            lib.llama_sampler_apply(self._grammar, cand)
            lib.llama_sampler_apply(self._chain.sampler, cand)
            tok = int(self._all.candidates_data.id[self._all.candidates.selected])
            lib.llama_sampler_accept(self._chain.sampler, tok)
        lib.llama_sampler_accept(self._grammar, tok)
        return tok

    def _allowed(self, tok: int) -> bool:
        self._one[0].id, self._one[0].logit, self._one[0].p = tok, 0.0, 0.0
        self._one_array.size, self._one_array.selected = 1, -1
        self._lib.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        return not math.isinf(self._one[0].logit)

    def close(self) -> None:
        if getattr(self, "_grammar", None):  # also when __init__ stopped half-way
            self._lib.llama_sampler_free(self._grammar)
            self._grammar = None
        if getattr(self, "_chain", None) is not None:
            self._chain.close()

    def __del__(self) -> None:
        self.close()


def sampled_with(llm: Any, prompt: list[int], sampling: dict[str, Any]) -> Iterator[int]:
    """``llm.generate(prompt, **sampling)``, a grammar sampled by ``GrammarChecked``, greedy
    sampling by ``Greedy``."""
    if sampling.get("grammar") is not None:
        checked: GrammarChecked | Greedy = GrammarChecked(llm, sampling)
    elif is_greedy(sampling):
        checked = Greedy(llm)
    else:
        yield from llm.generate(prompt, **sampling)
        return
    # generate() builds its sampler when it starts (the first next()): hand it this one.
    llm._init_sampler = lambda **_: checked
    try:
        gen = llm.generate(prompt, **{**sampling, "grammar": None})
        try:
            first = next(gen, None)
        finally:
            del llm._init_sampler
        if first is None:
            return
        yield first
        yield from gen
    finally:
        checked.close()
