"""An independent reference forward pass of a BERT sentence encoder, for the embeddings tests.

Plain numpy in float64, one text at a time (no padding, no mask, no batching), the weights read
straight from the safetensors bytes (no ``safetensors`` package), GELU through ``math.erf``, the
per-head attention written as loops: nothing shared with the engine but the tokenizer's ids.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "all-minilm-l6-v2"

_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}
_erf = np.vectorize(math.erf)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file: an 8-byte header length, a JSON header, raw bytes."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        buf = raw[8 + n + start : 8 + n + end]
        out[name] = np.frombuffer(buf, dtype=_DTYPES[meta["dtype"]]).reshape(meta["shape"])
    return out


class Reference:
    """all-MiniLM-L6-v2 the slow way: token ids in, a unit vector out."""

    def __init__(self, folder: Path = MODEL_DIR) -> None:
        self.cfg = json.loads((folder / "config.json").read_text())
        self.w = {k: v.astype(np.float64) for k, v in read_safetensors(
            folder / "model.safetensors").items()}  # fmt: skip

    def _ln(self, x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        sd = np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + self.cfg["layer_norm_eps"])
        return (x - mu) / sd * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def vector(self, ids: list[int]) -> np.ndarray:
        w, n = self.w, len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][np.arange(n)]
             + w["embeddings.token_type_embeddings.weight"][np.zeros(n, dtype=int)])  # fmt: skip
        x = self._ln(x, "embeddings.LayerNorm")
        heads = self.cfg["num_attention_heads"]
        hd = self.cfg["hidden_size"] // heads
        for layer in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{layer}."
            q = self._dense(x, p + "attention.self.query")
            k = self._dense(x, p + "attention.self.key")
            v = self._dense(x, p + "attention.self.value")
            ctx = np.zeros_like(x)
            for h in range(heads):
                cols = slice(h * hd, (h + 1) * hd)
                scores = q[:, cols] @ k[:, cols].T / math.sqrt(hd)
                scores = np.exp(scores - scores.max(1, keepdims=True))
                ctx[:, cols] = (scores / scores.sum(1, keepdims=True)) @ v[:, cols]
            x = self._ln(self._dense(ctx, p + "attention.output.dense") + x,
                         p + "attention.output.LayerNorm")  # fmt: skip
            h = self._dense(x, p + "intermediate.dense")
            h = 0.5 * h * (1 + _erf(h / math.sqrt(2)))
            x = self._ln(self._dense(h, p + "output.dense") + x, p + "output.LayerNorm")
        pooled = x.mean(0)
        return pooled / np.linalg.norm(pooled)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
