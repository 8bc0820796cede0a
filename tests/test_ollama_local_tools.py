"""Tools through Ollama's /api/chat on the box's own llama.cpp models, with the ollama client.

Ollama has no ``tool_choice``: a request with tools is OpenAI's "auto", so the model chooses
text or calls, and the grammar keeps either well formed. The tiny synthetic GGUF writes noise:
what holds there is that the tools reach the prompt and the framing; SmolLM2 answers from a tool result sent the way Home Assistant sends
it (arguments as an object, the result as a ``tool`` message naming the tool, no call id).
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import ollama
import pytest

from tests.conftest import require, require_module
from tests.synth_gguf import make_tiny_gguf
from tests.test_local_tools import ASK, SCHEMAS, TOOLS
from tests.test_local_tools import local_toml as tiny_toml
from tests.test_ollama_local import SMOLLM2, local_toml

require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", n_ctx_train=4096)


def check(calls) -> None:
    for call in calls:
        args = call.function.arguments
        assert isinstance(args, dict), args  # Ollama's arguments are objects, not strings
        jsonschema.validate(dict(args), SCHEMAS[call.function.name])


def test_tools_reach_the_local_model_and_auto_answers_are_well_formed(tiny, gateway_factory):
    client = ollama.Client(host=gateway_factory(tiny_toml(tiny)).url)
    assert client.show("tiny").capabilities == ["completion", "tools"]
    bare = client.chat(model="tiny", messages=ASK, stream=False, options={"num_predict": 1})
    for seed in range(6):
        opts = {"seed": seed, "num_predict": 200}
        r = client.chat(model="tiny", messages=ASK, tools=TOOLS, stream=False, options=opts)
        # The tools are shown to the model: the prompt holds their block.
        assert r.prompt_eval_count > bare.prompt_eval_count + 50
        parts = list(client.chat(model="tiny", messages=ASK, tools=TOOLS, stream=True,
                                 options=opts))  # fmt: skip
        streamed = [c for p in parts for c in (p.message.tool_calls or [])]
        assert parts[-1].done and parts[-1].eval_count >= 1
        if r.message.tool_calls:
            check(r.message.tool_calls)
            assert [(c.function.name, dict(c.function.arguments)) for c in streamed] == [
                (c.function.name, dict(c.function.arguments)) for c in r.message.tool_calls
            ]
        else:  # text: the grammar keeps it from opening like a call
            assert r.message.content and r.message.content[0] not in "< \n\t"
            assert not streamed
            assert "".join(p.message.content or "" for p in parts) == r.message.content


@pytest.mark.slow
def test_smollm2_answers_from_a_tool_result_sent_as_home_assistant_sends_it(gateway_factory):
    require(SMOLLM2.exists(), "SmolLM2 is not pulled (hoosh-edge models pull smollm2)")
    client = ollama.Client(host=gateway_factory(local_toml()).url)
    ask = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]
    turns = [*ask,
             {"role": "assistant", "content": "", "tool_calls": [{"function": {
                 "name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}]},
             {"role": "tool", "tool_name": "get_weather", "content": "Sunny, 31 degrees Celsius"}]  # fmt: skip
    opts = {"temperature": 0, "num_predict": 60}
    # Without tools offered again the model answers from the result. (With them, SmolLM2 asks
    # for the same call again: Ollama has no tool_choice to say "answer now".)
    r = client.chat(model="smollm2", messages=turns, stream=False, options=opts)
    assert "31" in r.message.content, r.message.content
    again = client.chat(model="smollm2", messages=turns, tools=TOOLS, stream=False, options=opts)
    check(again.message.tool_calls or [])
    # The call and its result reached the prompt: it is longer than the bare question's.
    bare = client.chat(model="smollm2", messages=ask, stream=False,
                       options={"temperature": 0, "num_predict": 1})  # fmt: skip
    assert r.prompt_eval_count > bare.prompt_eval_count + 20
