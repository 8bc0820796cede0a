"""Tool calls on llama.cpp without a model: the plan, the prompt, the call framing."""

from __future__ import annotations

import json

import pytest

from tests.conftest import require_module

require_module("llama_cpp", "llama-cpp-python is not installed (scripts/setup)")

from hoosh_edge.backends.engines import llama_tools  # noqa: E402
from hoosh_edge.backends.engines.llama_tools import CallFramer, call_block  # noqa: E402
from hoosh_edge.errors import InvalidRequest  # noqa: E402
from hoosh_edge.formats.openai import join_chunks  # noqa: E402

TOOLS = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "b"}}]  # fmt: skip


def framed(text: str, step: int = 1) -> tuple[list[dict], CallFramer]:
    """The entries of ``text`` fed ``step`` characters at a time, then flushed."""
    f = CallFramer(["a", "b"])
    out = []
    for i in range(0, len(text), step):
        out += f.feed(text[i : i + step])
        if f.repeated:
            break
    return out + f.flush(), f


def joined(entries: list[dict]) -> list[dict]:
    chunks = [{"choices": [{"index": 0, "delta": {"tool_calls": [e]}}]} for e in entries]
    return join_chunks(chunks)["choices"][0]["message"]["tool_calls"]


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_calls_are_framed_as_openai_streams_them(step):
    text = call_block("a", '{"x": "}\\n</tool_call>"}') + "\n" + call_block("b", "{}")
    entries, f = framed(text, step)
    heads = [e for e in entries if "id" in e]
    assert [h["function"] for h in heads] == [{"name": "a", "arguments": ""},
                                              {"name": "b", "arguments": ""}]  # fmt: skip
    assert all(h["id"].startswith("call_") and h["type"] == "function" for h in heads)
    calls = joined(entries)
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"x": "}\n</tool_call>"}, {}]
    if step == 1:
        assert len(entries) > 10  # fragments as the text arrives, the end marker held back
    assert not f.repeated and f.started == ["a", "b"]


def test_a_repeated_call_ends_the_answer_unsent():
    same = call_block("a", '{"n": 1}')
    text = "\n".join([same, call_block("a", '{"n": 12}'), same, call_block("b", "{}")])
    entries, f = framed(text)
    calls = joined(entries)
    assert [c["function"]["arguments"] for c in calls] == ['{"n": 1}', '{"n": 12}']
    assert f.repeated and f.started == ["a", "a"]
    # The second call waits while its arguments could still be the first's.
    f = CallFramer(["a"])
    f.feed(same + "\n")
    assert f.feed('<tool_call>\n{"name": "a", "arguments": {"n": 1') == []
    out = f.feed("2")
    assert out[0]["id"] and "".join(e["function"]["arguments"] for e in out) == '{"n": 12'


def test_a_call_cut_by_the_token_limit_is_sent_as_far_as_it_went():
    entries, f = framed(call_block("a", '{"n": 1}')[:-8])
    assert joined(entries)[0]["function"]["arguments"].startswith('{"n": 1')


def test_plan_modes_and_refusals():
    assert llama_tools.plan({"tools": TOOLS, "tool_choice": "none"}) is None
    assert llama_tools.plan({"tools": []}) is None
    p = llama_tools.plan({"tools": TOOLS})
    assert (p.mode, p.parallel, [t["name"] for t in p.tools]) == ("auto", True, ["a", "b"])
    p = llama_tools.plan({"tools": TOOLS, "parallel_tool_calls": False,
                          "tool_choice": {"type": "function", "function": {"name": "b"}}})  # fmt: skip
    assert (p.mode, p.parallel, p.named, [t["name"] for t in p.tools]) == (
        "required", False, "b", ["b"])  # fmt: skip
    assert "must call the function b" in llama_tools.tools_system(p)
    with pytest.raises(InvalidRequest, match="share one name"):
        llama_tools.plan({"tools": TOOLS + TOOLS[:1]})
    with pytest.raises(InvalidRequest, match="describe an object"):
        llama_tools.plan({"tools": [{"type": "function", "function": {
            "name": "s", "parameters": {"type": "string"}}}]})  # fmt: skip
    with pytest.raises(InvalidRequest) as e:
        llama_tools.plan({"tools": TOOLS, "tool_choice": {"type": "allowed_tools"}})
    assert e.value.fallback_ok and e.value.param == "tool_choice"


def test_tool_turns_render_generically_and_for_templates_that_know_tools():
    call = {"id": "c1", "type": "function", "function": {"name": "a", "arguments": '{"q": 1}'}}
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c1", "content": "two"}]  # fmt: skip
    p = llama_tools.plan({"tools": TOOLS, "tool_choice": "required"})
    generic, specs = llama_tools.for_template(msgs, p, False, False)
    assert specs is None and generic[0]["role"] == "system" and "# Tools" in generic[0]["content"]
    assert generic[2] == {"role": "assistant", "content": call_block("a", '{"q": 1}')}
    assert generic[3]["role"] == "user" and generic[3]["content"].count("<tool_response>") == 2
    assert json.loads(generic[3]["content"].split("\n")[1]) == {"name": "a", "content": "one"}
    native, specs = llama_tools.for_template(msgs, p, True, False)
    assert [s["function"]["name"] for s in specs] == ["a", "b"]
    assert native[2]["tool_calls"][0]["function"]["arguments"] == {"q": 1}
    assert native[3] == {"role": "tool", "tool_call_id": "c1", "content": "one", "name": "a"}
    assert "<tool_call>" in native[0]["content"]  # the format, since the template has none
    native, _ = llama_tools.for_template(msgs, p, True, True)
    assert native[0] == msgs[0]


# A template that knows tools, as Hugging Face templates do: ``tools``, ``tool_calls`` with object
# arguments, ``tool`` messages.
TOOLS_TEMPLATE = (
    "{% if tools %}<|tools|>{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}[{{ c.function.name }} {{ c.function.arguments | tojson }}]"
    "{% endfor %}{% if m.role == 'tool' %}({{ m.name }}){% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_a_template_that_knows_tools_renders_them_itself(tmp_path):
    import synth_gguf

    from hoosh_edge.backends.engines.llama import LlamaEngine
    from hoosh_edge.backends.engines.llama_prompt import prompt_tokens, template_messages
    from hoosh_edge.backends.engines.pool import ModelPool

    path = synth_gguf.make_tiny_gguf(tmp_path / "t.gguf", chat_template=TOOLS_TEMPLATE)
    pool = ModelPool(reserve_bytes=0, mem_available=lambda: None)
    engine = LlamaEngine({"t": str(path)}, pool, n_threads=1, n_ctx=1024)
    call = {"id": "c1", "type": "function", "function": {"name": "a", "arguments": '{"q": 1}'}}
    req = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"}]}  # fmt: skip
    with pool.slot("t").use() as m:
        assert m.knows_tools and not m.writes_calls
        tokens = prompt_tokens(m, template_messages(req), llama_tools.plan(req))
        text = m.llm.detokenize(tokens).decode().replace("\u2581", " ")
    # (The formatter's trim_blocks drops the newline after each block tag.)
    assert text.startswith("<|tools|>a;b;<|system|>To call functions")
    assert text.endswith('<|user|>hi<|assistant|>[a {"q": 1}]<|tool|>one(a)<|assistant|>')
    assert "# Tools" not in text  # the generic block is for templates without tools
    chunks = list(engine.chat_stream("t", {**req, "tool_choice": "required", "max_tokens": 200,
                                           "parallel_tool_calls": False}))  # fmt: skip
    joined_calls = join_chunks(chunks)["choices"][0]["message"]["tool_calls"]
    assert len(joined_calls) == 1 and joined_calls[0]["function"]["name"] in ("a", "b")


def test_checked_sampling_draws_what_the_grammar_first_chain_draws(tmp_path):
    """Greedy: the token drawn freely, if the grammar allows it, is the grammar's best too."""
    import llama_cpp
    import synth_gguf

    from hoosh_edge.backends.engines.llama_prompt import loaded, prepare, template_messages
    from hoosh_edge.backends.engines.llama_sampling import sampled_with

    path = synth_gguf.make_tiny_gguf(tmp_path / "t.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=1, verbose=False)
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": -40,
              "maximum": 900}, "s": {"type": "string", "maxLength": 12}}, "required": ["n", "s"]}  # fmt: skip
    req = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 60,
           "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                      "schema": schema}}}  # fmt: skip
    prep = prepare(loaded(llm, 1024), template_messages(req), req)

    def draw(gen) -> list[int]:
        out = []
        for tok in gen:
            if tok == llm.token_eos() or len(out) == 60:
                break
            out.append(tok)
        return out

    plain = draw(llm.generate(prep.prompt, **prep.sampling))
    checked = draw(sampled_with(llm, prep.prompt, prep.sampling))
    assert checked == plain
    assert json.loads(llm.detokenize(checked).decode())["n"] in range(-40, 901)
    assert "_init_sampler" not in vars(llm)  # generate() is left as it was
