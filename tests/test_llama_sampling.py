"""Sampling on llama.cpp: the greedy argmax draws what llama.cpp's own greedy chain draws."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require, require_module

require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")

import llama_cpp  # noqa: E402
import synth_gguf  # noqa: E402

from hoosh_edge.backends.engines import llama_sampling  # noqa: E402
from hoosh_edge.backends.engines.llama_prompt import loaded, prepare, template_messages  # noqa: E402
from hoosh_edge.backends.engines.llama_sampling import Greedy, is_greedy, sampled_with  # noqa: E402

SMOLLM2 = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = ["Which lights are on? Schön, danke.", "日本の首都はどこですか？", "Tell me a story."]


def draw(llm, gen, n: int = 48) -> list[int]:
    out: list[int] = []
    for tok in gen:
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok) or len(out) == n:
            break
        out.append(tok)
    gen.close()
    return out


def prepared(llm, question: str, **knobs):
    req = {"messages": [{"role": "user", "content": question}], "temperature": 0, **knobs}
    return prepare(loaded(llm, llm.n_ctx()), template_messages(req), req)


def test_is_greedy_only_at_temperature_zero_without_penalties():
    base = {"temp": 0.0, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "grammar": None}  # fmt: skip
    assert is_greedy(base)
    assert is_greedy({**base, "temp": 0})  # an integer zero from JSON
    assert not is_greedy({**base, "temp": 0.2})
    assert not is_greedy({**base, "temp": -1.0})  # llama-cpp-python: sample from the softmax
    assert not is_greedy({**base, "presence_penalty": 0.5})
    assert not is_greedy({**base, "frequency_penalty": -0.5})
    assert not is_greedy({**base, "repeat_penalty": 1.1})
    assert not is_greedy({**base, "logits_processor": [lambda ids, logits: logits]})


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_greedy_argmax_draws_the_tokens_of_llama_cpps_greedy_chain(tmp_path, which):
    if which == "smollm2":
        require(SMOLLM2.exists(), "SmolLM2 is missing: run scripts/setup --dev")
        path = SMOLLM2
    else:
        path = synth_gguf.make_tiny_gguf(tmp_path / "t.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False)
    for q in QUESTIONS:
        prep = prepared(llm, q, max_tokens=48)
        assert is_greedy(prep.sampling)
        llm.reset()
        chain = draw(llm, llm.generate(prep.prompt, **prep.sampling))  # llama.cpp's sampler
        llm.reset()
        fast = draw(llm, sampled_with(llm, prep.prompt, prep.sampling))
        assert len(chain) >= 8 and fast == chain
        assert "_init_sampler" not in vars(llm)  # generate() is left as it was


def test_greedy_reads_the_context_logits(tmp_path):
    llm = llama_cpp.Llama(model_path=str(synth_gguf.make_tiny_gguf(tmp_path / "t.gguf")),
                          n_ctx=256, n_threads=1, verbose=False)  # fmt: skip
    llm.eval(llm.tokenize(b"hello there"))
    import numpy as np

    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1),
                                shape=(llm.n_vocab(),))  # fmt: skip
    assert Greedy(llm).sample(llm._ctx, -1) == int(np.argmax(row))
    chain = llm._init_sampler(temp=0.0)
    assert Greedy(llm).sample(llm._ctx, -1) == chain.sample(llm._ctx, -1)


def test_penalties_keep_llama_cpps_own_chain(tmp_path, monkeypatch):
    """A penalty changes the draw by history: the argmax must not take its place."""
    made: list[Greedy] = []

    class Counting(Greedy):
        def __init__(self, llm) -> None:
            super().__init__(llm)
            made.append(self)

    monkeypatch.setattr(llama_sampling, "Greedy", Counting)
    llm = llama_cpp.Llama(model_path=str(synth_gguf.make_tiny_gguf(tmp_path / "t.gguf")),
                          n_ctx=256, n_threads=1, verbose=False)  # fmt: skip
    prep = prepared(llm, "hi", frequency_penalty=1.5)
    llm.reset()
    chain = draw(llm, llm.generate(prep.prompt, **prep.sampling), 24)
    llm.reset()
    got = draw(llm, sampled_with(llm, prep.prompt, prep.sampling), 24)
    assert got == chain and made == []
    plain = prepared(llm, "hi")
    llm.reset()
    draw(llm, sampled_with(llm, plain.prompt, plain.sampling), 4)
    assert len(made) == 1
