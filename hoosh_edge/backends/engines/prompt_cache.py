"""Prompt-state reuse for llama.cpp: restore the saved state with the longest shared prefix.

llama-cpp-python keeps only the sequence it evaluated last. Conversations that take turns, or a
restart, would make it evaluate every prompt from the start. Here, before a generation, the saved
state sharing the most leading tokens with the prompt goes back into the context (unless the live
context already shares more); ``Llama.generate`` then evaluates only the rest. After a
generation, the context's state (sequence 0 of the KV cache, ``llama_state_seq_get_data``) is
captured and filed in a ``StateStore`` (the books' ``PromptStateStore``).

States are filed under a *space*: the model file's sha256 plus every load parameter that shapes
the state (context size, KV cache types, rope settings, the llama.cpp build). Until the file's
sha256 is known (read from ``models/.modelstore.json`` when it recorded this file, else hashed
once in a background thread) states are kept in RAM only.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

# Restoring costs a copy of the state; below this many shared tokens, evaluating is as quick.
MIN_REUSE = 32
# Load parameters that shape a context's state, read from llama_context_params.
STATE_PARAMS = ("n_ctx", "type_k", "type_v", "rope_scaling_type", "rope_freq_base",
                "rope_freq_scale", "yarn_ext_factor", "yarn_orig_ctx", "flash_attn_type",
                "swa_full")  # fmt: skip


class StateStore(Protocol):
    """Where states are filed (``books.prompt_states.PromptStateStore``)."""

    def lookup(self, space: str, tokens: Sequence[int] | np.ndarray) -> tuple[int, Any]: ...
    def load(self, entry: Any) -> bytearray | None: ...
    def put(self, space: str, tokens: Sequence[int] | np.ndarray, blob: bytearray, *,
            persist: bool = True) -> Any: ...  # fmt: skip
    def drop(self, entry: Any) -> None: ...


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


class ModelDigest:
    """A model file's sha256: recorded by the model store, or hashed once in the background."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.value: str | None = self._recorded()
        if self.value is None:
            threading.Thread(target=self._hash, name="model-sha256", daemon=True).start()

    def _recorded(self) -> str | None:
        from hoosh_edge.backends.modelstore.installed import InstallState

        try:
            entry = InstallState(self.path.parent).fresh(self.path.name, self.path.stat())
        except OSError:
            return None
        return entry.get("sha256") if entry else None

    def _hash(self) -> None:
        from hoosh_edge.backends.modelstore.installed import InstallState, sha256_file

        try:
            digest = sha256_file(self.path)
        except OSError as e:
            log.warning("prompt cache: cannot read %s to hash it (%s); states stay in RAM",
                        self.path, e)  # fmt: skip
            return
        self.value = digest
        try:  # the model store's (size, mtime) cache spares the next start the hashing
            state = InstallState(self.path.parent)
            state.put(self.path, digest)
            state.save()
        except OSError:
            pass  # a read-only models folder: hashed again next time


class PromptStates:
    """Restore and keep the prompt states of one loaded model."""

    def __init__(self, store: StateStore, llm: Any, path: str, digest: ModelDigest) -> None:
        import llama_cpp

        self.store = store
        self.digest = digest
        params = llm.context_params
        shape = {name: _plain(getattr(params, name)) for name in STATE_PARAMS
                 if hasattr(params, name)}  # fmt: skip
        shape["llama_cpp"] = llama_cpp.__version__
        self._shape = json.dumps(shape, sort_keys=True)
        self._unhashed = f"unhashed:{Path(path).resolve()}|{self._shape}"

    def space(self) -> tuple[str, bool]:
        """This model's space, and whether its states may go to disk (its sha256 is known)."""
        if self.digest.value is None:
            return self._unhashed, False
        return f"{self.digest.value}|{self._shape}", True

    def restore(self, llm: Any, prompt: Sequence[int]) -> int:
        """Before a generation: bring back the best saved state; the prompt tokens it will reuse."""
        want = np.asarray(prompt, dtype=np.int32)
        live = common_prefix(np.asarray(llm.input_ids[: llm.n_tokens], dtype=np.int32), want)
        space, _ = self.space()
        n, entry = self.store.lookup(space, want)
        if entry is not None and n > live and n >= MIN_REUSE:
            blob = self.store.load(entry)
            if blob is not None and _set_state(llm, entry.tokens, blob):
                live = n
            else:
                self.store.drop(entry)
        return _reusable(live, len(want))

    def keep(self, llm: Any) -> None:
        """After a generation: file the context's state for the prompts that follow."""
        n_tokens = int(llm.n_tokens)
        if n_tokens < MIN_REUSE:
            return
        try:
            blob = _get_state(llm)
        except Exception:  # noqa: BLE001 - a failed capture costs reuse, never the answer
            log.exception("prompt cache: capturing the state failed")
            return
        if blob:
            space, persist = self.space()
            tokens = np.array(llm.input_ids[:n_tokens], dtype=np.int32)
            self.store.put(space, tokens, blob, persist=persist)


def live_reuse(llm: Any, prompt: Sequence[int]) -> int:
    """The prompt tokens ``Llama.generate`` will take from the live context as it stands."""
    want = np.asarray(prompt, dtype=np.int32)
    live = common_prefix(np.asarray(llm.input_ids[: llm.n_tokens], dtype=np.int32), want)
    return _reusable(live, len(want))


def _reusable(shared: int, n_prompt: int) -> int:
    # Llama.generate evaluates the last prompt token again when the whole prompt matched.
    return max(0, min(shared, n_prompt - 1))


def _get_state(llm: Any) -> bytearray:
    import llama_cpp

    ctx = llm._ctx.ctx
    size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
    blob = bytearray(size)
    view = (ctypes.c_uint8 * size).from_buffer(blob)
    n = int(llama_cpp.llama_state_seq_get_data(ctx, view, size, 0))
    del view  # the bytearray can be resized once no ctypes view holds it
    if n <= 0:
        return bytearray()
    del blob[n:]
    return blob


def _set_state(llm: Any, tokens: np.ndarray, blob: bytearray) -> bool:
    """Replace the context with a saved state; on failure the context is left empty."""
    import llama_cpp

    ctx = llm._ctx.ctx
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    view = (ctypes.c_uint8 * len(blob)).from_buffer(blob)
    read = int(llama_cpp.llama_state_seq_set_data(ctx, view, len(blob), 0))
    del view
    n = len(tokens)
    if read != len(blob) or n > llm.n_ctx():
        log.warning("prompt cache: a saved state did not load (%d of %d bytes); dropped",
                    read, len(blob))  # fmt: skip
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.n_tokens = 0
        return False
    llm.input_ids[:n] = tokens
    llm.n_tokens = n
    llm._requires_eval = True  # sampling needs fresh logits: generate evaluates one token again
    return True


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
