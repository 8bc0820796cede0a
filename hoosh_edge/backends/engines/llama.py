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

Decisions, so the API layer can document them:

- ``max_tokens`` larger than what is left of the context is clamped to fit (``finish_reason``
  "length" when that is reached); ``max_tokens`` None means "up to the context". A prompt that
  alone fills the context raises ``ContextLengthExceeded`` (param "messages").
- The effective context of a model is ``min(n_ctx, the model's training context)``.
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

import codecs
import json
import mmap
import os
import random
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent.monkey

from hoosh_edge.backends.engines.pool import ModelPool, ModelSlot
from hoosh_edge.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound
from hoosh_edge.threads import ThreadStream, run_blocking

_allocate_lock = gevent.monkey.get_original("_thread", "allocate_lock")

# Used when a GGUF carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

STREAM_BUFFER = 16
DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05}

# GGUF value types -> struct format (8 = string, 9 = array are handled apart).
_GGUF_SCALARS = dict(zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), "BbHhIif?Qqd", strict=True))


def read_gguf_metadata(path: str) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file (arrays skipped), without reading the weights."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, _n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        off = 24
        meta: dict[str, Any] = {}

        def string(at: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", mm, at)
            return mm[at + 8 : at + 8 + n].decode("utf-8", "replace"), at + 8 + n

        for _ in range(n_kv):
            key, off = string(off)
            (vtype,) = struct.unpack_from("<I", mm, off)
            off += 4
            if vtype == 8:
                meta[key], off = string(off)
            elif vtype == 9:
                etype, count = struct.unpack_from("<IQ", mm, off)
                off += 12
                if etype == 8:  # e.g. the vocabulary: walk the lengths, keep nothing
                    for _ in range(count):
                        off += 8 + struct.unpack_from("<Q", mm, off)[0]
                elif etype in _GGUF_SCALARS:
                    off += count * struct.calcsize("<" + _GGUF_SCALARS[etype])
                else:
                    raise ValueError(f"{path}: nested GGUF array under {key!r}")
            else:
                fmt = "<" + _GGUF_SCALARS[vtype]
                (meta[key],) = struct.unpack_from(fmt, mm, off)
                off += struct.calcsize(fmt)
        return meta


def kv_cache_bytes(meta: dict[str, Any], n_ctx: int) -> int:
    """Bytes of an f16 K+V cache for ``n_ctx`` tokens, from GGUF metadata."""
    arch = meta.get("general.architecture", "llama")
    n_layer = int(meta[f"{arch}.block_count"])
    n_embd = int(meta[f"{arch}.embedding_length"])
    n_head = int(meta.get(f"{arch}.attention.head_count", 1))
    n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    k_len = int(meta.get(f"{arch}.attention.key_length", n_embd // n_head))
    v_len = int(meta.get(f"{arch}.attention.value_length", n_embd // n_head))
    return n_layer * n_ctx * n_head_kv * (k_len + v_len) * 2


@dataclass
class LoadedLlama:
    """A loaded model with what every request needs beside it."""

    llm: Any  # llama_cpp.Llama
    formatter: Any  # llama_chat_format.Jinja2ChatFormatter
    n_ctx: int
    stop_ids: frozenset[int]

    def close(self) -> None:
        self.llm.close()


@dataclass
class _Prepared:
    prompt: list[int]
    max_tokens: int
    stops: list[str]
    sampling: dict[str, Any]
    seed: int
    client_stops: tuple[str, ...] = ()  # the request's own stop strings (not the model's marker)
    top_logprobs: int | None = None  # None: no logprobs; 0-20: that many alternatives a token


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
    ) -> None:
        self.pool = pool
        self.paths = dict(models)
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_ctx: dict[str, int] = {}
        self._active = 0
        self._active_lock = _allocate_lock()
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

    def tokenize_count(self, model_id: str, messages: list[dict[str, Any]]) -> int:
        """Prompt tokens of ``messages`` after the chat template (loads the model; waits its turn)."""
        msgs = _messages({"messages": messages})
        with self._slot(model_id).use() as m:
            return len(run_blocking(_prompt_tokens, m, msgs, owner=model_id))

    def chat_stream(self, model_id: str, req: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Generate a chat reply as OpenAI chunk dicts, then a usage chunk. Call from a greenlet."""
        slot = self._slot(model_id)
        messages = _messages(req)
        _check_tools(req)
        with slot.use() as m:
            prep = run_blocking(self._prepare, m, messages, req, owner=model_id)
            # A small buffer bounds the tokens made in vain when the client goes away. The first
            # token waits for the whole prompt: allow 20 prompt tokens a second before "stuck".
            stream: ThreadStream[dict[str, Any]] = ThreadStream(
                self._generate,
                m,
                prep,
                max_buffer=STREAM_BUFFER,
                owner=model_id,
                expect_s=len(prep.prompt) / 20,
            )
            try:
                yield from stream
            finally:
                # The producer must be out of llama.cpp before another request gets the model.
                stream.close()
                stream.join()

    # -- internals -------------------------------------------------------------------------------

    def _slot(self, model_id: str) -> ModelSlot:
        if model_id not in self.paths:
            raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
        return self.pool.slot(model_id)

    def _load(self, path: str, n_ctx: int) -> LoadedLlama:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            verbose=False,
        )
        eos, bos = llm.token_eos(), llm.token_bos()

        def text(tok: int) -> str:
            return (
                llm.detokenize([tok], special=True).decode("utf-8", "replace") if tok >= 0 else ""
            )

        template = llm.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
        formatter = Jinja2ChatFormatter(template=template, eos_token=text(eos), bos_token=text(bos))
        return LoadedLlama(llm, formatter, n_ctx, frozenset({eos} if eos >= 0 else ()))

    def _prepare(
        self, m: LoadedLlama, messages: list[dict[str, Any]], req: dict[str, Any]
    ) -> _Prepared:
        prompt = _prompt_tokens(m, messages)
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
            "grammar": _grammar(req.get("response_format")),
        }
        seed = req.get("seed")
        # Unseeded requests must differ from each other, so never reuse the model's last seed.
        seed = random.getrandbits(31) if seed is None else int(seed) & 0xFFFFFFFF
        top = int(req.get("top_logprobs") or 0) if req.get("logprobs") else None
        return _Prepared(prompt, min(max_tokens or room, room), stops, sampling, seed,
                         client_stops, top)  # fmt: skip

    def _generate(self, m: LoadedLlama, prep: _Prepared) -> Iterator[dict[str, Any]]:
        """Runs in a pool thread: sample tokens and turn them into chunks."""
        import llama_cpp

        with self._active_lock:
            self._active += 1
        try:
            llm = m.llm
            vocab = llm._model.vocab
            llm.set_seed(prep.seed)
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            held, n, finish, first, cut = "", 0, "length", True, None
            # Logprobs of tokens whose text is held back travel with the chunk that sends it.
            scored: list[dict[str, Any]] | None = [] if prep.top_logprobs is not None else None
            for tok in llm.generate(prep.prompt, **prep.sampling):
                if tok in m.stop_ids or llama_cpp.llama_vocab_is_eog(vocab, tok):
                    finish = "stop"
                    break
                n += 1
                piece = llm.detokenize([tok])
                if scored is not None:
                    scored.append(_token_logprobs(llm, tok, piece, prep.top_logprobs or 0))
                held += decoder.decode(piece)
                text, held, cut = _cut_at_stop(held, prep.stops)
                if text:
                    yield _chunk(text, first, scored)
                    first, scored = False, [] if scored is not None else None
                if cut is not None:
                    finish = "stop"
                    break
                if n >= prep.max_tokens:
                    break
            if cut is None:
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
            yield {
                "choices": [],
                "usage": {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n},
            }
        finally:
            with self._active_lock:
                self._active -= 1


def _chunk(text: str, first: bool, scored: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    delta = {"role": "assistant", "content": text} if first else {"content": text}
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
    if scored is not None:
        choice["logprobs"] = {"content": scored, "refusal": None}
    return {"choices": [choice]}


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


def _prompt_tokens(m: LoadedLlama, messages: list[dict[str, Any]]) -> list[int]:
    prompt = m.formatter(messages=messages).prompt
    # The template writes its own BOS where the model wants one.
    return m.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)


def _num(req: dict[str, Any], key: str) -> float:
    value = req.get(key)
    return float(DEFAULTS[key] if value is None else value)


def _messages(req: dict[str, Any]) -> list[dict[str, Any]]:
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


def _check_tools(req: dict[str, Any]) -> None:
    choice = req.get("tool_choice")
    if req.get("tools") and (choice == "required" or isinstance(choice, dict)):
        err = InvalidRequest(
            "This on-device model cannot call tools; tool_choice must be 'auto' or 'none'.",
            param="tool_choice",
        )
        err.fallback_ok = True
        raise err


def _grammar(response_format: dict[str, Any] | None) -> Any:
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
