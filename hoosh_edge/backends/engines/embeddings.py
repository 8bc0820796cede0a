"""Sentence embeddings on the box: BERT-style sentence-transformers folders, and GGUF files.

A sentence-transformers folder (all-MiniLM-L6-v2 and kin) holds ``model.safetensors``,
``config.json`` and ``tokenizer.json``, and says how to pool in ``1_Pooling/config.json`` and
whether to normalise in ``modules.json``. The forward pass runs in onnxruntime on a graph built from the same weights
(``bert_onnx.py``), or in numpy: on a 2-core box onnxruntime was 4-8x faster (numpy's BLAS threads
suffer most when the cores are shared), see ``benchmarks/embeddings.py``. ``runtime = "auto"``
takes onnxruntime when it and ``onnx`` import, else numpy. A GGUF embedding model goes through
llama.cpp with ``embedding=True``.

Every method here blocks: callers run them in an inference thread (``backends/local_embed.py``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hoosh_edge.errors import ContextLengthExceeded, InvalidRequest

BATCH = 32  # texts per forward pass at most
# Padded tokens per forward pass at most: bounds the activations (the attention scores are
# batch x heads x seq x seq floats), so 2048 x 12 heads x 256 x 4 bytes = 24 MiB for MiniLM.
BATCH_TOKENS = 2048
ST_FILES = ("model.safetensors", "config.json", "tokenizer.json")


GGUF_N_CTX = 512  # the context a GGUF embedding model is loaded with: its longest input


def served_tokens(path: str | os.PathLike) -> int:
    """The longest input (in tokens) the model at ``path`` reads here, from its files alone."""
    p = Path(path)
    if not p.is_dir():
        return GGUF_N_CTX
    cfg = _json_or(p / "config.json", {})
    st = _json_or(p / "sentence_bert_config.json", {})
    return min(int(st.get("max_seq_length") or 512), int(cfg.get("max_position_embeddings", 512)))


def is_sentence_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sentence-transformers folder this engine can load."""
    p = Path(path)
    return p.is_dir() and all((p / f).is_file() for f in ST_FILES)


def estimate_bytes(path: str | os.PathLike) -> int:
    """Weights as loaded (onnxruntime: ~2.5x the file, its packed copies included; measured in
    ``benchmarks/embeddings.py``) plus one full batch's activations."""
    p = Path(path)
    weights = (p / "model.safetensors").stat().st_size if p.is_dir() else p.stat().st_size
    seq = int(_json_or(p / "sentence_bert_config.json", {}).get("max_seq_length") or 512)
    # Scores (two copies: before and after softmax) and the feed-forward layer, float32.
    return int(weights * 2.5) + BATCH_TOKENS * (12 * seq * 4 * 2 + 1536 * 4 * 3)


class Embedder:
    """What both kinds of model offer: ``embed(items, truncate)`` -> (vectors, token counts)."""

    dim: int
    max_tokens: int
    vocab_size: int

    def embed(self, items: Sequence[str | Sequence[int]], *,
              truncate: bool = True) -> tuple[np.ndarray, list[int]]:  # fmt: skip
        raise NotImplementedError

    def close(self) -> None:
        pass


def _fit(ids: list[int], limit: int, truncate: bool, index: int, end: int | None) -> list[int]:
    """``ids`` within ``limit`` (cut, keeping the ``end`` token last), or a 400 if not allowed."""
    if len(ids) <= limit:
        return ids
    if not truncate:
        raise ContextLengthExceeded(
            f"Input {index} is {len(ids)} tokens; this model reads at most {limit}. Send shorter "
            "text, or allow truncation (local.embeddings.truncate, or truncate: true on Ollama).",
            param="input",
        )
    return ids[: limit - 1] + [end] if end is not None else ids[:limit]


def _gelu(x: np.ndarray) -> np.ndarray:
    # BERT's exact (erf) GELU, not the tanh form; numpy has no erf ufunc (and scipy is no
    # dependency), so erf comes from a rational approximation within float32 rounding.
    return 0.5 * x * (1.0 + _erf(x * np.float32(1 / math.sqrt(2))))


def _erf(x: np.ndarray) -> np.ndarray:
    """erf from Numerical Recipes' Chebyshev erfc: |error| < 1.2e-7 everywhere."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))  # fmt: skip
    r = 1.0 - t * np.exp(poly)
    return np.where(x >= 0, r, -r).astype(np.float32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


class SentenceModel(Embedder):
    """A BERT encoder, its tokenizer and its pooling, from a sentence-transformers folder."""

    def __init__(self, folder: str | os.PathLike, n_threads: int = 0,
                 runtime: str = "auto") -> None:  # fmt: skip
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        root = Path(folder)
        cfg = json.loads((root / "config.json").read_text())
        if cfg.get("model_type", "bert") != "bert":
            raise InvalidRequest(f"{root}: only BERT-style encoders are supported, "
                                 f"not {cfg.get('model_type')!r}")  # fmt: skip
        self.n_layers = int(cfg["num_hidden_layers"])
        self.n_heads = int(cfg["num_attention_heads"])
        self.dim = int(cfg["hidden_size"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.vocab_size = int(cfg["vocab_size"])
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise InvalidRequest(f"{root}: activation {cfg.get('hidden_act')!r} is not supported")
        self.max_tokens = served_tokens(root)
        pooling = _json_or(root / "1_Pooling" / "config.json", {"pooling_mode_mean_tokens": True})
        self.pooling = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        modules = _json_or(root / "modules.json", [])
        self.normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()  # the limit is checked here, to say when it cuts
        w = load_file(str(root / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in w.items()
                  if v.dtype != np.int64}  # fmt: skip
        # Fused q|k|v: one matmul instead of three per layer.
        for i in range(self.n_layers):
            a = f"encoder.layer.{i}.attention.self."
            self.w[f"{a}qkv.weight"] = np.concatenate(
                [self.w[f"{a}{n}.weight"].T for n in ("query", "key", "value")], axis=1
            )
            self.w[f"{a}qkv.bias"] = np.concatenate(
                [self.w[f"{a}{n}.bias"] for n in ("query", "key", "value")]
            )
            for n in ("attention.output.dense", "intermediate.dense", "output.dense"):
                key = f"encoder.layer.{i}.{n}.weight"
                self.w[key + ".T"] = np.ascontiguousarray(self.w[key].T)
        self.runtime = _runtime(runtime)
        self.onnx = None
        if self.runtime == "onnxruntime":
            from hoosh_edge.backends.engines.bert_onnx import OnnxEncoder, build_graph

            graph = build_graph(self.w, self.n_layers, self.n_heads, self.dim, self.eps)
            self.onnx = OnnxEncoder(graph, n_threads)
            self.w = {}  # onnxruntime holds its own copy: the numpy one would double the RAM
        self.cls_id = self.tokenizer.token_to_id("[CLS]")
        self.sep_id = self.tokenizer.token_to_id("[SEP]")

    def token_ids(self, text: str) -> list[int]:
        """The ids the model reads for ``text``, [CLS] and [SEP] included."""
        return self.tokenizer.encode(text).ids

    def _ids(self, item: str | Sequence[int], truncate: bool, index: int) -> list[int]:
        if isinstance(item, str):
            return _fit(self.token_ids(item), self.max_tokens, truncate, index, self.sep_id)
        ids = list(item)
        for t in ids:
            if not 0 <= t < self.vocab_size:
                raise InvalidRequest(f"Input {index} holds token {t}, outside this model's "
                                     f"vocabulary (0..{self.vocab_size - 1}).", param="input")  # fmt: skip
        # Token arrays are this model's own ids; the special tokens are added as for text.
        return _fit([self.cls_id, *ids, self.sep_id], self.max_tokens, truncate, index, self.sep_id)

    def embed(self, items: Sequence[str | Sequence[int]], *,
              truncate: bool = True) -> tuple[np.ndarray, list[int]]:  # fmt: skip
        """Unit vectors (as the model's modules say) and the tokens each input took."""
        seqs = [self._ids(item, truncate, i) for i, item in enumerate(items)]
        out = np.empty((len(seqs), self.dim), dtype=np.float32)
        # Sorted by length so a batch pads little; cut where BATCH or BATCH_TOKENS would be passed.
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        start = 0
        while start < len(order):
            end = start + 1
            while (end < len(order) and end - start < BATCH
                   and (end - start + 1) * len(seqs[order[end]]) <= BATCH_TOKENS):  # fmt: skip
                end += 1
            idx = order[start:end]
            out[idx] = self.forward([seqs[i] for i in idx])
            start = end
        return out, [len(s) for s in seqs]

    def forward(self, seqs: list[list[int]]) -> np.ndarray:
        """Pooled (and normalised) vectors of one padded batch."""
        n = max(len(s) for s in seqs)
        ids = np.zeros((len(seqs), n), dtype=np.int64)
        mask = np.zeros((len(seqs), n), dtype=np.float32)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1.0
        x = self.onnx.hidden(ids, mask) if self.onnx is not None else self.hidden(ids, mask)
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        if self.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)

    def hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The last hidden states of a padded batch, in numpy."""
        w, heads, (b, n) = self.w, self.n_heads, ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])  # fmt: skip
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"],
                        self.eps)  # fmt: skip
        d = self.dim
        hd = d // heads
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1 / math.sqrt(hd))
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."
            qkv = x @ w[p + "attention.self.qkv.weight"] + w[p + "attention.self.qkv.bias"]
            qkv = qkv.reshape(b, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            s = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
            a = (
                ctx @ w[p + "attention.output.dense.weight.T"]
                + w[p + "attention.output.dense.bias"]
            )
            x = _layer_norm(a + x, w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"], self.eps)  # fmt: skip
            h = _gelu(x @ w[p + "intermediate.dense.weight.T"] + w[p + "intermediate.dense.bias"])
            h = h @ w[p + "output.dense.weight.T"] + w[p + "output.dense.bias"]
            x = _layer_norm(h + x, w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"], self.eps)  # fmt: skip
        return x


class GGUFEmbedder(Embedder):
    """A GGUF embedding model through llama.cpp (``embedding=True``, mean pooling, L2-normalised)."""

    def __init__(self, path: str | os.PathLike, n_threads: int = 0,
                 n_ctx: int = GGUF_N_CTX) -> None:  # fmt: skip
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(path), embedding=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
            n_threads=n_threads or None, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            verbose=False)  # fmt: skip
        self.max_tokens = min(n_ctx, self.llm.n_ctx())
        self.dim = self.llm.n_embd()
        self.vocab_size = self.llm.n_vocab()

    def embed(self, items: Sequence[str | Sequence[int]], *,
              truncate: bool = True) -> tuple[np.ndarray, list[int]]:  # fmt: skip
        texts, counts = [], []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise InvalidRequest("Token arrays are not supported by GGUF embedding models; "
                                     "send text.", param="input")  # fmt: skip
            ids = self.llm.tokenize(item.encode(), add_bos=True, special=False)
            counts.append(len(_fit(ids, self.max_tokens, truncate, i, None)))
            texts.append(item)
        vecs = self.llm.embed(texts, normalize=True, truncate=True)
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), self.dim), counts

    def close(self) -> None:
        self.llm.close()


def load_embedder(path: str | os.PathLike, n_threads: int = 0,
                  runtime: str = "auto") -> Embedder:  # fmt: skip
    """A GGUF file through llama.cpp, else a sentence-transformers folder."""
    if str(path).endswith(".gguf"):
        return GGUFEmbedder(path, n_threads)
    if not is_sentence_folder(path):
        raise InvalidRequest(f"{path} is neither a .gguf file nor a folder with "
                             f"{', '.join(ST_FILES)}")  # fmt: skip
    return SentenceModel(path, n_threads, runtime)


RUNTIMES = ("auto", "onnxruntime", "numpy")


def _runtime(choice: str) -> str:
    """The forward pass to use: onnxruntime when asked or (auto) when it and onnx import."""
    if choice not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {choice!r}")
    if choice != "auto":
        return choice
    import importlib.util

    found = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))
    return "onnxruntime" if found else "numpy"


def _json_or(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default
