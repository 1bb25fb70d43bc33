"""The downstream topic probe (llmos_jax/evals/probe.py) behind experiments/objectives/."""

from __future__ import annotations

from pydoc_data.topics import topics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax.data import clean_text, train_tokenizer
from llmos_jax.evals import TopicData, feature_fn, fine_tune, linear_probe, topic_dataset
from llmos_jax.evals.probe import backbone_params, pooled_features
from llmos_jax.models import attention_mask
from tests.obj_helpers import init_params, objective_config


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([clean_text(t) for t in topics.values()], 512, "bpe")


def test_topic_dataset_is_balanced_disjoint_and_from_its_topic(tokenizer):
    data = topic_dataset(tokenizer, seq_len=32, num_topics=5, per_topic=12, seed=3)
    assert data.train["tokens"].shape == (5 * 6, 32) and data.test["tokens"].shape == (5 * 6, 32)
    for labels in (data.train_labels, data.test_labels):
        np.testing.assert_array_equal(np.bincount(labels, minlength=5), [6] * 5)
    assert (data.train["tokens"][:, 0] == tokenizer.bos_id).all()
    np.testing.assert_array_equal(data.train["positions"][2], np.arange(32))
    train_rows = {r.tobytes() for r in data.train["tokens"]}
    assert not train_rows & {r.tobytes() for r in data.test["tokens"]}
    # The five longest topics, and every row's text comes from its own topic.
    longest = sorted(topics, key=lambda k: -len(topics[k]))[:5]
    assert set(data.names) == set(longest)
    for rows, labels in ((data.train, data.train_labels), (data.test, data.test_labels)):
        for row, label in zip(rows["tokens"][::5], labels[::5]):
            text = tokenizer.decode(row[1:].tolist()).strip()
            assert text in clean_text(topics[data.names[label]])


def test_topic_dataset_is_a_function_of_the_seed(tokenizer):
    a = topic_dataset(tokenizer, seq_len=32, num_topics=3, per_topic=10, seed=1)
    b = topic_dataset(tokenizer, seq_len=32, num_topics=3, per_topic=10, seed=1)
    c = topic_dataset(tokenizer, seq_len=32, num_topics=3, per_topic=10, seed=2)
    np.testing.assert_array_equal(a.test["tokens"], b.test["tokens"])
    assert not np.array_equal(a.test["tokens"], c.test["tokens"])


def test_topic_dataset_too_many_rows_names_the_short_topic(tokenizer):
    with pytest.raises(ValueError, match=r"per_topic=100000: topic '.+' gives only \d+ rows"):
        topic_dataset(tokenizer, seq_len=64, per_topic=100_000)


def test_linear_probe_separates_blobs_and_cannot_learn_noise():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 4
    y_train, y_test = rng.integers(0, 4, 200), rng.integers(0, 4, 400)
    x_train = centers[y_train] + rng.normal(size=(200, 16))
    x_test = centers[y_test] + rng.normal(size=(400, 16))
    res = linear_probe(x_train, y_train, x_test, y_test, 4)
    assert res["test_accuracy"] == 1.0
    # Random labels: fitted on the training split, chance (1/4) on held-out rows.
    noise = linear_probe(
        rng.normal(size=(200, 64)), y_train, rng.normal(size=(400, 64)), y_test, 4, l2=0.0
    )
    assert noise["train_accuracy"] > 0.7
    assert noise["test_accuracy"] < 0.36


def test_fine_tune_from_the_probe_head_starts_at_the_probe(tokenizer):
    """Zero steps from linear_probe's head (folded back onto raw features) = the probe itself."""
    config = objective_config("mlm", vocab_size=512)
    _, params = init_params(config)
    data = topic_dataset(tokenizer, seq_len=16, num_topics=4, per_topic=20, seed=0)
    train_x = pooled_features(config, params, data.train)
    test_x = pooled_features(config, params, data.test)
    probe = linear_probe(train_x, data.train_labels, test_x, data.test_labels, 4)
    start = fine_tune(config, params, data, steps=0, head=probe["head"])
    # Equal up to float rounding at a near-tie: at most one of the held-out rows may differ.
    assert abs(start["test_accuracy"] - probe["test_accuracy"]) <= 1 / len(data.test_labels)
    assert probe["test_accuracy"] > 0.4  # random features of 4 topics: well above chance 0.25


def _rows(rng, b, t, vocab, pad_from=None):
    seg = np.ones((b, t), np.int32)
    if pad_from is not None:
        seg[:, pad_from:] = 0
    return {
        "tokens": rng.integers(0, vocab, (b, t)).astype(np.int32),
        "segment_ids": seg,
        "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
    }


@pytest.mark.parametrize("objective", ["clm", "mlm", "plm"])
def test_decoder_features_are_the_objectives_forward_pass(objective):
    """mean-pool(hidden) @ lm_head == mean-pool(logits) of the model under the objective's mask:
    causal for clm, bidirectional for mlm and (content stream of) plm."""
    config = objective_config(objective)
    model, params = init_params(config)
    rows = _rows(np.random.default_rng(0), 2, 12, config.model.vocab_size, pad_from=9)
    feats = jax.jit(feature_fn(config))(
        backbone_params(config, params), rows["tokens"], rows["segment_ids"], rows["positions"]
    )
    mask = attention_mask(jnp.asarray(rows["segment_ids"]), causal=objective == "clm")
    logits = model.apply({"params": params}, rows["tokens"], rows["positions"], mask)
    logits = logits[0] if isinstance(logits, tuple) else logits
    want = np.asarray(logits)[:, :9].mean(1)
    got = np.asarray(feats) @ np.asarray(params["lm_head"]["kernel"])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_features_ignore_padding_and_batching():
    config = objective_config("mlm")
    _, params = init_params(config)
    rng = np.random.default_rng(1)
    rows = _rows(rng, 5, 12, config.model.vocab_size, pad_from=7)
    other = {**rows, "tokens": rows["tokens"].copy()}
    other["tokens"][:, 7:] = rng.integers(0, config.model.vocab_size, (5, 5))
    a = pooled_features(config, params, rows, batch_size=2)  # 3 batches, the last one padded
    b = pooled_features(config, params, other, batch_size=8)
    assert a.shape == (5, config.model.d_model)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_encoder_features_are_the_encoder_decoders_memory():
    config = objective_config("span")
    model, params = init_params(config)
    rows = _rows(np.random.default_rng(2), 2, 10, config.model.vocab_size)
    args = list(model.init_args(10))
    args[0], args[1] = jnp.asarray(rows["tokens"]), jnp.asarray(rows["positions"])
    args[2] = attention_mask(jnp.asarray(rows["segment_ids"]), causal=False)
    args[3:5] = [a.repeat(2, 0) for a in args[3:5]]
    _, state = model.apply({"params": params}, *args, capture_intermediates=True)
    memory = np.asarray(state["intermediates"]["encoder_norm"]["__call__"][0])
    feats = pooled_features(config, params, rows)
    np.testing.assert_allclose(feats, memory.mean(1), rtol=2e-5, atol=2e-6)
    assert "decoder" not in backbone_params(config, params)


def test_fine_tune_learns_a_token_identity_task():
    """Class k rows draw tokens from their own band of the vocabulary: a fine-tune of a random
    backbone must reach near-perfect held-out accuracy."""
    config = objective_config("mlm")
    _, params = init_params(config)
    rng = np.random.default_rng(3)

    def split(n):
        labels = rng.integers(0, 4, n).astype(np.int32)
        rows = _rows(rng, n, 8, 16)
        rows["tokens"] = (20 + 16 * labels[:, None] + rows["tokens"]).astype(np.int32)
        return rows, labels

    (train, train_y), (test, test_y) = split(64), split(64)
    data = TopicData(train, train_y, test, test_y, ("a", "b", "c", "d"))
    res = fine_tune(config, params, data, steps=30, lr=3e-3, batch_size=16)
    assert res["test_accuracy"] >= 0.9
    assert res["train_loss"] < 0.5
