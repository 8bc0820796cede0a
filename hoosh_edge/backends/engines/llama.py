"""On-device chat with llama.cpp (llama-cpp-python).

``LlamaEngine.chat_stream(model_id, req)`` is the one code path: it yields OpenAI-shaped chunk
dicts (``choices[0].delta`` ..., a final chunk with ``finish_reason``, then a usage chunk); a
non-streaming answer is those chunks joined. The caller fills ``id``/``object``/``created``/``model``.

How a request runs:

- Errors that stop a request (``QueueFull``, ``InsufficientMemory``, ``ContextLengthExceeded``,
  ``InvalidRequest``) are raised by the first ``next()``, before any chunk exists.
- The model's ``ModelSlot`` is held until the generator ends or is closed. Tokens are made in a
  pool thread (``ThreadStream``), so the gevent hub keeps serving other requests meanwhile.
- Closing the generator (client gone) stops the producer at its next token and waits for it to
  return before the slot is released, so two requests never touch one ``Llama`` at once.
- The effective context of a model is ``min(n_ctx, the model's training context)``.
- With a ``StateStore`` (``states``), a generation starts from the saved state sharing the
  longest prefix with its prompt and files its own state after it (``prompt_cache``). The usage
  chunk says how many prompt tokens were reused (``prompt_tokens_details.cached_tokens``). The
  capture runs after the usage chunk is handed over: the caller has its answer while the model
  stays taken until the capture is done.
- How a request becomes a prompt, its limits and its sampling: ``llama_prompt``; tools and the
  grammar of a call: ``llama_tools``; JSON schemas as grammars: ``llama_schema``.
- Tool calls stream as OpenAI streams them: a first ``delta.tool_calls`` entry with index, id,
  type, name and arguments "", then argument fragments as tokens arrive; ``finish_reason``
  "tool_calls". In "auto" mode the grammar decides text or call at the first token; a text
  answer then goes on without the grammar (checking the vocabulary against it costs more than
  the model).
"""

from __future__ import annotations

import codecs
import os
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import gevent

from hoosh_edge.backends.engines.gguf import kv_cache_bytes, read_gguf_metadata
from hoosh_edge.backends.engines.llama_prompt import (
    LoadedLlama,
    Prepared,
    Shaped,
    loaded,
    prepare,
    prompt_tokens,
    shape,
    template_messages,
)
from hoosh_edge.backends.engines.llama_raw import prepare_raw
from hoosh_edge.backends.engines.llama_sampling import sampled_with
from hoosh_edge.backends.engines.llama_tools import CallFramer, plan
from hoosh_edge.backends.engines.pool import ModelPool, ModelSlot
from hoosh_edge.backends.engines.prompt_cache import (
    ModelDigest,
    PromptStates,
    StateStore,
    live_reuse,
)
from hoosh_edge.errors import ModelNotFound
from hoosh_edge.threads import ThreadStream, run_blocking
from hoosh_edge.workers import native_lock

STREAM_BUFFER = 16


class LlamaEngine:
    """Chat models served by llama.cpp, one ``ModelSlot`` per model id."""

    def __init__(
        self,
        models: dict[str, str],
        pool: ModelPool,
        *,
        n_threads: int = 0,
        n_ctx: int = 4096,
        keep_alive_s: float = 300,
        max_queue: int = 4,
        states: StateStore | None = None,
    ) -> None:
        self.pool = pool
        self.states = states
        self._digests: dict[str, ModelDigest] = {}
        self.paths = dict(models)
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_ctx: dict[str, int] = {}
        self._active = 0
        self._active_lock = native_lock()
        for model_id, path in self.paths.items():
            meta = read_gguf_metadata(path)
            arch = meta.get("general.architecture", "llama")
            trained = int(meta.get(f"{arch}.context_length", 0)) or n_ctx
            ctx = min(n_ctx, trained)
            self.n_ctx[model_id] = ctx
            pool.register(
                ModelSlot(
                    key=model_id,
                    kind="llm",
                    loader=lambda p=path, c=ctx: self._load(p, c),
                    estimate_bytes=os.path.getsize(path) + kv_cache_bytes(meta, ctx),
                    keep_alive_s=keep_alive_s,
                    max_queue=max_queue,
                )
            )

    def model_ids(self) -> list[str]:
        """The chat model ids this engine serves."""
        return list(self.paths)

    def context_length(self, model_id: str) -> int:
        """Effective context (tokens) of a model; known without loading it."""
        self._slot(model_id)
        return self.n_ctx[model_id]

    @property
    def active_generations(self) -> int:
        """Producer threads currently running a generation."""
        return self._active

    def preload(self, ids: Iterable[str] | None = None) -> None:
        """Load models now (e.g. at start-up) instead of on their first request."""
        for model_id in self.model_ids() if ids is None else ids:
            with self._slot(model_id).use():
                pass

    def tokenize_count(self, model_id: str, messages: list[dict[str, Any]],
                       req: dict[str, Any] | None = None) -> int:  # fmt: skip
        """Prompt tokens of ``messages`` after the chat template, with the tools ``req`` shows
        (loads the model; waits its turn)."""
        msgs = template_messages({"messages": messages})
        tools = plan(req) if req else None
        with self._slot(model_id).use() as m:
            return len(run_blocking(prompt_tokens, m, msgs, tools, owner=model_id))

    def chat_stream(self, model_id: str, req: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Generate a chat reply as OpenAI chunk dicts, then a usage chunk. Call from a greenlet."""
        slot = self._slot(model_id)
        legacy = req.get("legacy")  # a raw prompt (legacy completions): no chat template
        messages = template_messages(req) if legacy is None else None
        # A bad schema or tool is refused before the model is waited for.
        shaped: Shaped = shape(req)
        held = slot.use()
        m = held.__enter__()
        stream: ThreadStream[dict[str, Any]] | None = None
        answered = False
        try:
            if legacy is None:
                prep = run_blocking(prepare, m, messages, req, shaped, owner=model_id)
            else:
                prep = run_blocking(prepare_raw, m, legacy, req, shaped, owner=model_id)
            # A small buffer bounds the tokens made in vain when the client goes away. The first
            # token waits for the whole prompt: allow 20 prompt tokens a second before "stuck".
            stream = ThreadStream(
                self._generate,
                m,
                prep,
                max_buffer=STREAM_BUFFER,
                owner=model_id,
                expect_s=len(prep.prompt) / 20,
            )
            for item in stream:
                yield item
                if "usage" in item:
                    answered = True  # the last item; the producer may still be keeping state
                    break
        finally:
            if answered and m.states is not None:
                gevent.spawn(_release_after, stream, held)
            else:
                # The producer must be out of llama.cpp before another request gets the model.
                if stream is not None:
                    stream.close()
                try:
                    if stream is not None:
                        stream.join()
                except BaseException:
                    # Killed while waiting: the model is given back once the producer is out.
                    gevent.spawn(_release_after, stream, held)
                    raise
                held.__exit__(None, None, None)

    # -- internals -------------------------------------------------------------------------------

    def _slot(self, model_id: str) -> ModelSlot:
        if model_id not in self.paths:
            raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
        return self.pool.slot(model_id)

    def _load(self, path: str, n_ctx: int) -> LoadedLlama:
        import llama_cpp

        llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            verbose=False,
        )
        m = loaded(llm, n_ctx)
        if self.states is not None:
            digest = self._digests.get(path) or self._digests.setdefault(path, ModelDigest(path))
            m.states = PromptStates(self.states, llm, path, digest)
        return m

    def _generate(self, m: LoadedLlama, prep: Prepared) -> Iterator[dict[str, Any]]:
        """Runs in a pool thread: sample tokens and turn them into chunks."""
        import llama_cpp

        with self._active_lock:
            self._active += 1
        try:
            llm = m.llm
            vocab = llm._model.vocab
            llm.set_seed(prep.seed)
            if m.states is not None:
                reused = m.states.restore(llm, prep.prompt)
            else:
                reused = live_reuse(llm, prep.prompt)
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            held, n, finish, first, cut = "", 0, "length", True, None
            # Logprobs of tokens whose text is held back travel with the chunk that sends it.
            scored: list[dict[str, Any]] | None = [] if prep.top_logprobs is not None else None
            known = _known_tokens(llm)
            tools = prep.tools
            # "required" answers are calls from the first token; "auto" ones are once they begin
            # with "<" (the grammar keeps text answers from doing so).
            calls = (
                CallFramer([t["name"] for t in tools.tools])
                if tools and tools.mode == "required"
                else None
            )
            undecided = tools is not None and calls is None
            sampled = _Sampled(llm, prep.prompt, prep.sampling)
            for tok in sampled:
                piece = known.get(tok, _UNSEEN)
                if piece is _UNSEEN:  # once per token id and model: two ctypes calls
                    end = tok in m.stop_ids or llama_cpp.llama_vocab_is_eog(vocab, tok)
                    piece = known[tok] = None if end else llm.detokenize([tok])
                if piece is None:
                    finish = "stop"
                    break
                n += 1
                if scored is not None:
                    scored.append(_token_logprobs(llm, tok, piece, prep.top_logprobs or 0))
                held += decoder.decode(piece)
                if undecided and held:
                    undecided = False
                    if held.startswith("<"):
                        calls = CallFramer([t["name"] for t in tools.tools])
                    elif prep.free_text:
                        sampled.unconstrain()  # the grammar chose text: the rest is free
                if calls is not None:
                    for entry in calls.feed(held):
                        yield _call_chunk(entry, first)
                        first = False
                    held, scored = "", [] if scored is not None else None
                    if calls.repeated:
                        finish = "stop"
                        break
                    if n >= prep.max_tokens:
                        break
                    continue
                text, held, cut = _cut_at_stop(held, prep.stops)
                if text:
                    yield _chunk(text, first, scored)
                    first, scored = False, [] if scored is not None else None
                if cut is not None:
                    finish = "stop"
                    break
                if n >= prep.max_tokens:
                    break
            if calls is not None:
                for entry in calls.feed(decoder.decode(b"", final=True)) + calls.flush():
                    yield _call_chunk(entry, first)
                    first = False
                if finish == "stop" and calls.started:
                    finish = "tool_calls"
            elif cut is None:
                # Text held back as a possible start of a stop string turned out not to be one.
                tail = held + decoder.decode(b"", final=True)
                text, _, cut = _cut_at_stop(tail, prep.stops, True)
                if text:
                    yield _chunk(text, first, scored)
                    first = False
                if cut is not None:
                    finish = "stop"
            final = _chunk("", first)
            final["choices"][0]["finish_reason"] = finish
            if cut in prep.client_stops:
                final["choices"][0]["stop_reason"] = cut  # which stop string ended the text
            if not first:
                final["choices"][0]["delta"] = {}
            yield final
            p = len(prep.prompt)
            usage = {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n,
                     "prompt_tokens_details": {"cached_tokens": reused}}  # fmt: skip
            yield {"choices": [], "usage": usage}
            if m.states is not None:
                m.states.keep(llm)
        except GeneratorExit:
            # The caller left mid-answer: the prompt it paid for is still worth keeping.
            if m.states is not None:
                m.states.keep(llm)
            raise
        finally:
            with self._active_lock:
                self._active -= 1


def _chunk(text: str, first: bool, scored: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    delta = {"role": "assistant", "content": text} if first else {"content": text}
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
    if scored is not None:
        choice["logprobs"] = {"content": scored, "refusal": None}
    return {"choices": [choice]}


class _Sampled:
    """The tokens of one generation; ``unconstrain()`` drops the grammar from the next one on."""

    def __init__(self, llm: Any, prompt: list[int], sampling: dict[str, Any]) -> None:
        self.llm, self.prompt, self.sampling = llm, prompt, sampling
        self.made: list[int] = []
        self._gen = sampled_with(llm, prompt, sampling)

    def __iter__(self) -> _Sampled:
        return self

    def __next__(self) -> int:
        tok = next(self._gen)
        self.made.append(tok)
        return tok

    def unconstrain(self) -> None:
        # Even checked token by token, a grammar costs time; a new generation reuses the
        # evaluated prefix, so this costs one token.
        self._gen.close()
        free = {**self.sampling, "grammar": None}
        self._gen = sampled_with(self.llm, self.prompt + self.made, free)


def _call_chunk(entry: dict[str, Any], first: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {"tool_calls": [entry]}
    if first:
        delta = {"role": "assistant", "content": None, **delta}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


_UNSEEN = object()
# Per model: a token id's text, or None for a token that ends the generation. Filled as tokens
# are sampled (at most the vocabulary); dropped with the model.
_KNOWN: weakref.WeakKeyDictionary[Any, dict[int, bytes | None]] = weakref.WeakKeyDictionary()


def _known_tokens(llm: Any) -> dict[int, bytes | None]:
    known = _KNOWN.get(llm)
    if known is None:
        known = _KNOWN[llm] = {}
    return known


def _token_logprobs(llm: Any, tok: int, piece: bytes, top: int) -> dict[str, Any]:
    """OpenAI's logprob entry for a sampled token, from the logits it was sampled from."""
    import llama_cpp
    import numpy as np

    n_vocab = llm.n_vocab()
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)  # the row the sampler just used
    logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64)
    peak = logits.max()
    logp = logits - (peak + np.log(np.exp(logits - peak).sum()))

    def entry(t: int, raw: bytes) -> dict[str, Any]:
        return {"token": raw.decode("utf-8", "replace"), "logprob": float(logp[t]),
                "bytes": list(raw)}  # fmt: skip

    out = entry(tok, piece)
    best = np.argpartition(-logp, top)[:top] if 0 < top < n_vocab else np.arange(0)
    out["top_logprobs"] = [entry(int(t), llm.detokenize([int(t)]))
                           for t in best[np.argsort(-logp[best])]]  # fmt: skip
    return out


def _cut_at_stop(text: str, stops: list[str], final: bool = False) -> tuple[str, str, str | None]:
    """Split ``text`` into (safe to send, held back, the stop string found or None)."""
    if not any(not s or s[0] in text for s in stops):
        return text, "", None  # the common case: nothing here can begin a stop string
    hits = [(i, s) for i, s in ((text.find(s), s) for s in stops) if i >= 0]
    if hits:
        at, which = min(hits, key=lambda h: h[0])
        return text[:at], "", which
    if final:
        return text, "", None
    hold = 0
    for s in stops:  # the longest tail that could still grow into a stop string
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return text[: len(text) - hold], text[len(text) - hold :], None


def _release_after(stream: ThreadStream[Any] | None, held: Any) -> None:
    """Give the model back once the producer (keeping the prompt's state) has returned."""
    if stream is not None:
        stream.join()
    held.__exit__(None, None, None)
