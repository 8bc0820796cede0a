"""The embeddings engine against an independent reference pass of the same weights, both runtimes;
truncation or a clear refusal at the model's limit; token arrays; GGUF through llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest

from hoosh_edge.backends.engines.embeddings import SentenceModel, load_embedder
from hoosh_edge.errors import ContextLengthExceeded, InvalidRequest
from tests.conftest import require, require_module
from tests.embed_reference import MODEL_DIR, Reference, cosine

require(MODEL_DIR.is_dir(), "all-minilm-l6-v2 is not in models/ (scripts/setup --dev pulls it)")
tokenizers = require_module("tokenizers", "the tokenizers package is not installed")

SHORT = "Hi"
LONG = " ".join(["The river keeps running past the old mill, season after season."] * 40)
NON_ASCII = "Grüße aus München — 東京は今日も晴れ、café naïve Ελληνικά 🙂"
BATCH = [f"Sentence {i}: " + "a few more words " * (i % 7) for i in range(40)] + [NON_ASCII, SHORT]


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference()


@pytest.fixture(scope="module")
def ref_ids():
    tok = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    sep = tok.token_to_id("[SEP]")

    def ids(text: str) -> list[int]:
        out = tok.encode(text).ids
        return out if len(out) <= 256 else out[:255] + [sep]  # max_seq_length of the model

    return ids


@pytest.fixture(scope="module", params=["onnxruntime", "numpy"])
def model(request) -> SentenceModel:
    if request.param == "onnxruntime":
        require_module("onnx", "onnx is not installed (the onnxruntime graph is built with it)")
    m = load_embedder(MODEL_DIR, runtime=request.param)
    assert isinstance(m, SentenceModel) and m.runtime == request.param
    return m


def test_short_long_and_non_ascii_match_the_reference(model, reference, ref_ids):
    vecs, counts = model.embed([SHORT, LONG, NON_ASCII])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert counts[0] == 3 and counts[1] == 256  # [CLS] hi [SEP]; the long one cut at the limit
    for vec, text in zip(vecs, [SHORT, LONG, NON_ASCII], strict=True):
        assert cosine(vec, reference.vector(ref_ids(text))) >= 0.999


def test_batched_inputs_match_one_at_a_time(model, reference, ref_ids):
    """42 inputs of mixed lengths: two batches, sorted and padded, still in the asked order."""
    vecs, counts = model.embed(BATCH)
    assert vecs.shape == (len(BATCH), 384)
    for vec, text, n in zip(vecs, BATCH, counts, strict=True):
        ids = ref_ids(text)
        assert n == len(ids)
        assert cosine(vec, reference.vector(ids)) >= 0.999
    # Padding never leaks: the same text alone gives the same vector as in the batch.
    alone, _ = model.embed([BATCH[3]])
    assert cosine(alone[0], vecs[3]) >= 0.99999


def test_meaning_shows_in_the_vectors(model):
    vecs, _ = model.embed(["A cat sits on the mat.", "A kitten is sitting on a rug.",
                           "Quarterly revenue grew by four percent."])  # fmt: skip
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3


def test_past_the_limit_is_cut_or_refused(model):
    with pytest.raises(ContextLengthExceeded) as e:
        model.embed([SHORT, LONG], truncate=False)
    assert "Input 1" in e.value.message and "256" in e.value.message
    assert e.value.status == 400 and e.value.code == "context_length_exceeded"
    alone, counts = model.embed([LONG], truncate=True)
    assert counts == [256]
    # 2048 padded tokens a pass at most: ten long inputs take two passes, same vectors.
    many, counts = model.embed([LONG] * 10 + [SHORT])
    assert counts == [256] * 10 + [3]
    assert all(cosine(v, alone[0]) >= 0.99999 for v in many[:10])


def test_token_arrays_are_the_models_own_ids(model, ref_ids):
    ids = ref_ids("token arrays work too")
    by_text, _ = model.embed(["token arrays work too"])
    by_ids, counts = model.embed([ids[1:-1]])  # without [CLS]/[SEP]: the engine adds them
    assert counts == [len(ids)]
    assert cosine(by_text[0], by_ids[0]) >= 0.99999
    with pytest.raises(InvalidRequest, match="outside this model's vocabulary"):
        model.embed([[5, 10**6]])
    with pytest.raises(InvalidRequest, match="outside"):
        model.embed([[-1]])


def test_gguf_embeddings_through_llama_cpp(tmp_path):
    """A GGUF file goes to llama.cpp with embedding=True: one unit vector per input, in order."""
    require_module("llama_cpp", "llama-cpp-python is not installed")
    from tests.synth_gguf import N_EMBD, make_tiny_gguf

    path = make_tiny_gguf(tmp_path / "tiny-embed.gguf")
    m = load_embedder(path)
    try:
        vecs, counts = m.embed(["abc", "a longer text", "abc"])
        assert vecs.shape == (3, N_EMBD)
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
        assert np.allclose(vecs[0], vecs[2], atol=1e-5)  # deterministic
        # A byte vocabulary: one token a UTF-8 byte, spaces written as SentencePiece's 3-byte "▁".
        assert counts == [3, len("a longer text".replace(" ", "\u2581").encode()), 3]
        with pytest.raises(ContextLengthExceeded):
            m.embed(["x" * 2000], truncate=False)
        with pytest.raises(InvalidRequest, match="Token arrays"):
            m.embed([[1, 2, 3]])
    finally:
        m.close()


def test_models_dir_folders_are_found_and_listed(tmp_path):
    """A folder with the three files in models/ is an embedding model; a folder without, not."""
    from hoosh_edge.backends.modelstore import discover_local_models
    from hoosh_edge.backends.modelstore.discovery import list_models
    from hoosh_edge.backends.modelstore.manifest import Manifest

    (tmp_path / "my-encoder").symlink_to(MODEL_DIR, target_is_directory=True)
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "config.json").write_text("{}")
    found = discover_local_models(tmp_path, Manifest({}))
    assert found.embed == {"my-encoder": tmp_path / "my-encoder"} and not found.llm
    listed = {m.id: m for m in list_models(Manifest({}), tmp_path)}
    assert listed["my-encoder"].kind == "embed" and listed["my-encoder"].size > 90_000_000


@pytest.mark.parametrize("table, why", [
    ({"truncate": "yes"}, "'local.embeddings.truncate' must be bool"),
    ({"runtime": "torch"}, "'local.embeddings.runtime' must be auto, onnxruntime or numpy"),
    ({"voices": {}}, "unknown key 'local.embeddings.voices'"),
])  # fmt: skip
def test_embeddings_config_is_checked(table, why):
    from hoosh_edge.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=why):
        parse_config({"local": {"embeddings": table}}, src="t.toml", env={})
    cfg = parse_config({"local": {"embeddings": {"truncate": False, "runtime": "numpy"}}}, env={})
    assert cfg.embeddings.truncate is False and cfg.embeddings.runtime == "numpy"
