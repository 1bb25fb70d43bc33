"""build_data end to end on the default pydoc source with a tiny config."""

import numpy as np
import pytest

from llmos_jax.config import base_config
from llmos_jax.data import (
    Tokenizer,
    TrainBatches,
    build_data,
    clean_text,
    eval_batches,
    load_documents,
    unigram_perplexity,
)


def tiny_config(**data):
    config = base_config()
    config.model.vocab_size = 1024
    config.data.seq_len = 128
    for key, value in data.items():
        config.data[key] = value
    return config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    return build_data(tiny_config(), str(workdir)), workdir


def test_rows_and_tokenizer(built):
    bundle, workdir = built
    assert bundle.tokenizer.vocab_size == 1024
    assert (workdir / "tokenizer.model").read_bytes() == bundle.tokenizer.model_proto
    for rows in (bundle.train, bundle.eval):
        assert set(rows) == {"tokens", "segment_ids", "positions"}
        assert rows["tokens"].shape[1] == 128 and rows["tokens"].dtype == np.int32
        assert 0 <= rows["tokens"].min() and rows["tokens"].max() < 1024
        assert (rows["segment_ids"][:-1] > 0).all()  # Padding only in the last row.
    assert bundle.source_description.startswith("pydoc_data.topics (Python")
    assert len(bundle.fingerprint) == 64


def test_documents_survive_in_full(built):
    """Every distinct document, cleaned, is in exactly one split, and decodes back exactly."""
    bundle, _ = built
    docs = list(dict.fromkeys(clean_text(d.text) for d in load_documents(tiny_config().data)))
    tok = bundle.tokenizer

    def texts(rows):
        stream = rows["tokens"][rows["segment_ids"] > 0]
        bounds = np.flatnonzero(stream == tok.bos_id)
        return [tok.decode(part) for part in np.split(stream, bounds[1:])]

    train, held_out = texts(bundle.train), texts(bundle.eval)
    assert sorted(train + held_out) == sorted(docs)  # No duplicates: pydoc repeats passages.
    assert not set(train) & set(held_out)
    assert 0.05 < len(held_out) / len(docs) < 0.2  # eval_fraction 0.1


def test_rebuild_reuses_tokenizer_and_is_reproducible(built):
    bundle, workdir = built
    again = build_data(tiny_config(), str(workdir))
    assert again.fingerprint == bundle.fingerprint
    assert again.tokenizer.sha256 == bundle.tokenizer.sha256
    np.testing.assert_array_equal(again.train["tokens"], bundle.train["tokens"])
    reseeded = tiny_config()
    reseeded.seed = 1
    other = build_data(reseeded, None)  # A new split, a tokenizer trained on other documents.
    assert other.fingerprint != bundle.fingerprint
    assert other.tokenizer.sha256 != bundle.tokenizer.sha256


def test_tokenizer_path_is_used(built, tmp_path):
    bundle, workdir = built
    config = tiny_config(max_documents=40)
    config.data.tokenizer.path = str(workdir / "tokenizer.model")
    small = build_data(config, str(tmp_path))
    assert small.tokenizer.sha256 == bundle.tokenizer.sha256
    assert not (tmp_path / "tokenizer.model").exists()
    config.model.vocab_size = 512
    with pytest.raises(ValueError, match="model.vocab_size=512"):
        build_data(config, None)


def test_batches_and_baseline(built):
    bundle, _ = built
    batch = TrainBatches(bundle.train, 8, seed=0).batch(0)
    assert batch["tokens"].shape == (8, 128)
    evals = eval_batches(bundle.eval, 8)
    assert sum(int(b["loss_mask"].any(axis=1).sum()) for b in evals) == len(bundle.eval["tokens"])
    ppl = unigram_perplexity(bundle.train, bundle.eval, bundle.tokenizer.vocab_size)
    # Better than uniform over the vocabulary, worse than a real language model.
    assert 50 < ppl < 1024


def test_files_source_with_small_vocab(tmp_path):
    lines = [
        f"Document number {i} talks about {w} and more {w}."
        for i, w in enumerate(["cats", "dogs", "birds", "fish", "trees", "rivers"] * 4)
    ]
    (tmp_path / "docs.jsonl").write_text("\n".join(f'{{"text": "{t}"}}' for t in lines))
    config = tiny_config(source="files", paths=(str(tmp_path / "docs.jsonl"),), seq_len=16)
    config.model.vocab_size = 400
    config.data.tokenizer.type = "unigram"
    bundle = build_data(config, None)
    assert bundle.tokenizer.vocab_size <= 400
    assert bundle.stats["train_documents"] + bundle.stats["eval_documents"] == len(lines)
    assert isinstance(bundle.tokenizer, Tokenizer)
