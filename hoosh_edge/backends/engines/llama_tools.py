"""OpenAI tools on llama.cpp: how tools are shown, the grammar of a call, and the call's chunks.

A call is always written, and constrained by the grammar to, exactly this (one block a call;
several calls are blocks one after another, separated by a newline)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

``arguments`` follows the tool's ``parameters`` schema (``llama_schema`` lists what is enforced).
``tool_choice``: "none" shows no tools and lets only text out; "auto" (the default with tools)
lets the model choose text or calls (a text answer then cannot begin with "<" or white space);
"required" and a named function allow only calls (of that function). ``parallel_tool_calls``
false allows one call.

How the tools reach the model: a GGUF whose chat template reads ``tools`` gets them through the
template (and, unless the template already speaks of ``<tool_call>``, the format above in a
system message). Other templates get the generic block below, added to the first system message
(or as a new first system message)::

    # Tools
    You can call these functions. Each line describes one: its name, what it does and the JSON
    schema of its arguments.
    {"name": "get_weather", "description": "...", "parameters": {...}}
    To call functions, answer only with one block per call, in this form:
    <tool_call>
    {"name": "<function name>", "arguments": <the arguments as a JSON object>}
    </tool_call>
    <one line for the tool_choice: "If no function fits, answer in text." / "You must call a
    function." / "You must call the function NAME." and "Call one function at most.">

Earlier turns: an assistant message's ``tool_calls`` are written as those blocks after its text;
``tool`` results become a user message of ``<tool_response>`` blocks, one a result::

    <tool_response>
    {"name": "get_weather", "content": "21 C and sunny"}
    </tool_response>
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from hoosh_edge.backends.engines import llama_schema
from hoosh_edge.errors import InvalidRequest

OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"
HEAD = OPEN + '{"name": '
END = "}" + CLOSE
FORMAT = (
    "To call functions, answer only with one block per call, in this form:\n"
    '<tool_call>\n{"name": "<function name>", "arguments": <the arguments as a JSON object>}\n'
    "</tool_call>"
)
# A text answer in "auto" mode: anything not beginning like a call.
TEXT_RULE = r"[^<\x00-\x20] [^\x00]*"


@dataclass
class ToolPlan:
    """The tools one request may call and how: ``mode`` is "auto" or "required"."""

    tools: list[dict[str, Any]]  # OpenAI function specs ({"name", "description", "parameters"})
    mode: str
    parallel: bool
    named: str | None = None

    def instruction(self) -> str:
        if self.named:
            line = f"You must call the function {self.named}."
        elif self.mode == "required":
            line = "You must call a function."
        else:
            line = "If no function fits, answer in text."
        return line if self.parallel else line + " Call one function at most."


def plan(req: dict[str, Any]) -> ToolPlan | None:
    """The request's tools, or None when the answer is text only."""
    tools = req.get("tools") or []
    choice = req.get("tool_choice")
    if not tools or choice == "none":
        return None
    specs = []
    for i, tool in enumerate(tools):
        if tool.get("type", "function") != "function":
            err = InvalidRequest(f"tools[{i}]: only function tools are supported by on-device "
                                 "models.", param="tools")  # fmt: skip
            err.fallback_ok = True  # a cloud model may take custom tools
            raise err
        fn = tool["function"]
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        elif params.get("type", "object") != "object":
            raise InvalidRequest(f"tools[{i}].function.parameters must describe an object.",
                                 param="tools")  # fmt: skip
        llama_schema.check(params, f"tools[{i}].function.parameters", "tools")
        specs.append({**fn, "parameters": params})
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise InvalidRequest("tools: two tools share one name.", param="tools")
    parallel = req.get("parallel_tool_calls") is not False
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            err = InvalidRequest(f"tool_choice of type {choice.get('type')!r} is not supported "
                                 "by on-device models.", param="tool_choice")  # fmt: skip
            err.fallback_ok = True
            raise err
        name = choice["function"]["name"]
        if name not in names:
            raise InvalidRequest(f"tool_choice names '{name}', which is not in tools.",
                                 param="tool_choice")  # fmt: skip
        return ToolPlan([specs[names.index(name)]], "required", parallel, name)
    return ToolPlan(specs, "required" if choice == "required" else "auto", parallel)


def grammar_text(p: ToolPlan | None, response_format: dict[str, Any] | None) -> str | None:
    """GBNF of the answer (None: free text): calls, or with ``auto`` calls or the text answer."""
    conv = llama_schema.Converter()
    text = _answer_rule(conv, response_format)
    if p is None:
        return None if text is None else f"root ::= {text}\n{conv.rules()}"
    calls = []
    for i, spec in enumerate(p.tools):
        args = _add(conv, spec["parameters"], f"tool{i}-args", f"tool{i}",
                    f"tools[{i}].function.parameters", "tools")  # fmt: skip
        name = conv._format_literal(json.dumps(spec["name"]) + ', "arguments": ')
        calls.append(conv._add_rule(f"tool{i}-call", f"{name} {args}"))
    head, end = conv._format_literal(HEAD), conv._format_literal(END)
    block = conv._add_rule("tool-block", f"{head} ( {' | '.join(calls)} ) {end}")
    root = f'{block} ("\\n" {block})*' if p.parallel else block
    if p.mode == "auto":
        text = text or conv._add_rule("free-text", TEXT_RULE)
        root = f"{root} | {text}"
    return f"root ::= {root}\n{conv.rules()}"


def _answer_rule(
    conv: llama_schema.Converter, response_format: dict[str, Any] | None
) -> str | None:
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return conv.add({"type": "object"}, "answer", "response")
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        where = "response_format.json_schema.schema"
        llama_schema.check({} if schema is None else schema, where, "response_format")
        return _add(conv, schema or {}, "answer", "response", where, "response_format")
    raise InvalidRequest(f"Unknown response_format type '{kind}'.", param="response_format")


def _add(conv: llama_schema.Converter, schema: Any, name: str, url: str, where: str,
         param: str) -> str:  # fmt: skip
    try:
        return conv.add(schema, name, url)
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise InvalidRequest(f"{where} cannot be turned into a grammar: {e}", param=param) from e


def tools_system(p: ToolPlan) -> str:
    """The generic system block that shows the tools (documented in this module)."""
    lines = ["# Tools", "You can call these functions. Each line describes one: its name, what it "
             "does and the JSON schema of its arguments."]  # fmt: skip
    for spec in p.tools:
        shown = {k: spec[k] for k in ("name", "description", "parameters") if spec.get(k)}
        lines.append(json.dumps(shown, ensure_ascii=False))
    return "\n".join([*lines, FORMAT, p.instruction()])


def with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``text`` added to the first system message, or as a new first one."""
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = (first["content"] + "\n\n" + text).lstrip()
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def for_template(messages: list[dict[str, Any]], p: ToolPlan | None, knows_tools: bool,
                 writes_calls: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:  # fmt: skip
    """Messages (and the ``tools`` argument) for the chat template, earlier calls included."""
    if knows_tools:
        msgs = _native(messages)
        if p is None:
            return msgs, None
        if not writes_calls:
            msgs = with_system(msgs, FORMAT + "\n" + p.instruction())
        return msgs, [{"type": "function", "function": spec} for spec in p.tools]
    msgs = _generic(messages)
    return (msgs if p is None else with_system(msgs, tools_system(p))), None


def _names(messages: list[dict[str, Any]]) -> dict[str, str]:
    """tool_call_id -> function name, from the assistant turns."""
    return {c.get("id"): (c.get("function") or {}).get("name", "")
            for m in messages for c in m.get("tool_calls") or ()}  # fmt: skip


def _native(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool turns as Hugging Face templates read them (arguments as objects)."""
    names = _names(messages)
    out = []
    for src in messages:
        m = {k: v for k, v in src.items() if k != "tool_calls"}
        calls = []
        for c in src.get("tool_calls") or ():
            fn = c.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except ValueError:
                args = fn.get("arguments")
            calls.append({"id": c.get("id"), "type": "function",
                          "function": {"name": fn.get("name", ""), "arguments": args}})  # fmt: skip
        if calls:
            m["tool_calls"] = calls
        if m["role"] == "tool" and "name" not in m:
            m["name"] = names.get(m.get("tool_call_id"), "")
        out.append(m)
    return out


def _generic(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool turns as plain text: call blocks after the text, results as a user message."""
    names = _names(messages)
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "tool":
            name = m.get("name") or names.get(m.get("tool_call_id"), "")
            block = (
                "<tool_response>\n"
                + json.dumps({"name": name, "content": m["content"]}, ensure_ascii=False)
                + "\n</tool_response>"
            )
            if out and out[-1].get("_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_results": True})
            continue
        text = m["content"]
        blocks = [call_block((c.get("function") or {}).get("name", ""),
                             (c.get("function") or {}).get("arguments") or "{}")
                  for c in m.get("tool_calls") or ()]  # fmt: skip
        if blocks:
            text = "\n".join([text, *blocks] if text else blocks)
        out.append({"role": m["role"], "content": text})
    return [{"role": m["role"], "content": m["content"]} for m in out]


def call_block(name: str, arguments: Any) -> str:
    """One call as the model writes it."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    try:
        json.loads(args)
    except ValueError:
        args = json.dumps(args)  # arguments that are not JSON are shown as a string
    return f'{HEAD}{json.dumps(name)}, "arguments": {args}{END}'


def call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class CallFramer:
    """Turns the text of calls, as it is generated, into OpenAI ``delta.tool_calls`` entries.

    A call that repeats an earlier one (same name, same arguments) ends the answer and is not
    sent: small models, free to write more calls, write the same one until the token limit.
    While a call's arguments are still a prefix of an earlier same-named call's, they wait.
    """

    names: list[str]
    buf: str = ""
    index: int = -1
    in_args: bool = False
    started: list[str] = field(default_factory=list)
    repeated: bool = False  # the last call repeated an earlier one: stop generating
    _done: list[tuple[str, str]] = field(default_factory=list)
    _args_text: str = ""
    _waiting: list[dict[str, Any]] | None = None  # the head and arguments held back

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The tool_calls delta entries ``text`` completes (the tail that may end a call waits)."""
        self.buf += text
        out: list[dict[str, Any]] = []
        while not self.repeated:
            if not self.in_args:
                self.buf = self.buf.lstrip("\n")
                name = next((n for n in self.names if self.buf.startswith(self._lead(n))), None)
                if name is None:
                    return out
                self.buf = self.buf[len(self._lead(name)) :]
                self.index += 1
                self.in_args = True
                self.started.append(name)
                self._args_text = ""
                head = {"index": self.index, "id": call_id(), "type": "function",
                        "function": {"name": name, "arguments": ""}}  # fmt: skip
                same = any(n == name for n, _ in self._done)
                self._waiting = [head] if same else None
                out += [] if same else [head]
            at = self.buf.find(END)
            if at < 0:
                hold = _partial_suffix(self.buf, END)
                if len(self.buf) > hold:
                    out += self._arguments(self.buf[: len(self.buf) - hold])
                    self.buf = self.buf[len(self.buf) - hold :]
                return out
            out += self._arguments(self.buf[:at]) if at else []
            self.buf = self.buf[at + len(END) :]
            self.in_args = False
            call = (self.started[-1], self._args_text)
            if self._waiting is not None and call in self._done:
                self.repeated, self._waiting = True, None
                self.started.pop()
                self.index -= 1
                return out
            out += self._release()
            self._done.append(call)
        return out

    def flush(self) -> list[dict[str, Any]]:
        """What is left when generation stopped early (a call cut by the token limit)."""
        out = self._arguments(self.buf) if self.in_args and self.buf else []
        self.buf = ""
        if self._waiting is not None and not out:
            self._waiting = None  # cut while it could still be a repeat: nothing new to send
            self.started.pop()
            self.index -= 1
        return out + self._release()

    def _arguments(self, text: str) -> list[dict[str, Any]]:
        self._args_text += text
        entry = {"index": self.index, "function": {"arguments": text}}
        if self._waiting is None:
            return [entry]
        self._waiting.append(entry)
        name = self.started[-1]
        if any(n == name and a.startswith(self._args_text) for n, a in self._done):
            return []
        return self._release()  # no longer a repeat: send what waited, then stream on

    def _release(self) -> list[dict[str, Any]]:
        waiting, self._waiting = self._waiting or [], None
        return waiting

    def _lead(self, name: str) -> str:
        return f'{HEAD}{json.dumps(name)}, "arguments": '


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that begins ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
