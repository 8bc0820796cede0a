"""What a local chat model file is, from the file itself: size, sha256, GGUF family, size, quantization.

Ollama's /api/tags, /api/show and /api/ps describe models this way. The sha256 comes from the
store's record (``.modelstore.json``) while the file still has the size and mtime recorded there;
otherwise it is hashed once per (size, mtime) and remembered for the life of the process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoosh_edge.backends.engines.gguf import read_gguf_metadata
from hoosh_edge.backends.modelstore.installed import InstallState, sha256_file

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
