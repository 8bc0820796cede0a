"""The same BERT encoder as an ONNX graph for onnxruntime, built in memory from the safetensors.

``SentenceModel(runtime="onnxruntime")`` uses it in place of the numpy pass; pooling and
normalisation stay in numpy. Kept beside the numpy pass so the two can be measured against each
other on the box (``benchmarks/embeddings.py``); whichever is faster is the default.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

OPSET = 17  # LayerNormalization


def build_graph(w: dict[str, np.ndarray], n_layers: int, n_heads: int, dim: int,
                eps: float) -> bytes:  # fmt: skip
    """A serialized ONNX model: (input_ids, positions, mask_bias) -> last hidden states."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, order="C"), name))  # keeps 0-d
        return name

    def op(kind: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def linear(x: str, weight: str, bias: str, out: str) -> str:
        return op("Add", [op("MatMul", [x, weight], out + "_mm"), bias], out)

    def norm(x: str, prefix: str, out: str) -> str:
        return op("LayerNormalization", [x, const(prefix + ".w", w[prefix + ".weight"]),
                                         const(prefix + ".b", w[prefix + ".bias"])],
                  out, axis=-1, epsilon=eps)  # fmt: skip

    hd = dim // n_heads
    emb = op("Gather", [const("wemb", w["embeddings.word_embeddings.weight"]), "input_ids"], "e0")
    pos = op("Gather", [const("pemb", w["embeddings.position_embeddings.weight"]), "positions"],
             "e1")  # fmt: skip
    x = op("Add", [op("Add", [emb, pos], "e2"),
                   const("temb", w["embeddings.token_type_embeddings.weight"][0])], "e3")  # fmt: skip
    x = norm(x, "embeddings.LayerNorm", "h0")
    split_shape = const("split_shape", np.array([0, 0, 3, n_heads, hd], dtype=np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, dim], dtype=np.int64))
    scale = const("scale", np.array(1 / math.sqrt(hd), dtype=np.float32))
    half = const("half", np.array(0.5, dtype=np.float32))
    one = const("one", np.array(1.0, dtype=np.float32))
    rsqrt2 = const("rsqrt2", np.array(1 / math.sqrt(2), dtype=np.float32))
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        s = f"l{i}_"
        qkv = linear(x, const(s + "wqkv", w[p + "attention.self.qkv.weight"]),
                     const(s + "bqkv", w[p + "attention.self.qkv.bias"]), s + "qkv")  # fmt: skip
        qkv = op("Transpose", [op("Reshape", [qkv, split_shape], s + "qkv_r")], s + "qkv_t",
                 perm=[2, 0, 3, 1, 4])  # fmt: skip
        q, k, v = (op("Gather", [qkv, const(f"{s}i{j}", np.array(j, dtype=np.int64))],
                      f"{s}{n}", axis=0) for j, n in enumerate("qkv"))  # fmt: skip
        kt = op("Transpose", [k], s + "kt", perm=[0, 1, 3, 2])
        scores = op("Add", [op("Mul", [op("MatMul", [q, kt], s + "qk"), scale], s + "qks"),
                            "mask_bias"], s + "scores")  # fmt: skip
        probs = op("Softmax", [scores], s + "probs", axis=-1)
        ctx = op("Transpose", [op("MatMul", [probs, v], s + "ctx")], s + "ctx_t",
                 perm=[0, 2, 1, 3])  # fmt: skip
        ctx = op("Reshape", [ctx, merge_shape], s + "ctx_m")
        a = linear(ctx, const(s + "wo", w[p + "attention.output.dense.weight.T"]),
                   const(s + "bo", w[p + "attention.output.dense.bias"]), s + "attn")  # fmt: skip
        x = norm(op("Add", [a, x], s + "res1"), p + "attention.output.LayerNorm", s + "h1")
        h = linear(x, const(s + "wi", w[p + "intermediate.dense.weight.T"]),
                   const(s + "bi", w[p + "intermediate.dense.bias"]), s + "inter")  # fmt: skip
        erf = op("Erf", [op("Mul", [h, rsqrt2], s + "gx")], s + "erf")
        h = op("Mul", [op("Mul", [h, half], s + "gh"), op("Add", [erf, one], s + "g1")],
               s + "gelu")  # fmt: skip
        h = linear(h, const(s + "w2", w[p + "output.dense.weight.T"]),
                   const(s + "b2", w[p + "output.dense.bias"]), s + "out")  # fmt: skip
        x = norm(op("Add", [h, x], s + "res2"), p + "output.LayerNorm", f"h{i + 1}")
    nodes.append(helper.make_node("Identity", [x], ["hidden"]))
    graph = helper.make_graph(
        nodes, "bert", [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "n"]),
            helper.make_tensor_value_info("positions", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, ["b", 1, 1, "n"]),
        ], [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["b", "n", dim])],
        initializer=inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


class OnnxEncoder:
    """An onnxruntime session over ``build_graph``'s model: ids and mask -> hidden states."""

    def __init__(self, graph: bytes, n_threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if n_threads:
            opts.intra_op_num_threads = n_threads
        opts.inter_op_num_threads = 1
        # No arena: it keeps the largest batch's activations after the batch is done.
        opts.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])

    def hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        n = ids.shape[1]
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :].astype(np.float32)
        feeds = {"input_ids": ids, "positions": np.arange(n, dtype=np.int64), "mask_bias": bias}
        return self.session.run(["hidden"], feeds)[0]
