"""GGUF metadata without reading the weights, and what a model's context will cost in memory."""

from __future__ import annotations

import mmap
import struct
from typing import Any

# GGUF value types -> struct format (8 = string, 9 = array are handled apart).
_GGUF_SCALARS = dict(zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), "BbHhIif?Qqd", strict=True))


def read_gguf_metadata(path: str) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file (arrays skipped), without reading the weights.

    A file that is not GGUF, or is cut or damaged, raises ``ValueError``.
    """
    try:
        return _read_metadata(path)
    except (struct.error, KeyError) as e:  # cut short, or a value type no GGUF has
        raise ValueError(f"{path}: damaged GGUF metadata ({type(e).__name__}: {e})") from None


def _read_metadata(path: str) -> dict[str, Any]:
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
