"""On-device embedding models in the model pool: one job per model, run in an inference thread.

Named ``local`` in the books, like the chat and speech engines. Models come from
``[local.embeddings.models]`` (a sentence-transformers folder or a ``.gguf`` file) or are found in
``models/`` (a folder holding ``model.safetensors``, ``config.json`` and ``tokenizer.json``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import gevent
import numpy as np

from hoosh_edge.backends.engines.pool import ModelPool, ModelSlot
from hoosh_edge.config import LocalEngineConfig
from hoosh_edge.threads import run_blocking


class LocalEmbeddings:
    """The router's on-device target for embeddings."""

    name = "local"
    is_local = True
    can_embed = True

    def __init__(self, pool: ModelPool, models: dict[str, str], cfg: LocalEngineConfig) -> None:
        self.pool = pool
        self.models = dict(models)
        self.truncate = cfg.truncate
        if self.models:
            from hoosh_edge.backends.engines.embeddings import estimate_bytes, load_embedder

            for mid, path in self.models.items():
                pool.register(ModelSlot(
                    key=f"embed:{mid}", kind="embed",
                    loader=lambda p=path: load_embedder(p, cfg.n_threads, cfg.runtime),
                    estimate_bytes=estimate_bytes(path),
                    keep_alive_s=cfg.keep_alive_s, max_queue=cfg.max_queue))  # fmt: skip

    def serves(self, model: str) -> bool:
        return model in self.models

    def model_ids(self) -> list[str]:
        return list(self.models)

    def dimensions(self, model: str) -> int:
        """The vector size of ``model`` (loads it if needed)."""
        return self.pool.slot(f"embed:{model}").ensure_loaded().dim

    def unload(self, model: str) -> bool:
        """Free ``model`` now if nobody is using it (Ollama's ``keep_alive: 0``)."""
        return self.pool.slot(f"embed:{model}").unload()

    def embed(self, model: str, items: Sequence[str | Sequence[int]], *, truncate: bool | None = None,
              wait_s: float | None = None) -> tuple[np.ndarray, list[int]]:  # fmt: skip
        """Vectors and token counts; the model stays taken until the native call has returned."""
        key = f"embed:{model}"
        cut = self.truncate if truncate is None else truncate

        def run(m: Any) -> tuple[bool, Any]:
            # Outcomes, not exceptions: gevent would print a traceback for a failed greenlet.
            try:
                # ~10 ms a text on a slow box is generous; past that plus stuck_job_s: stuck.
                return True, run_blocking(m.embed, items, truncate=cut, owner=key,
                                          expect_s=0.05 * len(items))  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - re-raised below
                return False, exc

        held = contextlib.ExitStack()
        m = held.enter_context(self.pool.slot(key).use(timeout=wait_s))
        job = gevent.spawn(run, m)
        try:
            ok, value = job.get()
        except BaseException:
            gevent.spawn(_release_after, job, held)
            raise
        held.close()
        if not ok:
            raise value
        return value


def _release_after(job: gevent.Greenlet, held: contextlib.ExitStack) -> None:
    """Give a model back once the native call in ``job`` has returned."""
    job.join()
    held.close()
