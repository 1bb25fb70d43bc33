"""Span corruption: hand-worked corruptions, T5's noise-mask statistics, the loss against NumPy,
segment isolation in the encoder-decoder, config errors, the (2,2,2) mesh, a short real run."""

import jax
import numpy as np
import pytest

from llmos_jax import objectives
from llmos_jax.config import ConfigError
from llmos_jax.models import build_model
from llmos_jax.objectives.corruption import (
    corrupt_spans,
    random_spans_noise_mask,
    sample_noise,
    span_counts,
)
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
    segment_mask,
)

S0, S1, S2 = 100, 101, 102  # sentinel ids in the hand-worked examples
# Row 0: a span crosses the boundary of two packed documents (eos of one, bos of the next): it
# becomes one span in each, and sentinels restart at <0> in the second document.
# Row 1: a span at the very start, a span ending at the document's eos, then padding.
HAND = {
    "tokens": [
        [2, 10, 11, 12, 13, 3, 2, 20, 21, 22, 23, 3],
        [2, 30, 31, 32, 33, 34, 35, 3] + [0] * 4,
    ],
    "seg": [[1] * 6 + [2] * 6, [1] * 8 + [0] * 4],
    "noise": [[0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]],
}
WANT = {
    "enc_tokens": [[2, S0, 12, S1, S0, 20, S1, 22, 23, 3, 0, 0], [S0, 31, 32, 33, S1] + [0] * 7],
    "enc_segment_ids": [[1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0, 0], [1] * 5 + [0] * 7],
    "enc_positions": [[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 0], [0, 1, 2, 3, 4] + [0] * 7],
    "dec_targets": [
        [S0, 10, 11, S1, 13, 3, S0, 2, S1, 21, 0, 0],
        [S0, 2, 30, S1, 34, 35, 3] + [0] * 5,
    ],
    "dec_inputs": [
        [2, S0, 10, 11, S1, 13, 2, S0, 2, S1, 2, 0],
        [2, S0, 2, 30, S1, 34, 35, 2] + [0] * 4,
    ],
    "dec_segment_ids": [[1] * 6 + [2] * 4 + [0, 0], [1] * 7 + [0] * 5],
    "dec_positions": [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 0], [0, 1, 2, 3, 4, 5, 6] + [0] * 5],
}


def test_corruption_matches_hand_worked_examples():
    tokens, seg, noise = (np.array(HAND[k], np.int32) for k in ("tokens", "seg", "noise"))
    got = jax.jit(corrupt_spans, static_argnums=(3, 4))(
        tokens, seg, noise.astype(bool), (S0, S1, S2), 12
    )
    reference = numpy_corrupt_spans(tokens, seg, noise.astype(bool), (S0, S1, S2), 12)
    for key, want in WANT.items():
        np.testing.assert_array_equal(np.asarray(got[key]), want, err_msg=key)
        np.testing.assert_array_equal(reference[key], want, err_msg=f"reference {key}")


def test_span_counts_follow_t5():
    assert span_counts(256, 0.15, 3.0) == (38, 13)  # round(38.4), round(38 / 3)
    assert span_counts(512, 0.15, 3.0) == (77, 26)
    assert span_counts(10, 0.01, 3.0) == (1, 1)  # never degenerate


def test_noise_masks_have_the_configured_density_and_span_length():
    length, density, mean = 64, 0.2, 4.0  # not the defaults
    num_noise, num_spans = span_counts(length, density, mean)  # 13 noise tokens in 3 spans
    masks = jax.jit(random_spans_noise_mask, static_argnums=(1, 2, 3, 4))
    masks = np.asarray(masks(jax.random.PRNGKey(0), 4000, length, density, mean))
    assert (masks.sum(1) == num_noise).all()
    starts = masks & ~np.pad(masks[:, :-1], ((0, 0), (1, 0)))
    assert (starts.sum(1) == num_spans).all()  # so every row's mean span is 13/3
    assert not masks[:, 0].any() and masks[:, -1].all()  # T5: text first, noise last
    # Span lengths: a uniformly random composition of 13 into 3 parts, mean 13/3 each; the
    # text before the first span: of 51 into 3, mean 17.
    first_span = np.array(
        [np.argmin(np.append(m[s:], False)) for m, s in zip(masks, starts.argmax(1))]
    )
    assert first_span.mean() == pytest.approx(num_noise / num_spans, abs=0.1)
    assert starts.argmax(1).mean() == pytest.approx((length - num_noise) / num_spans, abs=0.4)
    assert masks.mean() == pytest.approx(density, abs=0.005)


def _span_batch():
    batch = random_batch(np.random.default_rng(0), 2, 32, 128, 3)
    for k in batch:
        batch[k][-1, -5:] = 0  # padding at the end of the last row
    return batch


@pytest.mark.quick_compile  # one forward: compile time dominates
def test_span_loss_matches_numpy():
    c = objective_config("span")
    model, params = init_params(c)
    batch, rng = _span_batch(), jax.random.PRNGKey(3)
    loss, metrics = jax.jit(objectives.build(c, model))(params, as_jax(batch), rng, {})
    # The noise mask is the one random input (its statistics are tested above).
    noise = np.asarray(sample_noise(jax.random.split(rng)[0], as_jax(batch), 0.15, 3.0))
    assert not noise[batch["segment_ids"] == 0].any()
    dec_len = 2 * span_counts(32, 0.15, 3.0)[0]
    r = numpy_corrupt_spans(batch["tokens"], batch["segment_ids"], noise, range(4, 104), dec_len)
    enc_seg, dec_seg = r["enc_segment_ids"], r["dec_segment_ids"]
    cross = (dec_seg[:, None, :, None] == enc_seg[:, None, None, :]) | (dec_seg == 0)[
        :, None, :, None
    ]
    apply = apply_fn(model)
    logits = apply(
        params,
        r["enc_tokens"],
        r["enc_positions"],
        segment_mask(enc_seg, causal=False),
        r["dec_inputs"],
        r["dec_positions"],
        segment_mask(dec_seg, causal=True),
        cross,
    )
    want_loss, want_acc = numpy_xent(logits, r["dec_targets"], dec_seg > 0)
    assert float(metrics["num_tokens"]) == (dec_seg > 0).sum() > 0
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(metrics["span/accuracy"]) == pytest.approx(want_acc, abs=1e-6)

    # Documents packed into one row never see each other, in either stack or across: new tokens
    # in segment 2 leave the decoder's outputs for segment 1 as they were.
    changed = {k: v.copy() for k, v in r.items()}
    changed["enc_tokens"][enc_seg == 2] = 50
    changed["dec_inputs"][dec_seg == 2] = 51
    other = apply(
        params,
        changed["enc_tokens"],
        r["enc_positions"],
        segment_mask(enc_seg, causal=False),
        changed["dec_inputs"],
        r["dec_positions"],
        segment_mask(dec_seg, causal=True),
        cross,
    )
    np.testing.assert_allclose(
        np.asarray(other)[dec_seg == 1], np.asarray(logits)[dec_seg == 1], atol=1e-6
    )
    assert not np.allclose(np.asarray(other)[dec_seg == 2], np.asarray(logits)[dec_seg == 2])


def test_span_config_errors_name_the_field():
    c = objective_config("span")
    c.data.tokenizer.user_defined_symbols = ("<extra_id_0>",)  # 32 tokens need 2 sentinels
    with pytest.raises(ConfigError, match=r"data\.tokenizer\.user_defined_symbols"):
        objectives.build(c, build_model(c))
    c = objective_config("span")
    c.objective.noise_density = 0.0
    with pytest.raises(ConfigError, match=r"objective\.noise_density"):
        objectives.build(c, build_model(c))
    c = objective_config("span")
    c.model.arch = "decoder"
    with pytest.raises(ConfigError, match=r"model\.arch"):
        objectives.build(c, build_model(c))


@pytest.mark.quick_compile  # a few steps: compile time dominates
def test_span_loss_on_222_mesh_equals_single_device():
    c = objective_config("span")
    assert_sharded_equals_single(c, random_batch(np.random.default_rng(0), 8, 32, 128, 3))


@pytest.mark.slow
def test_span_tiny_config_lowers_held_out_loss(tmp_path):
    # 20 steps, not SHORT_RUN's 40: at 40 the loss fell 2.2 nats (7.70 -> 5.47), far past 0.75,
    # and the encoder-decoder is the slowest tiny config to step.
    steps = ("train.steps=20", "train.eval_every=20", "train.checkpoint_every=20")
    before, after = held_out_before_after("span", "", str(tmp_path), steps)
    assert before["eval/loss"] == pytest.approx(np.log(2048), abs=0.3)
    assert after["eval/loss"] < before["eval/loss"] - 0.75
    assert after["eval/span/accuracy"] > before["eval/span/accuracy"]
