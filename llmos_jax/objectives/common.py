"""Pieces every token objective shares: masked cross-entropy with z-loss, and token log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token cross-entropy averaged over `weights`, plus `z_loss * log(Z)^2` (PaLM's z-loss).

    logits [..., V] (any dtype; computed in float32), targets [...] int, weights [...] (0/1 or
    real). Returns (loss including z-loss, metrics) where metrics["loss"] is the plain
    cross-entropy, metrics["num_tokens"] the weight sum and metrics["accuracy"] top-1 accuracy.
    A batch with no weighted token gives loss 0 rather than NaN.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    xent = log_z - target_logit
    total = jnp.sum(weights)
    denom = jnp.maximum(total, 1.0)
    mean_xent = jnp.sum(xent * weights) / denom
    mean_z = jnp.sum(jnp.square(log_z) * weights) / denom
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    metrics = {
        "loss": mean_xent,
        "z_loss": mean_z,
        "accuracy": jnp.sum(correct * weights) / denom,
        "num_tokens": total,
    }
    return mean_xent + z_loss * mean_z, metrics


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) under softmax(logits): [..., V], [...] -> [...] float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def next_token_targets(batch: dict) -> tuple[jax.Array, jax.Array]:
    """Targets and weights of next-token prediction in packed rows.

    Position t predicts token t+1 only when both lie in the same (non-padding) document, so a
    packed row never teaches the model to predict one document from the previous one.
    Returns targets [B, T-1] and weights [B, T-1].
    """
    tokens, seg = batch["tokens"], batch["segment_ids"]
    same_doc = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    weights = same_doc.astype(jnp.float32) * batch["loss_mask"][:, 1:].astype(jnp.float32)
    return tokens[:, 1:], weights
