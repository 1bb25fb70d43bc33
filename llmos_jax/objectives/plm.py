"""Permuted language modelling (XLNet; Yang et al., 2019) with two-stream attention.

Each step draws, on device, a uniformly random factorisation order of every packed segment (a
random rank per token; only the order within a segment matters, and segments never see each
other). Token t is then predicted from the tokens before it in that order, by the query stream of
llmos_jax/models/two_stream.py, which is blind to the token it predicts.

* Partial prediction: only the last 1/K of each segment's order is predicted
  (`objective.prediction_k` = K; the last max(1, n // K) of a segment of n tokens), never the
  first token of the order, which has no context.
* Query stream input: the token just before the target in the order, placed at the target's
  position minus one. XLNet starts the query stream from a learned vector w instead; starting
  from the previous token adds no parameters and makes the identity order with K=1 exactly the
  causal LM of the same weights (tested), while the target position still reaches every
  attention score through the query's position.

Metrics: `plm/accuracy` over the predicted tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmos_jax.data.tokenizer import PAD_ID
from llmos_jax.objectives.common import masked_cross_entropy
from llmos_jax.objectives.options import option, require_arch


def sample_ranks(rng: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """[B, T] int32: a uniformly random permutation of 0..T-1 per row (ranks in the order).

    32 random bits per token: ties (probability ~T^2 / 2^33) fall back to index order.
    """
    bits = jax.random.bits(rng, shape, jnp.uint32)
    return jnp.argsort(jnp.argsort(bits, axis=-1), axis=-1).astype(jnp.int32)


def two_stream_inputs(batch: dict, ranks: jax.Array, k: int) -> dict[str, jax.Array]:
    """Masks, query-stream inputs and prediction targets for the order given by `ranks` [B, T].

    Returns mask and query_mask [B, 1, T, T], query_tokens and query_positions [B, T], and
    weights [B, T] (1 where the token is predicted).
    """
    tokens, seg, positions = batch["tokens"], batch["segment_ids"], batch["positions"]
    same = seg[:, :, None] == seg[:, None, :]  # [B, T, S]
    earlier = same & (ranks[:, None, :] < ranks[:, :, None])  # key s precedes query t
    n_before = jnp.sum(earlier, axis=-1)  # t's rank within its segment
    n_segment = jnp.sum(same, axis=-1)
    has_context = n_before > 0
    eye = jnp.eye(tokens.shape[1], dtype=bool)[None]
    # The predecessor: the latest-ranked earlier token of the segment.
    previous = jnp.argmax(jnp.where(earlier, ranks[:, None, :], -1), axis=-1)  # [B, T]
    query_tokens = jnp.where(has_context, jnp.take_along_axis(tokens, previous, 1), PAD_ID)
    n_predict = jnp.maximum(1, n_segment // k)
    predict = has_context & (n_before >= n_segment - n_predict) & (seg > 0)
    return {
        "mask": (earlier | eye)[:, None],
        # A row without context (never predicted) reads its own content, so no row is empty.
        "query_mask": (earlier | (eye & ~has_context[:, :, None]))[:, None],
        "query_tokens": query_tokens.astype(tokens.dtype),
        "query_positions": jnp.maximum(positions - 1, 0),
        "weights": (predict & (batch["loss_mask"] > 0)).astype(jnp.float32),
    }


def plm_loss(model, params, batch: dict, ranks: jax.Array, k: int, z_loss: float, rng=None):
    """(loss, metrics) of predicting the last 1/K of the order given by `ranks` [B, T]."""
    s = two_stream_inputs(batch, ranks, k)
    logits = model.apply(
        {"params": params},
        batch["tokens"],
        batch["positions"],
        s["mask"],
        s["query_tokens"],
        s["query_positions"],
        s["query_mask"],
        rngs=None if rng is None else {"dropout": rng},
    )
    loss, metrics = masked_cross_entropy(logits, batch["tokens"], s["weights"], z_loss)
    metrics["plm/accuracy"] = metrics.pop("accuracy")
    return loss, metrics


def make_plm_loss(config, model):
    """Returns loss_fn(params, batch, rng, frozen) -> (loss, metrics) for model.arch=two_stream."""
    require_arch(config, "two_stream")
    k = int(
        option(
            config,
            "prediction_k",
            lambda v: isinstance(v, int) and v >= 1,
            "must be an integer >= 1",
        )
    )
    z_loss = float(config.objective.z_loss)

    def loss_fn(params, batch, rng, frozen):
        del frozen  # no teacher or reference
        order_rng, dropout_rng = jax.random.split(rng)
        ranks = sample_ranks(order_rng, batch["tokens"].shape)
        return plm_loss(model, params, batch, ranks, k, z_loss, dropout_rng)

    return loss_fn
