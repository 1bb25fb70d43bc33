"""Unsupervised SimCSE (Gao et al., 2021): a sentence and itself under two dropout masks are a
positive pair; every other sentence of the global batch is a negative.

Our packed rows hold several documents, so a "sentence" is a segment: the encoder (the Decoder with
a bidirectional, segment-restricted mask) runs twice with independent dropout, each segment is
mean-pooled into slot m < M = `objective.max_segments` of its row (static shapes; later segments
are dropped), and InfoNCE with temperature `objective.temperature` matches view 1 of each segment
to view 2 of the same one among all B*M slots. Slots with fewer than `objective.min_segment_tokens`
tokens (empty slots, a lone eos that ends a document continued from the previous row: identical
inputs that would be each other's false negatives) are skipped.

Evaluation runs the encoder without dropout, so the two views coincide and the held-out loss
measures how well sentences are told apart from each other (uniformity).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmos_jax.models import attention_mask
from llmos_jax.models.dual_encoder import l2_normalize, segment_mean
from llmos_jax.objectives.contrastive import info_nce_rows, masked_mean


def simcse_embeddings(model, params, batch: dict, rng: jax.Array, max_segments: int):
    """Unit-norm segment embeddings [B*M, D] and token counts [B*M] of one dropout view."""
    mask = attention_mask(batch["segment_ids"], causal=False)
    hidden, _ = model.apply(
        {"params": params},
        batch["tokens"],
        batch["positions"],
        mask,
        rngs={"dropout": rng},
        return_hidden=True,
    )
    pooled, counts = segment_mean(hidden, batch["segment_ids"], max_segments)  # [B, M, D]
    return l2_normalize(pooled.reshape(-1, pooled.shape[-1])), counts.reshape(-1)


def make_simcse_loss(config, model):
    """Returns loss_fn(params, batch, rng, frozen) -> (loss, metrics) for model.arch=decoder."""
    from llmos_jax.config import ConfigError

    o = config.objective
    for field in ("temperature", "max_segments", "min_segment_tokens"):
        if field not in o:
            raise ConfigError(f"objective.{field}: objective 'simcse' needs it")
    if config.model.arch != "decoder":
        raise ConfigError(
            f"model.arch: objective 'simcse' needs 'decoder', got {config.model.arch!r}"
        )
    if not o.temperature > 0:
        raise ConfigError(f"objective.temperature: must be positive, got {o.temperature}")
    for field in ("max_segments", "min_segment_tokens"):
        if int(o[field]) < 1:
            raise ConfigError(f"objective.{field}: must be >= 1, got {o[field]}")
    inv_temperature, m = 1.0 / float(o.temperature), int(o.max_segments)
    min_tokens = float(o.min_segment_tokens)

    def loss_fn(params, batch, rng, frozen):
        del frozen  # no teacher or reference
        rng1, rng2 = jax.random.split(rng)
        z1, counts = simcse_embeddings(model, params, batch, rng1, m)
        z2, _ = simcse_embeddings(model, params, batch, rng2, m)
        valid = counts >= min_tokens
        cosine = jnp.einsum("PD,QD->PQ", z1, z2)  # [P, P], P = B*M slots of the global batch
        loss = masked_mean(info_nce_rows(inv_temperature * cosine, valid), valid)
        pair = valid[:, None] & valid[None, :]
        off_diagonal = pair & ~jnp.eye(pair.shape[0], dtype=bool)
        metrics = {
            "loss": loss,
            "num_tokens": jnp.sum(valid.astype(jnp.float32)),
            # Anisotropy watch: negatives' cosine near the positives' means collapsed embeddings.
            "simcse/positive_cosine": masked_mean(jnp.diagonal(cosine), valid),
            "simcse/negative_cosine": masked_mean(cosine, off_diagonal),
        }
        return loss, metrics

    return loss_fn
