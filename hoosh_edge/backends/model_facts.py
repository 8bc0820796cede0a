"""What a local model is, from its files: size, sha256, family, parameter size, quantization.

Ollama's /api/tags, /api/show and /api/ps describe models this way: chat models (GGUF files) and
embedding models (a GGUF file, or a sentence-transformers folder, whose ``config.json`` and
safetensors header stand in for GGUF metadata). The sha256 comes from the store's record
(``.modelstore.json``) while the file or folder still has the size and mtime recorded there;
otherwise it is hashed once per (size, mtime) and remembered for the life of the process.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoosh_edge.backends.engines.embeddings import served_tokens
from hoosh_edge.backends.engines.gguf import read_gguf_metadata
from hoosh_edge.backends.modelstore.installed import InstallState, sha256_file
from hoosh_edge.backends.modelstore.tree import tree_sha256, tree_stat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFacts:
    """One local GGUF model as its file describes it."""

    path: Path
    size: int
    modified: float  # the file's mtime, seconds since the epoch
    sha256: str
    architecture: str
    parameter_size: str  # the GGUF's size label, e.g. "135M" ("" when it has none)
    quantization: str  # e.g. "Q4_1" ("" when unknown)
    context_length: int  # what the model was trained for (0 when the file does not say)
    chat_template: str = ""
    license: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)  # scalar GGUF keys
    format: str = "gguf"  # or "safetensors" (a sentence-transformers folder)


_CACHE: dict[tuple[str, int, int], ModelFacts] = {}


def _quantization(file_type: Any, path: Path) -> str:
    """The name of llama.cpp's ``general.file_type`` (its own enum), else the file name's hint."""
    try:
        import llama_cpp

        names = {v: k.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
                 for k, v in vars(llama_cpp).items()
                 if k.startswith("LLAMA_FTYPE_") and isinstance(v, int)}  # fmt: skip
    except ImportError:
        names = {}
    if isinstance(file_type, int) and file_type in names:
        return names[file_type]
    for part in reversed(path.stem.replace("-", ".").split(".")):
        if part[:1] in ("Q", "F", "I") and any(c.isdigit() for c in part):
            return part.upper()
    return ""


def _sha256(path: Path, st: os.stat_result) -> str:
    entry = InstallState(path.parent).fresh(path.name, st)
    if entry and entry.get("sha256"):
        return str(entry["sha256"])
    log.info("hashing %s for its digest (%d MiB)", path.name, st.st_size >> 20)
    return sha256_file(path)


def model_facts(path: str | Path) -> ModelFacts:
    """The facts of the GGUF file at ``path`` (blocking: it may hash the whole file once)."""
    path = Path(path)
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    known = _CACHE.get(key)
    if known is not None:
        return known
    meta = read_gguf_metadata(str(path))
    arch = str(meta.get("general.architecture") or "llama")
    scalars = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))
               and not k.startswith("tokenizer.")}  # fmt: skip
    facts = ModelFacts(
        path=path,
        size=st.st_size,
        modified=st.st_mtime,
        sha256=_sha256(path, st),
        architecture=arch,
        parameter_size=str(meta.get("general.size_label") or ""),
        quantization=_quantization(meta.get("general.file_type"), path),
        context_length=int(meta.get(f"{arch}.context_length") or 0),
        chat_template=str(meta.get("tokenizer.chat_template") or ""),
        license=str(meta.get("general.license") or ""),
        metadata=scalars,
    )
    _CACHE[key] = facts
    return facts


def embedding_facts(path: str | Path) -> ModelFacts:
    """The facts of an embedding model: a GGUF file, or a sentence-transformers folder (blocking).

    ``<arch>.context_length`` in the metadata is the longest input this box reads
    (``served_tokens``), ``<arch>.embedding_length`` the vector size.
    """
    path = Path(path)
    facts = _folder_facts(path) if path.is_dir() else model_facts(path)
    arch = facts.architecture
    meta = {**facts.metadata, f"{arch}.context_length": served_tokens(path)}
    return ModelFacts(**{**vars(facts), "metadata": meta})


def _folder_facts(path: Path) -> ModelFacts:
    st = tree_stat(path, follow_links=True)
    key = (str(path), st.st_size, st.st_mtime_ns)
    known = _CACHE.get(key)
    if known is not None:
        return known
    cfg = _json(path / "config.json")
    arch = str(cfg.get("model_type") or "bert")
    params, dtype = _safetensors_params(path / "model.safetensors")
    meta: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": params,
                            f"{arch}.embedding_length": cfg.get("hidden_size"),
                            f"{arch}.block_count": cfg.get("num_hidden_layers"),
                            f"{arch}.attention.head_count": cfg.get("num_attention_heads"),
                            f"{arch}.feed_forward_length": cfg.get("intermediate_size"),
                            f"{arch}.vocab_size": cfg.get("vocab_size")}  # fmt: skip
    entry = InstallState(path.parent).fresh(path.name, st)  # type: ignore[arg-type]
    if entry and entry.get("sha256"):
        digest = str(entry["sha256"])
    else:
        log.info("hashing %s for its digest (%d MiB)", path.name, st.st_size >> 20)
        digest = tree_sha256(path, follow_links=True)
    facts = ModelFacts(
        path=path,
        size=st.st_size,
        modified=st.st_mtime_ns / 1e9,
        sha256=digest,
        architecture=arch,
        parameter_size=_size_label(params),
        quantization=dtype,
        context_length=int(cfg.get("max_position_embeddings") or 0),
        metadata={k: v for k, v in meta.items() if v is not None},
        format="safetensors",
    )
    _CACHE[key] = facts
    return facts


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _safetensors_params(path: Path) -> tuple[int, str]:
    """(parameter count, the dtype most of them have) from a safetensors header, without weights."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(min(n, 100 << 20)))
    except (OSError, ValueError, struct.error):
        return 0, ""
    counts: dict[str, int] = {}
    for name, t in header.items():
        if name == "__metadata__" or not isinstance(t, dict):
            continue
        count = 1
        for d in t.get("shape") or ():
            count *= int(d)
        counts[str(t.get("dtype", ""))] = counts.get(str(t.get("dtype", "")), 0) + count
    if not counts:
        return 0, ""
    return sum(counts.values()), max(counts, key=lambda k: counts[k])


def _size_label(params: int) -> str:
    """Ollama's way to say a parameter count: "23M", "1.5B" ("" when unknown)."""
    if params <= 0:
        return ""
    if params < 1_000_000_000:
        return f"{round(params / 1e6)}M"
    return f"{params / 1e9:.1f}".rstrip("0").rstrip(".") + "B"
