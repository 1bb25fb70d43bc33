"""Permuted LM: identity order == causal LM, the query stream is blind to its target (gradients),
the loss against NumPy, order statistics, config errors, the (2,2,2) mesh, a short real run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax import objectives
from llmos_jax.config import ConfigError
from llmos_jax.models import build_model
from llmos_jax.objectives.plm import plm_loss, sample_ranks, two_stream_inputs
from tests.helpers import random_batch
from tests.obj_helpers import (
    apply_fn,
    as_jax,
    assert_sharded_equals_single,
    held_out_before_after,
    init_params,
    numpy_xent,
    objective_config,
)


def _padded_batch(b: int = 2, t: int = 32, seed: int = 0) -> dict:
    batch = random_batch(np.random.default_rng(seed), b, t, 128, 3)
    for k in batch:
        batch[k][-1, -4:] = 0  # padding at the end of the last row
    return batch


def test_identity_order_with_full_prediction_is_causal_lm():
    c = objective_config("plm")
    model, params = init_params(c)
    c.model.arch = "decoder"
    decoder, decoder_params = init_params(c)
    # The same parameters: a two-stream model's weights are a decoder's weights.
    assert jax.tree.structure(params) == jax.tree.structure(decoder_params)
    batch = as_jax(_padded_batch())
    clm_loss, clm_metrics = jax.jit(objectives.get("clm")(c, decoder))(
        params, batch, jax.random.PRNGKey(0), {}
    )
    identity = jnp.broadcast_to(jnp.arange(32), (2, 32))
    loss, metrics = jax.jit(lambda p: plm_loss(model, p, batch, identity, 1, 0.0))(params)
    assert float(metrics["num_tokens"]) == float(clm_metrics["num_tokens"])
    assert float(loss) == pytest.approx(float(clm_loss), rel=1e-5)


def test_query_stream_never_sees_its_target():
    c = objective_config("plm")  # llama family: untied head, so the embedding is input only
    c.objective.prediction_k = 1
    model, params = init_params(c)
    t = 16
    rng = np.random.default_rng(3)
    tokens = rng.permutation(np.arange(5, 128))[:t][None].astype(np.int32)  # distinct ids
    seg = np.array([[1] * 9 + [2] * 7], np.int32)
    batch = {
        "tokens": tokens,
        "segment_ids": seg,
        "loss_mask": np.ones_like(seg),
        "positions": np.concatenate([np.arange(9), np.arange(7)])[None].astype(np.int32),
    }
    ranks = sample_ranks(jax.random.PRNGKey(5), (1, t))
    s = two_stream_inputs(as_jax(batch), ranks, 1)

    def logp_targets(embedding):  # [T]: log p(token q) at query row q
        p = {**params, "embed": {"embedding": embedding}}
        logits = model.apply(
            {"params": p},
            tokens,
            batch["positions"],
            s["mask"],
            s["query_tokens"],
            s["query_positions"],
            s["query_mask"],
        )
        logp = jax.nn.log_softmax(logits[0], axis=-1)
        return jnp.take_along_axis(logp, tokens[0][:, None], axis=-1)[:, 0]

    jac = jax.jit(jax.jacrev(logp_targets))(params["embed"]["embedding"])  # [T, V, D]
    influence = np.abs(np.asarray(jac)).sum(-1)  # [T(query), V]
    ranks, predicted = np.asarray(ranks)[0], np.asarray(s["weights"])[0] > 0
    assert predicted.sum() == 16 - 2  # all but the first of each segment's order
    for q in np.flatnonzero(predicted):
        for j in range(t):
            seen = seg[0, j] == seg[0, q] and ranks[j] < ranks[q]
            value = influence[q, tokens[0, j]]
            assert (value > 1e-7) if seen else (value == 0.0), (q, j, value)


def _numpy_streams(batch, ranks, k):
    """Masks, query inputs and targets of the two streams, written out per query."""
    tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
    b, t = tokens.shape
    mask, qmask = np.zeros((b, 1, t, t), bool), np.zeros((b, 1, t, t), bool)
    qtok, weights = np.zeros((b, t), np.int32), np.zeros((b, t))
    for i in range(b):
        for q in range(t):
            same = [j for j in range(t) if seg[i, j] == seg[i, q]]
            earlier = [j for j in same if ranks[i, j] < ranks[i, q]]
            for j in same:
                mask[i, 0, q, j] = ranks[i, j] <= ranks[i, q]
                qmask[i, 0, q, j] = j in earlier or (not earlier and j == q)
            if earlier:
                qtok[i, q] = tokens[i, max(earlier, key=lambda j: ranks[i, j])]
                last = len(same) - max(1, len(same) // k)  # first rank that is predicted
                weights[i, q] = len(earlier) >= last and seg[i, q] > 0 and batch["loss_mask"][i, q]
    return mask, qtok, np.maximum(pos - 1, 0), qmask, weights


def test_plm_loss_matches_numpy():
    c = objective_config("plm", family="gpt2")
    c.objective.prediction_k = 3
    model, params = init_params(c)
    batch, rng = _padded_batch(), jax.random.PRNGKey(11)
    loss, metrics = jax.jit(objectives.build(c, model))(params, as_jax(batch), rng, {})
    order_rng, _ = jax.random.split(rng)
    bits = np.asarray(jax.random.bits(order_rng, (2, 32), jnp.uint32))
    ranks = np.argsort(np.argsort(bits, axis=1, kind="stable"), axis=1, kind="stable")
    mask, qtok, qpos, qmask, weights = _numpy_streams(batch, ranks, 3)
    logits = apply_fn(model)(params, batch["tokens"], batch["positions"], mask, qtok, qpos, qmask)
    want_loss, want_acc = numpy_xent(logits, batch["tokens"], weights)
    assert float(metrics["num_tokens"]) == weights.sum() > 0
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(metrics["plm/accuracy"]) == pytest.approx(want_acc, abs=1e-6)


def test_orders_are_uniform_within_segments_and_predict_the_last_1_over_k():
    b, t, k = 4096, 12, 3
    seg = jnp.asarray(np.array([[1] * 5 + [2] * 7] * b), jnp.int32)
    batch = {
        "tokens": jnp.ones((b, t), jnp.int32),
        "segment_ids": seg,
        "positions": jnp.zeros((b, t), jnp.int32),
        "loss_mask": jnp.ones((b, t), jnp.int32),
    }

    @jax.jit
    def draw(key):
        ranks = sample_ranks(key, (b, t))
        return ranks, two_stream_inputs(batch, ranks, k)

    ranks, s = draw(jax.random.PRNGKey(0))
    ranks, weights = np.asarray(ranks), np.asarray(s["weights"])
    same = np.asarray(seg)[:, :, None] == np.asarray(seg)[:, None, :]
    for name in ("mask", "query_mask"):  # no stream ever reads another segment
        assert not (np.asarray(s[name])[:, 0] & ~same).any()
    for lo, hi in ((0, 5), (5, 12)):
        r = ranks[:, lo:hi]
        # Every ordered pair of a segment is equally likely either way round...
        before = (r[:, :, None] < r[:, None, :]).mean(0)
        off = ~np.eye(hi - lo, dtype=bool)
        np.testing.assert_allclose(before[off], 0.5, atol=0.04)
        # ...each token is first in the order 1/n of the time...
        first = np.bincount(r.argmin(1), minlength=hi - lo) / b
        np.testing.assert_allclose(first, 1 / (hi - lo), atol=0.03)
        # ...and exactly the last max(1, n // K) of the order are predicted.
        n_predict = max(1, (hi - lo) // k)
        within = np.argsort(np.argsort(r, 1), 1)  # rank inside the segment
        np.testing.assert_array_equal(weights[:, lo:hi] > 0, within >= (hi - lo) - n_predict)
    assert weights.mean() == pytest.approx(3 / 12)  # 1 of 5 and 2 of 7: about 1/K


def test_plm_config_errors_name_the_field():
    c = objective_config("plm")
    c.objective.prediction_k = 0
    with pytest.raises(ConfigError, match=r"objective\.prediction_k"):
        objectives.build(c, build_model(c))
    c = objective_config("plm")
    c.model.arch = "decoder"
    with pytest.raises(ConfigError, match=r"model\.arch"):
        objectives.build(c, build_model(c))


@pytest.mark.quick_compile  # a few steps: compile time dominates
def test_plm_loss_on_222_mesh_equals_single_device():
    c = objective_config("plm")
    c.objective.prediction_k = 2
    assert_sharded_equals_single(c, random_batch(np.random.default_rng(0), 8, 32, 128, 3))


@pytest.mark.slow
def test_plm_tiny_config_lowers_held_out_loss(tmp_path):
    before, after = held_out_before_after("plm", "", str(tmp_path))
    assert before["eval/loss"] == pytest.approx(np.log(2048), abs=0.3)
    assert after["eval/loss"] < before["eval/loss"] - 0.75
    assert after["eval/plm/accuracy"] > before["eval/plm/accuracy"]
