"""A tiny llama-architecture GGUF for fast engine tests.

The weights are random, so the text is noise; what the tests check is framing, counts, stop
handling, seeds, queueing and cancellation. Two choices keep those checks exact:

- Dimension 0 of every token embedding is a large constant, so after the final RMS norm the hidden
  state always points mostly along that axis. Output rows of the tokens we never want sampled
  (unk, ``<s>``, ``</s>``, and every byte outside printable ASCII) get a large negative weight there,
  so the model never ends a reply by itself and only ever writes printable ASCII. A run then lasts
  exactly ``max_tokens`` tokens unless a stop string cuts it.
- The vocabulary is byte-level (SentencePiece with byte fallback), so one token is one character.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_VOCAB = 3 + 256
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2  # grouped-query attention, as in real small models
N_FF = 128
N_LAYER = 2
N_CTX_TRAIN = 2048

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tokens() -> tuple[list[str], list[int], list[float]]:
    # gguf TokenType: NORMAL=1, UNKNOWN=2, CONTROL=3, BYTE=6
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    return tokens, types, scores


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def rnd(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    n_embd_kv = N_EMBD // N_HEAD * N_HEAD_KV
    embd = rnd(N_VOCAB, N_EMBD, std=1.0)
    embd[:, 0] = 10.0  # the constant axis described in the module docstring
    out = rnd(N_VOCAB, N_EMBD, std=1.0)
    out[:, 0] = 0.0
    printable = {3 + b for b in range(0x20, 0x7F)}
    for tok in range(N_VOCAB):
        if tok not in printable:
            out[tok, 0] = -100.0
    # numpy shapes are ggml's ne reversed: token_embd is ne=[n_embd, n_vocab].
    w = {
        "token_embd.weight": embd,
        "output_norm.weight": np.ones(N_EMBD, dtype=np.float32),
        "output.weight": out,
    }
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        w[p + "attn_q.weight"] = rnd(N_EMBD, N_EMBD)
        w[p + "attn_k.weight"] = rnd(n_embd_kv, N_EMBD)
        w[p + "attn_v.weight"] = rnd(n_embd_kv, N_EMBD)
        w[p + "attn_output.weight"] = rnd(N_EMBD, N_EMBD)
        w[p + "ffn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        w[p + "ffn_gate.weight"] = rnd(N_FF, N_EMBD)
        w[p + "ffn_up.weight"] = rnd(N_FF, N_EMBD)
        w[p + "ffn_down.weight"] = rnd(N_EMBD, N_FF)
    return w


def make_tiny_gguf(
    path: str | Path,
    *,
    seed: int = 0,
    name: str = "tiny-test",
    n_ctx_train: int = N_CTX_TRAIN,
    chat_template: str = CHAT_TEMPLATE,
) -> Path:
    """Write a few-hundred-KB llama GGUF with a byte vocabulary and a chat template to ``path``."""
    import gguf  # test-only dependency

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all float32
    tokens, types, scores = _tokens()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(chat_template)
    for tname, arr in _weights(seed).items():
        writer.add_tensor(tname, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
