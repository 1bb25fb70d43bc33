"""Prefix LM: a hand-worked mask, both tasks' losses against NumPy, the split statistics, config
errors, the (2,2,2) mesh and a short real run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax import objectives
from llmos_jax.config import ConfigError
from llmos_jax.models import build_model
from llmos_jax.objectives.corruption import sample_noise, span_counts
from llmos_jax.objectives.prefix_lm import prefix_lm_mask, sample_prefix
from tests.helpers import random_batch
from tests.obj_helpers import (
    apply_fn,
    as_jax,
    assert_sharded_equals_single,
    held_out_before_after,
    init_params,
    numpy_corrupt_spans,
    numpy_xent,
    objective_config,
)


def test_prefix_mask_hand_worked():
    seg = jnp.array([[1, 1, 1, 1, 2, 2, 0]])
    prefix = jnp.array([[1, 1, 0, 0, 1, 0, 0]], bool)
    want = np.array(
        [  # key:  0  1  2  3  4  5  6     query
            [1, 1, 0, 0, 0, 0, 0],  # 0  prefix: sees the whole prefix of its document
            [1, 1, 0, 0, 0, 0, 0],  # 1  prefix
            [1, 1, 1, 0, 0, 0, 0],  # 2  after the prefix: prefix + itself
            [1, 1, 1, 1, 0, 0, 0],  # 3
            [0, 0, 0, 0, 1, 0, 0],  # 4  the next document's prefix
            [0, 0, 0, 0, 1, 1, 0],  # 5
            [0, 0, 0, 0, 0, 0, 1],  # 6  padding
        ],
        bool,
    )
    np.testing.assert_array_equal(np.asarray(prefix_lm_mask(seg, prefix))[0, 0], want)


def _numpy_prefix_mask(seg, is_prefix):
    b, t = seg.shape
    out = np.zeros((b, 1, t, t), bool)
    for i in range(b):
        for q in range(t):
            for k in range(t):
                both = is_prefix[i, q] and is_prefix[i, k]
                out[i, 0, q, k] = seg[i, q] == seg[i, k] and (k <= q or both)
    return out


def _batch():
    batch = random_batch(np.random.default_rng(0), 2, 32, 128, 3)
    for k in batch:
        batch[k][-1, -5:] = 0  # padding at the end of the last row
    return batch


def test_prefix_lm_loss_matches_numpy():
    c = objective_config("prefix_lm")
    model, params = init_params(c)
    batch, rng = _batch(), jax.random.PRNGKey(5)
    loss, metrics = jax.jit(objectives.build(c, model))(params, as_jax(batch), rng, {})
    u = np.asarray(jax.random.uniform(jax.random.split(rng)[0], (2, 32)))
    seg = batch["segment_ids"]
    is_prefix = np.zeros((2, 32), bool)
    for i in range(2):
        for s in np.unique(seg[i]):
            idx = np.flatnonzero(seg[i] == s)
            cut = 1 + int(np.floor(u[i, idx[0]] * np.float32(len(idx) - 1)))  # L in [1, n-1]
            is_prefix[i, idx[:cut]] = True
    weights = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0) & ~is_prefix[:, 1:]
    logits, _ = apply_fn(model)(
        params, batch["tokens"], batch["positions"], _numpy_prefix_mask(seg, is_prefix)
    )
    want_loss, want_acc = numpy_xent(logits[:, :-1], batch["tokens"][:, 1:], weights)
    assert float(metrics["num_tokens"]) == weights.sum() > 0
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(metrics["prefix/accuracy"]) == pytest.approx(want_acc, abs=1e-6)


def test_prefix_span_task_loss_matches_numpy():
    c = objective_config("prefix_lm", "span")
    model, params = init_params(c)
    batch, rng = _batch(), jax.random.PRNGKey(6)
    loss, metrics = jax.jit(objectives.build(c, model))(params, as_jax(batch), rng, {})
    noise = np.asarray(sample_noise(jax.random.split(rng)[0], as_jax(batch), 0.15, 3.0))
    d = 2 * span_counts(32, 0.15, 3.0)[0]
    r = numpy_corrupt_spans(batch["tokens"], batch["segment_ids"], noise, range(4, 104), d)
    enc_seg, dec_seg = r["enc_segment_ids"], r["dec_segment_ids"]
    # [corrupted text; targets], the targets' positions continuing their document's prefix.
    prefix_len = np.array([[np.sum(enc_seg[i] == s) for s in dec_seg[i]] for i in range(2)])
    tokens = np.concatenate([r["enc_tokens"], r["dec_inputs"]], 1)
    positions = np.concatenate([r["enc_positions"], r["dec_positions"] + prefix_len], 1)
    seg = np.concatenate([enc_seg, dec_seg], 1)
    is_prefix = np.broadcast_to(np.arange(32 + d) < 32, seg.shape)
    logits, _ = apply_fn(model)(params, tokens, positions, _numpy_prefix_mask(seg, is_prefix))
    want_loss, want_acc = numpy_xent(logits[:, 32:], r["dec_targets"], dec_seg > 0)
    assert float(metrics["num_tokens"]) == (dec_seg > 0).sum() > 0
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(metrics["prefix/accuracy"]) == pytest.approx(want_acc, abs=1e-6)


def test_prefix_lengths_are_uniform_over_each_segment():
    b = 20000
    seg = jnp.asarray(np.array([[1] * 5 + [2] * 9 + [3]] * b), jnp.int32)
    prefix = np.asarray(jax.jit(sample_prefix)(jax.random.PRNGKey(0), seg))
    for lo, n in ((0, 5), (5, 9)):
        part = prefix[:, lo : lo + n]
        lengths = part.sum(1)
        assert (part == (np.arange(n) < lengths[:, None])).all()  # a prefix, then the rest
        freq = np.bincount(lengths, minlength=n + 1)[1:n] / b  # L in [1, n-1], uniform
        np.testing.assert_allclose(freq, 1 / (n - 1), atol=0.015)
        assert lengths.min() == 1 and lengths.max() == n - 1
    assert prefix[:, 14].all()  # a one-token document is all prefix: nothing to predict


def test_prefix_config_errors_name_the_field():
    c = objective_config("prefix_lm")
    c.objective.prefix_task = "denoise"
    with pytest.raises(ConfigError, match=r"objective\.prefix_task"):
        objectives.build(c, build_model(c))
    c = objective_config("prefix_lm", "span", family="gpt2")  # learned positions
    c.model.max_len = 40  # the layout is 32 + 2 * 5 = 42 long
    with pytest.raises(ConfigError, match=r"model\.max_len"):
        objectives.build(c, build_model(c))
    c = objective_config("prefix_lm", "span")
    c.data.tokenizer.user_defined_symbols = ()
    with pytest.raises(ConfigError, match=r"data\.tokenizer\.user_defined_symbols"):
        objectives.build(c, build_model(c))
    c = objective_config("prefix_lm")
    c.model.arch = "encdec"
    with pytest.raises(ConfigError, match=r"model\.arch"):
        objectives.build(c, build_model(c))


@pytest.mark.quick_compile  # a few steps: compile time dominates
def test_prefix_loss_on_222_mesh_equals_single_device():
    # The "lm" task; "span" shares its corruption with objectives/span.py, tested there.
    c = objective_config("prefix_lm")
    assert_sharded_equals_single(c, random_batch(np.random.default_rng(0), 8, 32, 128, 3))


@pytest.mark.slow
def test_prefix_lm_tiny_config_lowers_held_out_loss(tmp_path):
    before, after = held_out_before_after("prefix_lm", "", str(tmp_path))
    assert before["eval/loss"] == pytest.approx(np.log(2048), abs=0.3)
    assert after["eval/loss"] < before["eval/loss"] - 0.75
    assert after["eval/prefix/accuracy"] > before["eval/prefix/accuracy"]
