"""A tiny synthetic Piper voice for fast tests: an opset-13 ONNX graph plus its ``.onnx.json``.

The graph has Piper's exact interface (``input`` int64 [1,N], ``input_lengths`` int64 [1],
``scales`` float [3], optional ``sid`` int64 [1] -> ``output`` float [1,1,1,samples]). It emits a
sine tone of ``input_lengths * hop * length_scale`` samples, so tests can check that ids, lengths
and scales really reach the model. Its amplitude follows the mean phoneme id (and the speaker id),
so different inputs give different audio.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HOP = 256  # samples per phoneme id, like a Piper "medium" voice's hop length
SAMPLE_RATE = 22050

# What espeak-ng emits for simple English, plus Piper's specials. "ʒ" (as in "measure") is left out
# on purpose so tests can see an unknown phoneme being skipped.
_SYMBOLS = (
    ["_", "^", "$", " ", "!", "'", ",", "-", ".", ":", ";", "?"]
    + list("abcdefghijklmnopqrstuvwxyz")
    + list("æçðøħŋœǀǁǂǃɐɑɒɓɔɕɖɗɘəɚɛɜɞɟɠɡɢɣɤɥɦɧɨɪɫɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑ")
    + list("ʔʕʘʙʛʜʝʟʡʢʲˈˌːˑ˞βθχ")
    + ["ᵻ", "ⱱ", "̃", "̩"]
)
PHONEME_ID_MAP = {sym: [i] for i, sym in enumerate(_SYMBOLS)}


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def build_graph(
    *, hop: int = HOP, sample_rate: int = SAMPLE_RATE, num_speakers: int = 1
) -> onnx.ModelProto:
    """The ONNX model: a tone whose length is ``input_lengths * hop * length_scale`` samples."""
    f32 = np.float32
    nodes = [
        _const("hop", np.array(hop, dtype=f32)),
        _const("zero", np.array(0.0, dtype=f32)),
        _const("one", np.array(1.0, dtype=f32)),
        _const("idx1", np.array(1, dtype=np.int64)),
        _const("omega", np.array(2 * np.pi * 220.0 / sample_rate, dtype=f32)),
        _const("base", np.array(0.1, dtype=f32)),
        _const("spread", np.array(0.01, dtype=f32)),
        _const("shape4", np.array([1, 1, 1, -1], dtype=np.int64)),
        # samples = floor(sum(input_lengths) * hop * length_scale)
        helper.make_node("Cast", ["input_lengths"], ["len_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["len_f"], ["n"], keepdims=0),
        helper.make_node("Gather", ["scales", "idx1"], ["length_scale"], axis=0),
        helper.make_node("Mul", ["n", "hop"], ["n_hop"]),
        helper.make_node("Mul", ["n_hop", "length_scale"], ["n_samples"]),
        helper.make_node("Floor", ["n_samples"], ["limit"]),
        helper.make_node("Range", ["zero", "limit", "one"], ["t"]),
        helper.make_node("Mul", ["t", "omega"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["tone"]),
        # amplitude = 0.1 + 0.01 * mean(input ids) [* (1 + sid)]
        helper.make_node("Cast", ["input"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["ids_f"], ["mean_id"], keepdims=0),
        helper.make_node("Mul", ["mean_id", "spread"], ["amp_extra"]),
        helper.make_node("Add", ["amp_extra", "base"], ["amp0"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
        helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
    ]
    amp = "amp0"
    if num_speakers > 1:
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, [1]))
        nodes += [
            helper.make_node("Cast", ["sid"], ["sid_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["sid_f"], ["sid_s"], keepdims=0),
            helper.make_node("Add", ["sid_s", "one"], ["sid_gain"]),
            helper.make_node("Mul", ["amp0", "sid_gain"], ["amp_sid"]),
        ]
        amp = "amp_sid"
    nodes += [
        helper.make_node("Mul", ["tone", amp], ["audio"]),
        helper.make_node("Reshape", ["audio", "shape4"], ["output"]),
    ]
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 1, "samples"])
    graph = helper.make_graph(nodes, "tiny_piper", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    onnx.checker.check_model(model)
    return model


def voice_config(*, sample_rate: int = SAMPLE_RATE, num_speakers: int = 1) -> dict:
    """An ``.onnx.json`` shaped like a real Piper voice's."""
    return {
        "audio": {"sample_rate": sample_rate, "quality": "x_low"},
        "espeak": {"voice": "en-us"},
        "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
        "phoneme_type": "espeak",
        "phoneme_map": {},
        "phoneme_id_map": PHONEME_ID_MAP,
        "num_symbols": len(PHONEME_ID_MAP),
        "num_speakers": num_speakers,
        "speaker_id_map": {f"speaker{i}": i for i in range(num_speakers)}
        if num_speakers > 1
        else {},
        "piper_version": "1.0.0",
        "language": {"code": "en_US", "family": "en", "region": "US"},
        "dataset": "tiny_synthetic",
    }


def make_voice(
    directory: str,
    *,
    name: str = "tiny",
    hop: int = HOP,
    sample_rate: int = SAMPLE_RATE,
    num_speakers: int = 1,
) -> str:
    """Write ``<name>.onnx`` and ``<name>.onnx.json`` into ``directory``; return the model path."""
    path = os.path.join(directory, f"{name}.onnx")
    onnx.save(build_graph(hop=hop, sample_rate=sample_rate, num_speakers=num_speakers), path)
    with open(path + ".json", "w", encoding="utf-8") as f:
        json.dump(
            voice_config(sample_rate=sample_rate, num_speakers=num_speakers), f, ensure_ascii=False
        )
    return path
